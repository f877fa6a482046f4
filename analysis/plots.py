"""Figures from a sweep dataset (the frame `collect` returns), as PNG and SVG.

Speeds come only from valid rows; several repeats of one configuration are
drawn as their mean with min-max error bars. Every figure is always written
(with a "no valid runs" note when there is nothing to draw), so the set of
files `make analyze` produces does not depend on how the sweep went.

Figures are built on `matplotlib.figure.Figure` directly (Agg canvas), never
through pyplot: no global backend switch and no open-figure bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

from osmi_ee.ee.paths import atomic_write

from .collect import param_columns

# Axes with a fixed role in the figures; any other axis that varies in the
# sweep (gpu, ...) becomes part of the facet key so unlike runs never average.
ROLE_AXES = ("model", "servers", "clients", "batch", "repeat")
FORMATS = ("png", "svg")
MAX_SHARE_ROWS = 40  # per panel; beyond that a bar chart stops being readable
ERRORBAR_NOTE = "points: mean over repeats; bars: min–max"

FIGURES = (
    "throughput_vs_clients",
    "throughput_vs_batch",
    "latency_vs_clients",
    "backend_shares",
)


# --------------------------------------------------------------------------
# Data helpers


def _with_role_axes(df: pd.DataFrame) -> pd.DataFrame:
    """A copy where every role axis exists, so odd sweeps still plot."""
    df = df.copy()
    defaults = {"model": "all", "servers": 1, "clients": 1, "batch": 1, "repeat": 0}
    for axis, default in defaults.items():
        if axis not in df.columns:
            df[axis] = default
    return df


def _extra_axes(df: pd.DataFrame) -> list[str]:
    """Non-role axes that take more than one value in `df`."""
    return [
        c for c in param_columns(df)
        if c not in ROLE_AXES and df[c].nunique(dropna=False) > 1
    ]


def _aggregate(df: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Mean/min/max/count of `value` per `keys` (i.e. over repeats)."""
    data = df.dropna(subset=[value])
    if data.empty:
        return pd.DataFrame(columns=[*keys, "mean", "min", "max", "n"])
    grouped = data.groupby(keys, dropna=False, sort=True)[value]
    out = grouped.agg(["mean", "min", "max", "count"]).reset_index()
    return out.rename(columns={"count": "n"})


def _facets(df: pd.DataFrame, keys: list[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    if not keys:
        return [((), df)]
    return [
        (key if isinstance(key, tuple) else (key,), group)
        for key, group in df.groupby(keys, dropna=False, sort=True)
    ]


def _facet_title(keys: Sequence[str], values: Sequence[Any]) -> str:
    parts = []
    for key, value in zip(keys, values):
        if _missing(value):  # e.g. `rate` of a closed-loop run: not a value to print
            continue
        parts.append(str(value) if key == "model" else f"{key}={value}")
    return ", ".join(parts) or "all experiments"


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _server_colors(values: Sequence[Any]) -> dict[Any, Any]:
    # One colour per server count across all subplots and figures.
    cmap = matplotlib.colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(sorted(set(values), key=_sort_key))}


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float, np.integer, np.floating)) else (1, str(value))


# --------------------------------------------------------------------------
# Figure helpers


def _grid(n: int, title: str, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Axes]]:
    ncols = min(3, max(1, n))
    nrows = math.ceil(max(1, n) / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    return fig, axes[:n]


def _message_figure(title: str, message: str) -> Figure:
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    fig.suptitle(title, fontsize=13)
    return fig


def _log2_x(ax: Axes, values: Sequence[float]) -> None:
    """Log2 x axis with a tick at every measured value (powers of two, usually)."""
    ticks = sorted({float(v) for v in values if v is not None and float(v) > 0})
    if not ticks:
        return
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    if len(ticks) == 1:  # a single point would otherwise get a degenerate range
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)


def _server_legend(fig: Figure, colors: dict[Any, Any], shown: Iterable[Any],
                   extra: Sequence[Line2D] = ()) -> None:
    """One legend for the whole figure: colours mean the same server count in
    every subplot, and per-axes "best" placement is slow and crowds panels."""
    present = sorted(set(shown), key=_sort_key)
    handles = [Line2D([], [], color=colors[s], marker="o", markersize=4, label=f"{s}")
               for s in present]
    fig.legend(handles=[*handles, *extra], title="servers", loc="outside right upper", fontsize=9)


