"""A static HTML report of one sweep, and the configuration recommender.

`write_report(df, sweep_dir)` writes `<sweep>/report/index.html` and its PNG
figures into the same folder (relative links only: the folder can be copied
or served as it is). `recommend(df, slo_p99_ms)` is the pure function behind
the recommendation section.

What the report promises:
  * speeds, latencies and costs come only from valid runs; invalid, unreadable
    and unfinished runs are listed with every reason in their own table and
    never drawn or averaged;
  * runs that differ in any parameter but `repeat` (scenario, rate, gpu, ...)
    are never averaged together: each figure's panels are split by every
    parameter that varies and is not on the panel's axes;
  * the number of figures is bounded (at most MAX_PANELS panels a figure and
    MAX_PAGES figures a section), whatever the size of the sweep;
  * every value written into the HTML is escaped.

Figures are built on `matplotlib.figure.Figure` (Agg canvas), never pyplot.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from osmi_ee.ee.paths import ExperimentPaths, atomic_write
from osmi_ee.osmi.stats import intervals_overlap

from .collect import (
    STATUS_INVALID,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_UNREADABLE,
    SweepError,
    aggregate,
    configuration_columns,
    load_sweep,
    param_columns,
)
from .plots import (
    ERRORBAR_NOTE,
    _aggregate,
    _backend_shares,
    _errorbar,
    _grid as _plots_grid,
    _log2_x,
    _server_colors,
    _server_legend,
    _sort_key,
)

REPORT_DIR = "report"
INDEX = "index.html"
FIG_PREFIX = "fig-"
DPI = 100
MAX_PANELS = 12         # panels per figure
MAX_PAGES = 3           # figures per section (so at most 36 panels a section)
MAX_CDF_LINES = 10      # experiments per CDF panel
MAX_CDF_SAMPLES = 200_000  # latency records per experiment before sampling
CDF_POINTS = 400        # quantiles drawn per CDF line
MAX_TABLE_ROWS = 500    # repeats / resources tables; the CSV has them all
POISSON = "poisson"

THROUGHPUT_MEANING = (
    "Throughput is the number of successful samples per second over the measured window, "
    "all clients together (samples = requests × batch size). The window runs from the first "
    "measured request's start to the last one's end; warm-up requests are never counted. "
    "Latency percentiles are over successful measured requests, per request as the client saw "
    "it. Only valid runs carry a speed: a run with any failed or unaccounted request, a client "
    "that did not exit cleanly, or a starved backend is invalid and appears only in the table "
    "of invalid runs."
)


# --------------------------------------------------------------------------
# Small helpers


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _isna(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _fmt(value: Any, spec: str = "{:,.1f}", missing: str = "–") -> str:
    if _isna(value):
        return missing
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return missing
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def _num_fmt(value: Any) -> str:
    """Three significant-ish figures for speeds spanning 1 to 1e6."""
    if _isna(value):
        return "–"
    v = float(value)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:,.1f}"
    return f"{v:,.2f}"


def _short(value: float) -> str:
    """Compact cell text for heat maps: 2.07k, 950, 12.3."""
    if not math.isfinite(value):
        return ""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    if abs(value) >= 1e3:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _value_text(value: Any) -> str:
    if _isna(value):
        return "–"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _with_axes(df: pd.DataFrame) -> pd.DataFrame:
    """A copy where the role axes exist (odd sweeps still report) and open-loop
    runs are marked: `_open` and `_rate` (the offered rate, requests/s)."""
    df = df.copy()
    defaults = {"model": "all", "servers": 1, "clients": 1, "batch": 1}
    for axis, default in defaults.items():
        if axis not in df.columns:
            df[axis] = default
    if "scenario" in df.columns:
        df["_open"] = df["scenario"].astype("str").str.lower().eq(POISSON).fillna(False).astype(bool)
    else:
        df["_open"] = False
    rate = pd.to_numeric(df["rate"], errors="coerce") if "rate" in df.columns else pd.Series(
        math.nan, index=df.index)
    target = df["target_rate"] if "target_rate" in df.columns else pd.Series(math.nan, index=df.index)
    df["_rate"] = rate.fillna(target).astype(float)
    return df


def _varying(df: pd.DataFrame, exclude: Iterable[str]) -> list[str]:
    """Params (not `repeat`, not `exclude`) that take more than one value in df."""
    skip = {"repeat", *exclude}
    return [c for c in param_columns(df) if c not in skip and not c.startswith("_")
            and df[c].nunique(dropna=False) > 1]


def _facets(df: pd.DataFrame, keys: list[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    if df.empty:
        return []
    if not keys:
        return [((), df)]
    return [(key if isinstance(key, tuple) else (key,), group)
            for key, group in df.groupby(keys, dropna=False, sort=True)]


def _title(keys: Sequence[str], values: Sequence[Any]) -> str:
    parts = []
    for key, value in zip(keys, values):
        if _isna(value):
            continue
        parts.append(_value_text(value) if key == "model" else f"{key}={_value_text(value)}")
    return ", ".join(parts) or "all experiments"


def _grid(n: int, title: str, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Axes]]:
    """plots' subplot grid, wide enough alone that the title clears the legend."""
    return _plots_grid(n, title, width=max(width, 7.5) if n == 1 else width, height=height)


