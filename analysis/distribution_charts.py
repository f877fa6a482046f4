"""Figures of distributions, from the runs themselves: the latency CDF with its
tail (1 − CDF on a log axis), from each run's request records, and each
backend's share of the requests against the validity threshold. Builders
return figures, never save them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .dataset import backend_columns, missing, natural_key
from .panels import (
    MAX_PANELS,
    Palette,
    facets,
    footnote,
    paged_grids,
    style_axes,
    title,
    value_text,
    varying,
)

MAX_CDF_LINES = 10   # runs per panel, spread over the range of median latency
CDF_POINTS = 400     # quantiles drawn per line
MAX_SHARE_ROWS = 40  # runs per share panel, most imbalanced first
LINE_STYLES = ("-", "--", "-.", ":")
TAIL_LEVELS = ((0.5, "p50"), (0.1, "p90"), (0.01, "p99"), (0.001, "p99.9"))


# --------------------------------------------------------------------------
# Latency CDF and tail


def _spread(group: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most n rows, evenly spread over the range of p50 latency."""
    ordered = group.sort_values("latency_p50_ms", kind="stable")
    if len(ordered) <= n:
        return ordered
    picks = np.unique(np.linspace(0, len(ordered) - 1, n).round().astype(int))
    return ordered.iloc[picks]