def _errorbar(ax: Axes, agg: pd.DataFrame, x: str, **style: Any) -> None:
    agg = agg.sort_values(x)
    mean = agg["mean"].to_numpy(float)
    yerr = np.vstack([mean - agg["min"].to_numpy(float), agg["max"].to_numpy(float) - mean])
    ax.errorbar(agg[x].to_numpy(float), mean, yerr=yerr, marker="o", markersize=4,
                capsize=3, linewidth=1.5, **style)


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save as PNG and SVG, each atomically (temp file + os.replace)."""
    paths = []
    # Fixed hash salt and no date: the same data gives byte-identical SVGs.
    with matplotlib.rc_context({"svg.hashsalt": "osmi-ee"}):
        for fmt in FORMATS:
            path = out_dir / f"{stem}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else None
            atomic_write(path, lambda tmp, fmt=fmt, metadata=metadata: fig.savefig(
                tmp, format=fmt, dpi=120, metadata=metadata))
            paths.append(path)
            # The first save laid the figure out; keep that layout for the
            # second format instead of paying for constrained layout again.
            fig.set_layout_engine("none")
    return paths


# --------------------------------------------------------------------------
# The four figures


def _throughput_vs_clients(valid: pd.DataFrame, colors: dict[Any, Any]) -> Figure:
    extras = _extra_axes(valid)
    facet_keys = ["model", "batch", *extras]
    agg = _aggregate(valid, [*facet_keys, "servers", "clients"], "samples_per_s")
    facets = _facets(agg, facet_keys)
    fig, axes = _grid(len(facets), f"Throughput vs clients  ({ERRORBAR_NOTE})")
    shown = agg["servers"].tolist()
    for ax, (key, group) in zip(axes, facets):
        for servers, line in group.groupby("servers", sort=True):
            _errorbar(ax, line, "clients", color=colors[servers])
        _log2_x(ax, group["clients"])
        ax.set_ylim(bottom=0)
        ax.set_title(_facet_title(facet_keys, key))
        ax.set_xlabel("clients (concurrent gRPC clients)")
        ax.set_ylabel("throughput (samples/s)")
        ax.grid(True, alpha=0.3)
    _server_legend(fig, colors, shown)
    return fig


def _throughput_vs_batch(valid: pd.DataFrame, colors: dict[Any, Any]) -> Figure:
    # Lines per server count at the largest client count measured for the
    # model: the loaded regime, and one line per colour stays readable.
    extras = _extra_axes(valid)
    facet_keys = ["model", *extras]
    facets = _facets(valid, facet_keys)
    fig, axes = _grid(len(facets), f"Throughput vs batch size at the most clients  ({ERRORBAR_NOTE})")
    shown: list[Any] = []
    for ax, (key, group) in zip(axes, facets):
        measured = group["clients"].dropna().tolist()
        if not measured:
            continue
        clients = max(measured, key=_sort_key)
        loaded = group[group["clients"] == clients]
        agg = _aggregate(loaded, ["servers", "batch"], "samples_per_s")
        shown += agg["servers"].tolist()
        for servers, line in agg.groupby("servers", sort=True):
            _errorbar(ax, line, "batch", color=colors[servers])
        _log2_x(ax, agg["batch"])
        ax.set_ylim(bottom=0)
        ax.set_title(f"{_facet_title(facet_keys, key)}, clients={clients}")
        ax.set_xlabel("batch size (samples/request, log2)")
        ax.set_ylabel("throughput (samples/s)")
        ax.grid(True, alpha=0.3)
    _server_legend(fig, colors, shown)
    return fig


def _latency_vs_clients(valid: pd.DataFrame, colors: dict[Any, Any]) -> Figure:
    extras = _extra_axes(valid)
    facet_keys = ["model", "batch", *extras]
    keys = [*facet_keys, "servers", "clients"]
    p50 = _aggregate(valid, keys, "latency_p50_ms")
    p99 = _aggregate(valid, keys, "latency_p99_ms")
    facets = _facets(pd.concat([p50.assign(q="p50"), p99.assign(q="p99")]), facet_keys)
    fig, axes = _grid(len(facets), f"Request latency vs clients: p50 solid, p99 dashed  ({ERRORBAR_NOTE})")
    for ax, (key, group) in zip(axes, facets):
        for servers, by_servers in group.groupby("servers", sort=True):
            for q, style in (("p50", "-"), ("p99", "--")):
                line = by_servers[by_servers["q"] == q]
                if not line.empty:
                    _errorbar(ax, line, "clients", color=colors[servers], linestyle=style)
        _log2_x(ax, group["clients"])
        ax.set_ylim(bottom=0)
        ax.set_title(_facet_title(facet_keys, key))
        ax.set_xlabel("clients (concurrent gRPC clients)")
        ax.set_ylabel("latency per request (ms)")
        ax.grid(True, alpha=0.3)
    styles = [Line2D([], [], color="grey", linestyle="-", label="p50"),
              Line2D([], [], color="grey", linestyle="--", label="p99")]
    _server_legend(fig, colors, p50["servers"].tolist() + p99["servers"].tolist(), styles)
    return fig


def _split_shares(text: str) -> list[float]:
    try:
        return [float(s) for s in str(text).split("/") if s]
    except ValueError:
        return []


def _share_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Experiments with >1 backend, repeats averaged, most imbalanced first."""
    servers = pd.to_numeric(df["servers"], errors="coerce")
    rows = df[(df["backend_shares"].astype(str) != "") & (servers > 1)].copy()
    keys = [c for c in param_columns(rows) if c != "repeat"]
    rows["shares"] = rows["backend_shares"].map(_split_shares)
    rows = rows[rows["shares"].map(len) > 1]
    if rows.empty:
        return rows
    out = []
    for key, group in rows.groupby(keys, dropna=False, sort=True):
        widths = {len(s) for s in group["shares"]}
        if len(widths) != 1:  # repeats that saw different backend sets: keep apart
            out.extend(_share_record(keys, key, g) for _, g in group.groupby(group["shares"].map(len)))
        else:
            out.append(_share_record(keys, key, group))
    result = pd.DataFrame(out)
    result["spread"] = result["shares"].map(lambda s: max(s) - min(s))
    return result.sort_values(["servers", "spread"], ascending=[True, False], key=None)