def _pages(items: list[Any]) -> tuple[list[list[Any]], int]:
    """Items cut into figures of MAX_PANELS, at most MAX_PAGES of them; and
    how many items were left out."""
    shown = items[: MAX_PANELS * MAX_PAGES]
    pages = [shown[i:i + MAX_PANELS] for i in range(0, len(shown), MAX_PANELS)]
    return pages, len(items) - len(shown)


def _config_label(row: pd.Series | dict[str, Any], cols: Sequence[str]) -> str:
    return ", ".join(f"{c}={_value_text(row[c])}" for c in cols if not _isna(row[c])) or "(single configuration)"


# --------------------------------------------------------------------------
# Recommender


def _pick(row: pd.Series, cols: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cols:
        v = row[c]
        if _isna(v):
            out[c] = None
        elif isinstance(v, (np.integer,)):
            out[c] = int(v)
        elif isinstance(v, (np.floating,)):
            out[c] = float(v)
        else:
            out[c] = v
    return out


def _choice(row: pd.Series, cols: Sequence[str]) -> dict[str, Any]:
    def f(col: str) -> float | None:
        v = row.get(col)
        return None if _isna(v) else float(v)

    return {
        "config": _pick(row, cols),
        "samples_per_s": f("samples_per_s_mean"),
        "samples_per_s_ci95": (f("samples_per_s_ci95_low"), f("samples_per_s_ci95_high")),
        "latency_p50_ms": f("latency_p50_ms_mean"),
        "latency_p99_ms": f("latency_p99_ms_mean"),
        "latency_p99_ms_max": f("latency_p99_ms_max"),
        "cost_per_million_samples": f("cost_per_million_samples"),
        "n": int(row["n"]),
    }


def _interval(row: pd.Series) -> tuple[float, float] | None:
    low, high = row.get("samples_per_s_ci95_low"), row.get("samples_per_s_ci95_high")
    return None if _isna(low) or _isna(high) else (float(low), float(high))


def tied_with(best: pd.Series, others: pd.DataFrame) -> list[int] | None:
    """Positions in `others` whose interval overlaps `best`'s: not measurably slower,
    so a tie. None when `best` has no interval (nothing can be told apart)."""
    own = _interval(best)
    if own is None:
        return None
    return [i for i, (_, row) in enumerate(others.iterrows())
            if (iv := _interval(row)) is None or intervals_overlap(own, iv)]


def recommend(df: pd.DataFrame, slo_p99_ms: float | None = None) -> dict[Any, dict[str, Any]]:
    """Per model, the configuration to run, under a p99 objective when one is given.

    A configuration is a candidate when every one of its repeats is valid
    (`all_valid`); with an objective it must also keep its worst p99 over the
    repeats <= `slo_p99_ms` (a configuration whose p99 has too few samples behind
    it cannot show that it meets one). Without an objective, the fastest valid
    configuration is named and the entry says that no objective was set.
    `fastest` is the candidate with the highest mean samples/s; every other
    candidate whose 95% interval overlaps the fastest's is `tied` with it (listed,
    never called slower). `cheapest` is the lowest cost per million samples among
    priced candidates. Each choice is a dict with `config`, `samples_per_s`, its
    95% CI, latencies, cost and `n` (valid repeats).
    """
    data = _with_axes(df)
    agg = aggregate(data.drop(columns=["_open", "_rate"]))
    cols = configuration_columns(data.drop(columns=["_open", "_rate"]))
    out: dict[Any, dict[str, Any]] = {}
    if agg.empty or "model" not in agg.columns:
        return out
    for model, group in agg.groupby("model", sort=True):
        eligible = group[group["all_valid"] & group["samples_per_s_mean"].notna()]
        if slo_p99_ms is None:
            meeting = eligible
        else:
            meeting = eligible[eligible["latency_p99_ms_max"] <= float(slo_p99_ms)]
        entry: dict[str, Any] = {
            "slo_p99_ms": None if slo_p99_ms is None else float(slo_p99_ms),
            "slo_source": "given" if slo_p99_ms is not None else "none: no objective was set",
            "configurations": int(len(group)),
            "eligible": int(len(eligible)),
            "meeting_slo": int(len(meeting)),
            "fastest": None,
            "tied": [],
            "cheapest": None,
            "priced": bool(meeting["cost_per_million_samples"].notna().any()) if len(meeting) else False,
        }
        if len(meeting):
            ranked = meeting.sort_values(["samples_per_s_mean", "latency_p99_ms_max"],
                                         ascending=[False, True], kind="stable")
            fastest, rest = ranked.iloc[0], ranked.iloc[1:]
            entry["fastest"] = _choice(fastest, cols)
            ties = tied_with(fastest, rest)
            entry["fastest"]["separable"] = ties is not None
            entry["tied"] = [_choice(rest.iloc[i], cols) for i in (ties or [])]
            priced = meeting[meeting["cost_per_million_samples"].notna()]
            if len(priced):
                cheapest = priced.sort_values(["cost_per_million_samples", "samples_per_s_mean"],
                                              ascending=[True, False], kind="stable").iloc[0]
                entry["cheapest"] = _choice(cheapest, cols)
        out[model] = entry
    return out


# --------------------------------------------------------------------------
# Figures


class _Figures:
    """Saves figures as PNG into the report folder and remembers their names."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.names: list[str] = []

    def save(self, fig: Figure, stem: str) -> str:
        name = f"{FIG_PREFIX}{stem}.png"
        path = self.out_dir / name
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
        self.names.append(name)
        return name

    def clean_stale(self) -> None:
        keep = set(self.names)
        for path in self.out_dir.glob(f"{FIG_PREFIX}*.png"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}"></figure>'


def _omitted(n: int, what: str = "panels") -> str:
    if n <= 0:
        return ""
    return (f'<p class="note">{n} more {_esc(what)} not drawn (at most '
            f"{MAX_PANELS * MAX_PAGES} per section); every number is in the dataset.</p>")


def _load_section(figs: _Figures, data: pd.DataFrame, *, stem: str, x: str, x_label: str,
                  series: Sequence[tuple[str, str, str]], y_label: str, title: str,
                  colors: dict[Any, Any], identity: bool = False) -> str:
    """Panels (model x batch x every other varying param), one line per
    server count (and per series, by line style), x = `x` on a log2 axis."""
    data = data[data[x].notna()]
    if data.empty:
        return ""
    # The offered rate is the x axis of open-loop panels: never a facet there.
    on_x = (x, "rate") if x == "_rate" else (x,)
    keys = ["model", "batch", *_varying(data, exclude=("model", "batch", "servers", *on_x))]
    facets = _facets(data, keys)
    pages, omitted = _pages(facets)
    parts = []
    styles = ("-", "-.", "--")
    for i, page in enumerate(pages, 1):
        suffix = f" ({i}/{len(pages)})" if len(pages) > 1 else ""
        fig, axes = _grid(len(page), f"{title}{suffix}\n{ERRORBAR_NOTE}")
        shown: list[Any] = []
        for ax, (key, group) in zip(axes, page):
            for (col, _label, _), style in zip(series, styles):
                agg = _aggregate(group, ["servers", x], col)
                shown += agg["servers"].tolist()
                for servers, line in agg.groupby("servers", sort=True):
                    _errorbar(ax, line, x, color=colors[servers], linestyle=style)
            if identity:
                xs = sorted(group[x].dropna().astype(float).unique())
                if xs:
                    ax.plot(xs, xs, color="grey", linestyle=":", linewidth=1)
            _log2_x(ax, group[x].dropna().astype(float).tolist())
            ax.set_ylim(bottom=0)
            ax.set_title(_title(keys, key), fontsize=10)
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.grid(True, alpha=0.3)
        extra = []
        if len(series) > 1:
            extra = [Line2D([], [], color="grey", linestyle=s, label=label)
                     for (_, label, _), s in zip(series, styles)]
        if identity:
            extra.append(Line2D([], [], color="grey", linestyle=":", label="offered = achieved"))
        _server_legend(fig, colors, shown, extra)
        name = figs.save(fig, f"{stem}-{i}")
        parts.append(_img(name, f"{title}{suffix}"))
    return "\n".join(parts) + _omitted(omitted)


def _scaling_rows(agg: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Configurations with N servers and a 1-server twin (every other param in
    `cols` equal): efficiency = throughput(N) / (N * throughput(1))."""
    if agg.empty or "servers" not in agg.columns:
        return agg.iloc[0:0]
    others = [c for c in cols if c != "servers"]
    data = agg[agg["samples_per_s_mean"].notna()].copy()
    data["_servers"] = pd.to_numeric(data["servers"], errors="coerce")
    data = data[data["_servers"] >= 1]

    def key(row: pd.Series) -> tuple[Any, ...]:
        return tuple(None if _isna(row[c]) else row[c] for c in others)

    base = {key(r): r["samples_per_s_mean"] for _, r in data[data["_servers"] == 1].iterrows()}
    effs = []
    for _, r in data.iterrows():
        one = base.get(key(r))
        effs.append(r["samples_per_s_mean"] / (r["_servers"] * one) if one and one > 0 else math.nan)
    data["efficiency"] = effs
    return data[data["efficiency"].notna()]


def _scaling_section(figs: _Figures, agg: pd.DataFrame, cols: Sequence[str]) -> str:
    rows = _scaling_rows(agg, cols)
    if rows.empty or rows["_servers"].nunique() < 2:
        return ('<p>Not computable: no configuration was measured validly both with 1 server '
                "and with more (all other parameters equal).</p>")
    keys = ["model", "batch", *[c for c in cols if c not in ("model", "batch", "servers", "clients")
                                and rows[c].nunique(dropna=False) > 1]]
    facets = _facets(rows, keys)
    pages, omitted = _pages(facets)
    clients = sorted(rows["clients"].dropna().unique().tolist(), key=_sort_key)
    cmap = matplotlib.colormaps["viridis"]
    ccolors = {c: cmap(i / max(1, len(clients) - 1) * 0.9) for i, c in enumerate(clients)}
    parts = []
    for i, page in enumerate(pages, 1):
        suffix = f" ({i}/{len(pages)})" if len(pages) > 1 else ""
        fig, axes = _grid(len(page), "Scaling efficiency: throughput(N) / (N × throughput(1)), "
                          f"mean over repeats{suffix}")
        top = 1.2
        for ax, (key, group) in zip(axes, page):
            for c, line in group.groupby("clients", sort=True):
                line = line.sort_values("_servers")
                ax.plot(line["_servers"], line["efficiency"], marker="o", markersize=4,
                        color=ccolors.get(c, "black"))
                top = max(top, float(line["efficiency"].max()) * 1.1)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            _log2_x(ax, group["_servers"].tolist())
            ax.set_ylim(0, top)
            ax.set_title(_title(keys, key), fontsize=10)
            ax.set_xlabel("servers (model-server shards)")
            ax.set_ylabel("scaling efficiency (1 = linear)")
            ax.grid(True, alpha=0.3)
        handles = [Line2D([], [], color=ccolors[c], marker="o", markersize=4, label=_value_text(c))
                   for c in clients]
        handles.append(Line2D([], [], color="grey", linestyle="--", label="linear"))
        fig.legend(handles=handles, title="clients", loc="outside right upper", fontsize=9)
        parts.append(_img(figs.save(fig, f"scaling-{i}"), f"scaling efficiency{suffix}"))
    return "\n".join(parts) + _omitted(omitted)


def _heatmap_section(figs: _Figures, valid: pd.DataFrame) -> str:
    data = valid[~valid["_open"]]
    if data.empty:
        return "<p>No valid closed-loop runs.</p>"
    keys = ["model", "servers", *_varying(data, exclude=("model", "servers", "batch", "clients"))]
    agg = _aggregate(data, [*keys, "batch", "clients"], "samples_per_s")
    facets = _facets(agg, keys)
    pages, omitted = _pages(facets)
    parts = []
    for i, page in enumerate(pages, 1):
        suffix = f" ({i}/{len(pages)})" if len(pages) > 1 else ""
        fig, axes = _grid(len(page), f"Throughput (samples/s, mean over repeats) over batch × clients{suffix}",
                          width=5.2, height=4.0)
        for ax, (key, group) in zip(axes, page):
            batches = sorted(group["batch"].dropna().unique().tolist(), key=_sort_key)
            clients = sorted(group["clients"].dropna().unique().tolist(), key=_sort_key)
            grid = np.full((len(batches), len(clients)), np.nan)
            for _, r in group.iterrows():
                if _isna(r["batch"]) or _isna(r["clients"]):
                    continue
                grid[batches.index(r["batch"]), clients.index(r["clients"])] = r["mean"]
            masked = np.ma.masked_invalid(grid)
            cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
            im = ax.imshow(masked, cmap=cmap, origin="lower", aspect="auto",
                           vmin=0, vmax=np.nanmax(grid) if np.isfinite(grid).any() else 1)
            peak = np.nanmax(grid) if np.isfinite(grid).any() else 1.0
            for (bi, ci), value in np.ndenumerate(grid):
                text = _short(value) if math.isfinite(value) else "–"
                dark = math.isfinite(value) and value < 0.6 * peak
                ax.text(ci, bi, text, ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
            ax.set_xticks(range(len(clients)), [_value_text(c) for c in clients])
            ax.set_yticks(range(len(batches)), [_value_text(b) for b in batches])
            ax.set_xlabel("clients")
            ax.set_ylabel("batch size")
            ax.set_title(_title(keys, key), fontsize=10)
            fig.colorbar(im, ax=ax, label="samples/s", shrink=0.85)
        parts.append(_img(figs.save(fig, f"heatmap-{i}"), f"throughput heat map{suffix}"))
    return "\n".join(parts) + _omitted(omitted)


def _latency_records_ms(exp_dir: Path, rng: np.random.Generator) -> np.ndarray:
    """Latencies (ms) of the measured, successful requests of one experiment,
    sampled down to MAX_CDF_SAMPLES; empty when no records can be read."""
    chunks = []
    for path in sorted((exp_dir / "results").glob("requests-client*.parquet")):
        try:
            rec = pd.read_parquet(path, columns=["phase", "code", "latency_ns"])
        except Exception:  # noqa: BLE001 (a broken record file must not sink the report)
            continue
        mask = (rec["phase"].to_numpy() == 1) & (rec["code"].to_numpy() == 0)
        chunks.append(rec["latency_ns"].to_numpy()[mask])
    if not chunks:
        return np.empty(0)
    values = np.concatenate(chunks).astype(float) / 1e6
    if values.size > MAX_CDF_SAMPLES:
        values = rng.choice(values, MAX_CDF_SAMPLES, replace=False)
    return values


def _spread(group: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most n rows, evenly spread over the range of p50 latency."""
    ordered = group.sort_values("latency_p50_ms", kind="stable")
    if len(ordered) <= n:
        return ordered
    picks = np.unique(np.linspace(0, len(ordered) - 1, n).round().astype(int))
    return ordered.iloc[picks]


def _cdf_section(figs: _Figures, valid: pd.DataFrame, sweep_dir: Path) -> str:
    if valid.empty:
        return "<p>No valid runs.</p>"
    # One panel per model (and scenario: open- and closed-loop latencies differ in kind).
    keys = ["model", *(["scenario"] if "scenario" in _varying(valid, exclude=()) else [])]
    facets = _facets(valid, keys)
    pages, omitted = _pages(facets)
    rng = np.random.default_rng(0)
    q = np.linspace(0.0, 1.0, CDF_POINTS + 1)
    parts, hidden, no_records = [], 0, 0
    cmap = matplotlib.colormaps["tab10"]
    for i, page in enumerate(pages, 1):
        suffix = f" ({i}/{len(pages)})" if len(pages) > 1 else ""
        fig, axes = _grid(len(page), f"Latency CDF of measured successful requests{suffix}",
                          width=5.6, height=4.0)
        for ax, (key, group) in zip(axes, page):
            chosen = _spread(group, MAX_CDF_LINES)
            hidden += len(group) - len(chosen)
            labels = _varying(group, exclude=keys)
            if "repeat" in group.columns and group["repeat"].nunique() > 1:
                labels.append("repeat")
            drawn = 0
            for j, (_, r) in enumerate(chosen.iterrows()):
                ms = _latency_records_ms(sweep_dir / str(r["experiment_id"]), rng)
                ms = ms[ms > 0]
                if ms.size == 0:
                    no_records += 1
                    continue
                label = ", ".join(f"{c}={_value_text(r[c])}" for c in labels if not _isna(r[c]))
                ax.plot(np.quantile(ms, q), q, color=cmap(j % 10), linewidth=1.4,
                        label=label or "run")
                drawn += 1
            for level in (0.5, 0.99):
                ax.axhline(level, color="grey", linestyle=":", linewidth=0.8)
            if drawn:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.legend(fontsize=7, loc="lower right")
            else:
                ax.text(0.5, 0.5, "no request records", ha="center", va="center",
                        transform=ax.transAxes)
            ax.set_ylim(0, 1.0)
            ax.set_xlabel("latency per request (ms, log)")
            ax.set_ylabel("fraction of requests ≤ latency")
            ax.set_title(_title(keys, key), fontsize=10)
            ax.grid(True, alpha=0.3, which="both")
        parts.append(_img(figs.save(fig, f"latency-cdf-{i}"), f"latency CDF{suffix}"))
    notes = []
    if hidden:
        notes.append(f"{hidden} runs not drawn (at most {MAX_CDF_LINES} per panel, "
                     "spread over the range of median latency)")
    if no_records:
        notes.append(f"{no_records} valid runs have no readable request records")
    note = f'<p class="note">{_esc("; ".join(notes))}.</p>' if notes else ""
    return ("<p>Dotted lines mark the median (0.5) and p99 (0.99). Each line is one valid run "
            f"(records sampled to at most {MAX_CDF_SAMPLES:,} per run).</p>"
            + "\n".join(parts) + _omitted(omitted) + note)


def _backend_section(figs: _Figures, data: pd.DataFrame) -> str:
    fig = _backend_shares(data.drop(columns=["_open", "_rate"]))
    return ("<p>Share of the measured requests each backend (model-server shard) received, "
            "as counted by HAProxy; the dashed lines are the fair shares. Invalid runs are "
            "included here (marked), since a starved backend is often why a run is invalid.</p>"
            + _img(figs.save(fig, "backend-shares"), "per-backend share of requests"))


def _energy_figure(figs: _Figures, agg: pd.DataFrame, colors: dict[Any, Any]) -> str:
    rows = agg[agg["energy_j_per_sample_mean"].notna() & agg["samples_per_s_mean"].notna()]
    if rows.empty:
        return ""
    facets = _facets(rows, ["model"])
    pages, omitted = _pages(facets)
    parts = []
    for i, page in enumerate(pages, 1):
        fig, axes = _grid(len(page), "Energy per sample vs throughput\n(one point per configuration)",
                          width=5.5)
        shown: list[Any] = []
        for ax, (key, group) in zip(axes, page):
            for servers, pts in group.groupby("servers", sort=True):
                ax.scatter(pts["samples_per_s_mean"], pts["energy_j_per_sample_mean"],
                           color=colors.get(servers, "black"), s=25)
                shown.append(servers)
            ax.set_xlabel("throughput (samples/s)")
            ax.set_ylabel("energy per sample (J)")
            ax.set_ylim(bottom=0)
            ax.set_xlim(left=0)
            ax.set_title(_title(["model"], key), fontsize=10)
            ax.grid(True, alpha=0.3)
        _server_legend(fig, {k: v for k, v in colors.items()}, [s for s in shown if s in colors])
        parts.append(_img(figs.save(fig, f"energy-{i}"), "energy per sample"))
    return "\n".join(parts) + _omitted(omitted)


# --------------------------------------------------------------------------
# Tables


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "",
           raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (then the caller escaped them)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(f"<td>{c if raw else _esc(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _invalid_section(data: pd.DataFrame) -> str:
    bad = data[data["status"].astype(str) != STATUS_OK]
    if bad.empty:
        return "<p>None: every run is valid.</p>"
    params = param_columns(data.drop(columns=["_open", "_rate"]))
    rows = []
    for _, r in bad.iterrows():
        reasons = [p for p in str(r["reason"]).split("; ") if p] or ["(no reason given)"]
        items = "".join(f"<li>{_esc(p)}</li>" for p in reasons)
        rows.append([_esc(r["experiment_id"]), _esc(_config_label(r, params)), _esc(r["status"]),
                     f"<ul>{items}</ul>"])
    return ("<p>These runs carry no speed and are in no figure or average above "
            "(except the backend-share chart, where they are marked).</p>"
            + _table(["experiment", "configuration", "status", "reasons"], rows,
                     table_id="invalid-runs", raw=True))


def _repeats_section(agg: pd.DataFrame, cols: Sequence[str]) -> str:
    if agg.empty:
        return "<p>No configurations.</p>"
    priced = agg["cost_per_million_samples"].notna().any()
    headers = [*cols, "valid runs", "invalid", "missing", "samples/s (mean)", "95% CI",
               "p50 ms", "p99 ms", "all valid"]
    if priced:
        headers.insert(-1, "cost / 1M samples")
    rows = []
    for _, r in agg.head(MAX_TABLE_ROWS).iterrows():
        ci = ("–" if _isna(r["samples_per_s_ci95_low"]) else
              f"{_num_fmt(r['samples_per_s_ci95_low'])} – {_num_fmt(r['samples_per_s_ci95_high'])} "
              f"(± {_num_fmt(r['samples_per_s_ci95_half'])})")
        flag = "yes" if r["all_valid"] else "no"
        if r["n_unstable"]:
            flag += f" ({int(r['n_unstable'])} unstable)"
        row = [*(_value_text(r[c]) for c in cols), str(int(r["n"])), str(int(r["n_invalid"])),
               str(int(r["n_missing"])), _num_fmt(r["samples_per_s_mean"]), ci,
               _fmt(r["latency_p50_ms_mean"], "{:,.2f}"), _fmt(r["latency_p99_ms_mean"], "{:,.2f}"), flag]
        if priced:
            row.insert(-1, _fmt(r["cost_per_million_samples"], "{:,.4g}"))
        rows.append(row)
    more = ""
    if len(agg) > MAX_TABLE_ROWS:
        more = (f'<p class="note">{len(agg) - MAX_TABLE_ROWS} more configurations in '
                "dataset_summary.csv.</p>")
    return ("<p>One row per configuration (all parameters but <code>repeat</code>). Means and "
            "the 95% confidence interval of the mean (Student t, n − 1 degrees of freedom; "
            "none for a single run) are over valid runs only; invalid and unfinished repeats "
            "are counted, never averaged.</p>"
            + _table(headers, rows, table_id="repeats") + more)


def _resources_section(figs: _Figures, agg: pd.DataFrame, cols: Sequence[str],
                       colors: dict[Any, Any]) -> str:
    telemetry = ["server_cpu_percent_mean", "server_rss_mb_max", "gpu_util_percent_mean",
                 "gpu_power_w_mean", "energy_j_per_sample_mean"]
    have = {c: c in agg.columns and agg[c].notna().any() for c in telemetry}
    gpu_measured = have["gpu_util_percent_mean"] or have["gpu_power_w_mean"] or have["energy_j_per_sample_mean"]
    parts = []
    if not gpu_measured:
        parts.append("<p><strong>GPU utilisation and energy per sample: not measured "
                     "(no GPU telemetry).</strong></p>")
    elif not have["energy_j_per_sample_mean"]:
        parts.append("<p><strong>Energy per sample: not measured (no GPU telemetry with "
                     "energy).</strong></p>")
    if not any(have.values()):
        parts.append("<p>No server telemetry either (CPU, memory).</p>")
        return "\n".join(parts)
    rows_df = agg[agg[[c for c, h in have.items() if h]].notna().any(axis=1)]
    headers = [*cols, "samples/s", "server CPU % (mean)", "server RSS MB (max)",
               "GPU util % (mean)", "GPU power W (mean per GPU)", "energy J/sample"]
    rows = []
    nm = "not measured"
    for _, r in rows_df.head(MAX_TABLE_ROWS).iterrows():
        rows.append([*(_value_text(r[c]) for c in cols), _num_fmt(r["samples_per_s_mean"]),
                     _fmt(r["server_cpu_percent_mean"], "{:.1f}", nm),
                     _fmt(r["server_rss_mb_max"], "{:,.0f}", nm),
                     _fmt(r["gpu_util_percent_mean"], "{:.1f}", nm),
                     _fmt(r["gpu_power_w_mean"], "{:.1f}", nm),
                     _fmt(r["energy_j_per_sample_mean"], "{:.4g}", nm)])
    parts.append("<p>Means over the valid repeats of each configuration; server figures are "
                 "averaged over the server shards (RSS: the largest), GPU figures over the GPUs.</p>")
    parts.append(_table(headers, rows, table_id="resources"))
    if have["energy_j_per_sample_mean"]:
        parts.append(_energy_figure(figs, agg, colors))
    return "\n".join(parts)


def _choice_cells(choice: dict[str, Any] | None, cols: Sequence[str], varying: Sequence[str]) -> list[str]:
    if choice is None:
        return ["–", "–", "–", "–"]
    config = choice["config"]
    shown = [c for c in cols if c in varying and c != "model"] or [c for c in cols if c != "model"]
    label = ", ".join(f"{c}={_value_text(config.get(c))}" for c in shown
                      if config.get(c) is not None) or "(single configuration)"
    lo, hi = choice["samples_per_s_ci95"]
    speed = _num_fmt(choice["samples_per_s"])
    if lo is not None:
        speed += f" (95% CI {_num_fmt(lo)} – {_num_fmt(hi)})"
    speed += f", n={choice['n']}"
    return [label, speed, _fmt(choice["latency_p99_ms_max"], "{:,.2f}"),
            _fmt(choice["cost_per_million_samples"], "{:,.4g}")]


def _recommend_section(rec: dict[Any, dict[str, Any]], cols: Sequence[str],
                       varying: Sequence[str], slo_given: float | None) -> str:
    if not rec or all(entry["eligible"] == 0 for entry in rec.values()):
        return ("<p>No valid runs (no configuration with every repeat valid): nothing to "
                "recommend.</p>")
    if slo_given is None:
        slo_text = ("No objective was set (pass <code>--slo-p99-ms</code>): the fastest valid "
                    "configuration is shown, whatever its latency.")
    else:
        slo_text = f"SLO: p99 latency ≤ {_esc(_fmt(slo_given, '{:g}'))} ms (given)."
    headers = ["model", "SLO p99 ms", "meeting SLO", "pick", "configuration",
               "samples/s", "worst p99 ms", "cost / 1M samples"]
    rows = []
    for model, entry in rec.items():
        meets = f"{entry['meeting_slo']} of {entry['eligible']}"
        slo = _fmt(entry["slo_p99_ms"], "{:,.2f}")
        rows.append([_value_text(model), slo, meets, "fastest",
                     *_choice_cells(entry["fastest"], cols, varying)])
        for tie in entry.get("tied", []):
            rows.append(["", "", "", "tie (intervals overlap)", *_choice_cells(tie, cols, varying)])
        if entry["cheapest"] is not None:
            cheap = _choice_cells(entry["cheapest"], cols, varying)
        elif entry["fastest"] is None:
            cheap = ["–", "–", "–", "–"]
        else:
            cheap = ["no price: the profile has no price_per_gpu_hour for these GPU types",
                     "–", "–", "–"]
        rows.append(["", "", "", "cheapest", *cheap])
    return (f"<p>{slo_text} Candidates are configurations whose every repeat is valid; a "
            "candidate meets the SLO when its worst p99 over the repeats does. "
            "Fastest = highest mean samples/s; a configuration whose 95% interval overlaps the "
            "fastest's is a tie, listed below it, since the data cannot tell them apart; cheapest = lowest cost per million samples "
            "(price per GPU-hour × servers at the measured speed).</p>"
            + _table(headers, rows, table_id="recommendation"))


# --------------------------------------------------------------------------
# The page

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
td ul { margin: 0; padding-left: 1.2em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #666; font-size: 0.9em; } nav a { margin-right: 1em; }
"""


def _overview(data: pd.DataFrame, agg: pd.DataFrame, sweep: dict[str, Any]) -> str:
    status = data["status"].astype(str)
    counts = [
        ("experiments", len(data)),
        ("valid", int((status == STATUS_OK).sum())),
        ("invalid", int((status == STATUS_INVALID).sum())),
        ("unreadable result", int((status == STATUS_UNREADABLE).sum())),
        ("missing (job did not finish)", int((status == STATUS_MISSING).sum())),
        ("configurations (params but repeat)", len(agg)),
    ]
    unstable = int((data["stable"] == False).sum()) if "stable" in data.columns else 0  # noqa: E712
    if unstable:
        counts.append(("valid runs flagged unstable (measurement windows disagree)", unstable))
    params = param_columns(data.drop(columns=["_open", "_rate"]))
    fixed, axes = [], []
    for c in params:
        values = sorted({_value_text(v) for v in data[c].tolist()}, key=lambda s: _sort_key(
            float(s)) if re.fullmatch(r"-?\d+(\.\d+)?", s) else (1, s))
        (axes if len(values) > 1 else fixed).append((c, values))
    rows = [[k, str(v)] for k, v in counts]
    name = sweep.get("name") or ""
    profile = sweep.get("profile") or ""
    grid = ""
    if params:
        varied = ", ".join(_esc(c + " ∈ {" + ", ".join(v) + "}") for c, v in axes)
        constant = ", ".join(_esc(f"{c}={v[0]}") for c, v in fixed if v)
        grid = f"<p>Varied: {varied or 'nothing'}" + (f"; fixed: {constant}" if constant else "") + ".</p>"
    head = f"<p>Sweep <code>{_esc(name)}</code>" + (f", profile <code>{_esc(profile)}</code>" if profile else "") + ".</p>"
    return (head + _table(["", "count"], rows, table_id="counts") + grid
            + f"<p>{_esc(THROUGHPUT_MEANING)}</p>"
            + '<p>Data: <a href="../dataset.csv">dataset.csv</a> (one row per run), '
            '<a href="../dataset_summary.csv">dataset_summary.csv</a> (one row per configuration).</p>')


def provenance(sweep_dir: Path, data: pd.DataFrame) -> dict[str, list[str]]:
    """What produced these figures, from the runs' own manifests (env.json): each
    fact with every distinct value seen, so a mixed sweep shows as mixed."""
    facts: dict[str, set[str]] = {k: set() for k in (
        "server", "balancer", "host", "cpu", "gpu", "date", "osmi-ee", "git commit")}
    for exp_id in data["experiment_id"].astype(str):
        try:
            env = json.loads(ExperimentPaths(sweep_dir / exp_id).env.read_text())
        except (OSError, ValueError):
            continue
        row = data[data["experiment_id"].astype(str) == exp_id].iloc[0]
        version = row.get("server_version")
        facts["server"].add(str(version) if version else str(row.get("server_kind") or "?"))
        facts["balancer"].add(env.get("haproxy") or "?")
        facts["host"].add(env.get("host") or "?")
        facts["cpu"].add(f"{env.get('cpu_model') or '?'} ({env.get('cpu_count')} cores)")
        gpus = env.get("cuda_visible_devices")
        facts["gpu"].add(f"CUDA_VISIBLE_DEVICES={gpus}" if gpus else "none (CPU)")
        facts["date"].add(str(env.get("started_at") or "")[:10] or "?")
        facts["osmi-ee"].add(str((env.get("packages") or {}).get("osmi-ee") or "?"))
        facts["git commit"].add(str(env.get("git_commit") or "?")[:12])
    return {k: sorted(v) for k, v in facts.items() if v}


def _provenance_line(facts: dict[str, list[str]]) -> str:
    if not facts:
        return '<p class="note">No run manifest (env.json) found: the software and host are unknown.</p>'
    items = "".join(f"<li><b>{_esc(k)}</b>: {_esc('; '.join(v))}</li>" for k, v in facts.items())
    return f'<ul class="note" id="provenance">{items}</ul>'


def write_report(df: pd.DataFrame, sweep_dir: Path | str, *, slo_p99_ms: float | None = None) -> Path:
    """Write `<sweep_dir>/report/index.html` and its PNG figures; return the page's path."""
    sweep_dir = Path(sweep_dir)
    out_dir = sweep_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        sweep = load_sweep(sweep_dir)
    except SweepError:
        sweep = {}
    data = _with_axes(df)
    plain = data.drop(columns=["_open", "_rate"])
    agg = aggregate(plain)
    cols = configuration_columns(plain)
    varying = _varying(plain, exclude=())
    valid = data[data["valid"].astype(bool) & data["samples_per_s"].notna()]
    closed, open_loop = valid[~valid["_open"]], valid[valid["_open"]]
    colors = _server_colors(data["servers"].dropna().tolist())
    figs = _Figures(out_dir)
    rec = recommend(df, slo_p99_ms)

    sections: list[tuple[str, str, Callable[[], str]]] = []

    def add(anchor: str, title: str, build: Callable[[], str]) -> None:
        sections.append((anchor, title, build))

    def throughput() -> str:
        if valid.empty:
            return "<p>No valid runs: nothing to draw.</p>"
        out = _load_section(figs, closed, stem="throughput-vs-clients", x="clients",
                            x_label="clients (concurrent gRPC clients)",
                            series=[("samples_per_s", "samples/s", "")],
                            y_label="throughput (samples/s)", title="Throughput vs clients",
                            colors=colors)
        out += _load_section(figs, open_loop, stem="throughput-vs-rate", x="_rate",
                             x_label="offered rate (requests/s)",
                             series=[("requests_per_s", "requests/s", "")],
                             y_label="achieved throughput (requests/s)",
                             title="Open loop: achieved vs offered rate", colors=colors,
                             identity=True)
        return out

    def latency() -> str:
        if valid.empty:
            return "<p>No valid runs: nothing to draw.</p>"
        series = [("latency_p50_ms", "p50", ""), ("latency_p90_ms", "p90", ""),
                  ("latency_p99_ms", "p99", "")]
        out = _load_section(figs, closed, stem="latency-vs-clients", x="clients",
                            x_label="clients (concurrent gRPC clients)", series=series,
                            y_label="latency per request (ms)",
                            title="Latency vs clients: p50 solid, p90 dash-dot, p99 dashed",
                            colors=colors)
        out += _load_section(figs, open_loop, stem="latency-vs-rate", x="_rate",
                             x_label="offered rate (requests/s)", series=series,
                             y_label="latency per request (ms)",
                             title="Open loop: latency vs offered rate", colors=colors)
        return out

    def scaling() -> str:
        closed_agg = agg
        if "scenario" in agg.columns:
            closed_agg = agg[~agg["scenario"].astype("str").str.lower().eq(POISSON).fillna(False)]
        return ("<p>With all other parameters equal, how much of N× the one-server throughput "
                "N servers deliver (1 = linear scaling). Open-loop runs are left out: their "
                "throughput is set by the offered rate.</p>" + _scaling_section(figs, closed_agg, cols))

    add("recommendation", "Recommendation", lambda: _recommend_section(rec, cols, varying, slo_p99_ms))
    add("throughput", "Throughput vs load", throughput)
    add("scaling", "Scaling efficiency vs servers", scaling)
    add("latency", "Latency p50 / p90 / p99 vs load", latency)
    add("cdf", "Latency distribution (CDF)", lambda: _cdf_section(figs, valid, sweep_dir))
    add("heatmap", "Throughput over batch × clients",
        lambda: _heatmap_section(figs, valid) if not valid.empty else "<p>No valid runs.</p>")
    add("backends", "Per-backend share", lambda: _backend_section(figs, data))
    add("resources", "Resource use: CPU, GPU and energy",
        lambda: _resources_section(figs, agg, cols, colors))
    add("invalid", "Invalid and missing runs", lambda: _invalid_section(data))
    add("repeats", "Configurations and repeats (95% CI)", lambda: _repeats_section(agg, cols))

    body = [f"<h2 id=\"overview\">Overview</h2>{_overview(data, agg, sweep)}"]
    for anchor, title, build in sections:
        body.append(f'<h2 id="{anchor}">{_esc(title)}</h2>\n{build()}')
    nav = " ".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t, _ in [("overview", "Overview", None), *sections])
    title = f"osmi-ee report: {sweep.get('name') or sweep_dir.name}"
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{_esc(title)}</h1>\n{_provenance_line(provenance(sweep_dir, data))}\n"
            f"<nav>{nav}</nav>\n" + "\n".join(body) + "\n</body></html>\n")
    index = out_dir / INDEX
    atomic_write(index, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    figs.clean_stale()
    return index