def tail_points(ms: np.ndarray, points: int = CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(latency, P(latency >= it)) with points spaced evenly in log probability,
    from 1 down to 1/n: the tail gets as many points as the body."""
    values = np.sort(ms)
    n = values.size
    probs = np.logspace(0, -math.log10(n), points) if n > 1 else np.ones(1)
    index = np.unique(np.clip(n - np.round(probs * n).astype(int), 0, n - 1))
    return values[index], (n - index) / n


def _log_ms_axis(ax: Axes) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _run_label(run: pd.Series, labels: list[str]) -> str:
    return ", ".join(f"{c}={value_text(run[c])}" for c in labels if not missing(run[c])) or "run"


def _draw_runs(cdf: Axes, tail: Axes, chosen: pd.DataFrame, labels: list[str],
               latencies: Mapping[str, np.ndarray], palette: Palette) -> tuple[int, int]:
    """One line per run on both axes; (drawn, runs without records)."""
    q = np.linspace(0.0, 1.0, CDF_POINTS + 1)
    drawn = no_records = 0
    styles: dict[Any, int] = {}
    for _, run in chosen.iterrows():
        ms = np.asarray(latencies.get(str(run["experiment_id"]), np.empty(0)), dtype=float)
        ms = ms[ms > 0]
        if ms.size == 0:
            no_records += 1
            continue
        k = styles[run["servers"]] = styles.get(run["servers"], -1) + 1
        style = {"color": palette(run["servers"]), "linestyle": LINE_STYLES[k % len(LINE_STYLES)],
                 "linewidth": 1.4}
        cdf.plot(np.quantile(ms, q), q, label=_run_label(run, labels), **style)
        tail.plot(*tail_points(ms), **style)
        drawn += 1
    return drawn, no_records


def _finish_axes(cdf: Axes, tail: Axes, heading: str, drawn: int) -> None:
    for level in (0.5, 0.99):
        cdf.axhline(level, color="grey", linestyle=":", linewidth=0.8)
    for level, name in TAIL_LEVELS:
        tail.axhline(level, color="grey", linestyle=":", linewidth=0.8)
        tail.annotate(name, (1.0, level), xycoords=("axes fraction", "data"), fontsize=7,
                      color="grey", xytext=(2, 0), textcoords="offset points", va="center")
    if drawn:
        _log_ms_axis(cdf)
        _log_ms_axis(tail)
        tail.set_yscale("log")
        cdf.legend(fontsize=7, loc="lower right")
    else:
        cdf.text(0.5, 0.5, "no request records", ha="center", va="center", transform=cdf.transAxes)
    cdf.set_ylim(0, 1.0)
    style_axes(cdf, heading, "latency per request (ms, log)", "fraction of requests ≤ latency")
    style_axes(tail, f"{heading}: tail", "latency per request (ms, log)", "fraction of requests ≥ latency (log)")
    tail.grid(True, alpha=0.3)


def latency_distribution(runs: pd.DataFrame, latencies: Mapping[str, np.ndarray],
                         palette: Palette) -> list[Figure]:
    """Per model (and scenario, when it varies: open- and closed-loop latencies
    differ in kind): the CDF of the measured successful requests of each valid
    run, and beside it its tail, 1 − CDF on a log axis, where p99 and p99.9 live."""
    valid = runs[runs["valid"].astype(bool) & runs["samples_per_s"].notna()]
    keys = ["model", *(["scenario"] if "scenario" in varying(valid) else [])]
    figures = []
    for fig, axes, page, note in paged_grids(
            facets(valid, keys), "Latency distribution of measured successful requests", per_page=MAX_PANELS // 2,
            axes_per_item=2, width=6.0, height=4.0, ncols=2):
        hidden = missing_records = 0
        for (key, group), cdf, tail in zip(page, axes[0::2], axes[1::2]):
            chosen = _spread(group, MAX_CDF_LINES)
            hidden += len(group) - len(chosen)
            labels = varying(group, exclude=keys)
            if "repeat" in group.columns and group["repeat"].nunique() > 1:
                labels.append("repeat")
            drawn, no_records = _draw_runs(cdf, tail, chosen, labels, latencies, palette)
            missing_records += no_records
            _finish_axes(cdf, tail, title(keys, key), drawn)
        footnote(fig, [f"{hidden} runs not drawn (at most {MAX_CDF_LINES} a panel, spread over "
                       "the range of median latency)" if hidden else "",
                       f"{missing_records} valid runs have no readable request records" if missing_records else "",
                       note])
        figures.append(fig)
    return figures


# --------------------------------------------------------------------------
# Per-backend share


def share_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with more than one backend and their shares (a list, natural backend
    order), most imbalanced first within each backend count."""
    cols = sorted(backend_columns(runs), key=natural_key)
    if not cols:
        return runs.iloc[0:0].assign(shares=[], n_backends=[])
    counts = runs[cols].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    shares = []
    for row in counts:
        known = row[~np.isnan(row)]
        shares.append((known / known.sum()).tolist() if known.size > 1 and known.sum() > 0 else [])
    rows = runs.assign(shares=shares, n_backends=[len(s) for s in shares])
    rows = rows[rows["n_backends"] > 1]
    low = rows["shares"].map(min)
    return rows.assign(_low=low).sort_values(["n_backends", "_low"], kind="stable")


def _share_label(run: pd.Series, extras: list[str]) -> str:
    parts = [value_text(run.get("model", "")), f"b={value_text(run.get('batch'))}",
             f"c={value_text(run.get('clients'))}"]
    parts += [f"{k}={value_text(run[k])}" for k in extras if not missing(run[k])]
    return " ".join(parts) + ("" if bool(run["valid"]) else " [invalid]")


def _share_panel(ax: Axes, n: int, panel: pd.DataFrame, extras: list[str], palette: Palette) -> None:
    shown = panel.head(MAX_SHARE_ROWS).iloc[::-1]  # most imbalanced on top
    fair = 1.0 / n
    floors = sorted({float(v) * fair for v in shown["min_backend_share"] if not missing(v)})
    for y, (_, run) in enumerate(shown.iterrows()):
        shares = np.asarray(run["shares"])
        floor = run["min_backend_share"] * fair if not missing(run["min_backend_share"]) else -1.0
        ax.hlines(y, shares.min(), shares.max(), color="#bbbbbb", linewidth=1)
        ok = shares >= floor
        ax.scatter(shares[ok], np.full(ok.sum(), y), s=14, color=palette(run.get("servers")), zorder=3)
        ax.scatter(shares[~ok], np.full((~ok).sum(), y), s=30, color="red", marker="x", zorder=3)
    ax.axvline(fair, color="black", linestyle="--", linewidth=1)
    for floor in floors:
        ax.axvline(floor, color="red", linestyle=":", linewidth=1.5)
    top = max([2 * fair, *(max(s) * 1.05 for s in shown["shares"])])
    ax.set_xlim(0, min(1.0, top))
    ax.set_yticks(range(len(shown)), [_share_label(r, extras) for _, r in shown.iterrows()], fontsize=8)
    more = f", the {len(shown)} most imbalanced of {len(panel)}" if len(panel) > len(shown) else ""
    threshold = (f"red dotted: minimum for a valid run, min_backend_share × 1/N = "
                 f"{', '.join(f'{f:.3g}' for f in floors)}" if floors else
                 "minimum share unknown (no measure.min_backend_share)")
    ax.set_title(f"N={n} backends{more}", fontsize=10)
    ax.set_xlabel(f"share of requests, a dot per backend; dashed: fair share 1/N = {fair:.3g}; {threshold}",
                  fontsize=8)


def backend_shares(runs: pd.DataFrame, palette: Palette) -> list[Figure]:
    """A row per run with more than one backend (invalid runs too, marked: a starved
    backend is often why a run is invalid); a panel per backend count N."""
    rows = share_rows(runs)
    if rows.empty:
        return []
    extras = varying(runs, exclude=("model", "batch", "clients", "servers"))
    panels = list(rows.groupby("n_backends", sort=True))
    heights = [min(len(p), MAX_SHARE_ROWS) for _, p in panels]
    fig = Figure(figsize=(10, 1.6 + 0.28 * sum(heights) + 1.1 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[h + 2 for h in heights]).ravel()
    fig.suptitle("Per-backend share of requests (runs with more than one backend)", fontsize=13)
    for ax, (n, panel) in zip(axes, panels):
        _share_panel(ax, int(n), panel, extras, palette)
        ax.grid(True, axis="x", alpha=0.3)
    palette.legend(fig, rows["servers"] if "servers" in rows.columns else [])
    return [fig]