def _share_record(keys: list[str], key: Any, group: pd.DataFrame) -> dict[str, Any]:
    key = key if isinstance(key, tuple) else (key,)
    record = dict(zip(keys, key))
    record["shares"] = np.mean(np.array(group["shares"].tolist(), dtype=float), axis=0).tolist()
    record["n"] = len(group)
    record["invalid"] = int((~group["valid"].astype(bool)).sum())
    return record


def _share_label(row: pd.Series, extras: Sequence[str]) -> str:
    parts = [str(row.get("model", "")), f"b={row['batch']}", f"c={row['clients']}"]
    parts += [f"{k}={row[k]}" for k in extras if k in row.index and not _missing(row[k])]
    label = " ".join(parts)
    if row["n"] > 1:
        label += f" (×{row['n']})"
    if row["invalid"]:
        label += f" [{row['invalid']}/{row['n']} invalid]"
    return label


def _backend_shares(df: pd.DataFrame) -> Figure:
    rows = _share_rows(df)
    extras = _extra_axes(df)  # label only the extra axes that tell rows apart
    title = "Per-backend share of requests (experiments with >1 server)"
    if rows.empty:
        return _message_figure(title, "no experiments with more than one server")
    panels = list(rows.groupby("servers", sort=True))
    heights = [min(len(p), MAX_SHARE_ROWS) for _, p in panels]
    fig = Figure(figsize=(9, 1.4 + 0.28 * sum(heights) + 0.9 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[h + 2 for h in heights]).ravel()
    fig.suptitle(title, fontsize=13)
    cmap = matplotlib.colormaps["tab20"]
    for ax, (servers, panel) in zip(axes, panels):
        shown = panel.head(MAX_SHARE_ROWS).iloc[::-1]  # most imbalanced on top
        n_backends = max(len(s) for s in shown["shares"])
        left = np.zeros(len(shown))
        y = np.arange(len(shown))
        for b in range(n_backends):
            width = np.array([s[b] if b < len(s) else 0.0 for s in shown["shares"]])
            ax.barh(y, width, left=left, height=0.75, color=cmap(b % 20),
                    edgecolor="white", linewidth=0.5, label=f"s{b}")
            left += width
        # Fair share: the segment boundaries a perfectly balanced proxy would give.
        for k in range(1, int(servers)):
            ax.axvline(k / float(servers), color="black", linestyle="--", linewidth=1)
        ax.set_yticks(y, [_share_label(r, extras) for _, r in shown.iterrows()], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of requests (fraction; dashed = fair share 1/servers)")
        more = f", {len(shown)} most imbalanced of {len(panel)}" if len(panel) > len(shown) else ""
        ax.set_title(f"servers={servers}{more}")
        ax.legend(title="backend", fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


# --------------------------------------------------------------------------
# Entry point


def make_plots(df: pd.DataFrame, out_dir: Path | str) -> list[Path]:
    """Write every figure as PNG and SVG into `out_dir`; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _with_role_axes(df)
    valid = data[data["valid"].astype(bool)]
    builders: dict[str, Callable[[], Figure]]
    if valid.empty:
        no_runs = "no valid runs"
        builders = {
            "throughput_vs_clients": lambda: _message_figure("Throughput vs clients", no_runs),
            "throughput_vs_batch": lambda: _message_figure("Throughput vs batch size", no_runs),
            "latency_vs_clients": lambda: _message_figure("Request latency vs clients", no_runs),
        }
    else:
        colors = _server_colors(data["servers"].dropna().tolist())
        builders = {
            "throughput_vs_clients": lambda: _throughput_vs_clients(valid, colors),
            "throughput_vs_batch": lambda: _throughput_vs_batch(valid, colors),
            "latency_vs_clients": lambda: _latency_vs_clients(valid, colors),
        }
    builders["backend_shares"] = lambda: _backend_shares(data)
    paths: list[Path] = []
    for stem in FIGURES:
        paths.extend(_save(builders[stem](), out_dir, stem))
    return paths
