"""What every figure shares: facets in grid order, paging, the subplot grid,
axes and the palette (one colour per server count, the same in every panel).

Figures are built on `matplotlib.figure.Figure` (Agg canvas), never pyplot: no
global backend switch and no open-figure bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator

from .aggregate import AGGREGATE_COLUMNS
from .dataset import missing, param_columns

MAX_PANELS = 12  # panels per figure
MAX_PAGES = 3    # figures per chart (so at most 36 panels)
POISSON = "poisson"
ROLE_DEFAULTS: dict[str, Any] = {"model": "all", "servers": 1, "clients": 1, "batch": 1}
QUANTILE_STYLES = {"p50": "-", "p90": "-.", "p99": "--"}


# --------------------------------------------------------------------------
# Data


def with_roles(df: pd.DataFrame) -> pd.DataFrame:
    """A copy where the role axes exist (odd sweeps still plot) and open-loop
    rows are marked: `_open`, and `_rate` the offered rate (requests/s)."""
    df = df.copy()
    for axis, default in ROLE_DEFAULTS.items():
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


def varying(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Params (not `repeat`, not `exclude`) that take more than one value in df: a
    dataset or its aggregate table (whose per-configuration figures are no params)."""
    skip = {"repeat", *exclude, *AGGREGATE_COLUMNS}
    return [c for c in param_columns(df) if c not in skip and df[c].nunique(dropna=False) > 1]


def levels(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance: the grid's order (rows are in sweep order)."""
    return [v for v in pd.unique(pd.Series(list(values), dtype=object)) if not missing(v)]


def numeric_sorted(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numbers ascending (for axes and colour scales)."""
    return sorted(levels(values), key=lambda v: (0, float(v)) if _is_number(v) else (1, str(v)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def facets(df: pd.DataFrame, keys: list[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """Non-empty groups in grid order (no empty panels)."""
    if df.empty:
        return []
    if not keys:
        return [((), df)]
    return [(key if isinstance(key, tuple) else (key,), group)
            for key, group in df.groupby(keys, dropna=False, sort=False) if not group.empty]


def pages(items: list[Any], per_page: int = MAX_PANELS) -> tuple[list[list[Any]], int]:
    """Items cut into figures of `per_page`, at most MAX_PAGES of them; and
    how many items were left out."""
    shown = items[: per_page * MAX_PAGES]
    return [shown[i:i + per_page] for i in range(0, len(shown), per_page)], len(items) - len(shown)


# --------------------------------------------------------------------------
# Text


def value_text(value: Any) -> str:
    if missing(value):
        return "–"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def title(keys: Sequence[str], values: Sequence[Any]) -> str:
    parts = [value_text(v) if k == "model" else f"{k}={value_text(v)}"
             for k, v in zip(keys, values) if not missing(v)]
    return ", ".join(parts) or "all experiments"


def page_suffix(i: int, n: int) -> str:
    return f" ({i}/{n})" if n > 1 else ""


# --------------------------------------------------------------------------
# Figures and axes


def grid(n: int, heading: str, width: float = 5.0, height: float = 3.8,
         ncols: int = 3) -> tuple[Figure, list[Axes]]:
    """n panels, at most `ncols` a row; a lone panel is wide enough for title and legend."""
    ncols = min(ncols, max(1, n))
    nrows = math.ceil(max(1, n) / ncols)
    width = max(width, 7.5) if n == 1 else width
    fig = Figure(figsize=(width * ncols, height * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(heading, fontsize=13)
    return fig, axes[:n]


def message_figure(heading: str, message: str) -> Figure:
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    fig.suptitle(heading, fontsize=13)
    return fig


def footnote(fig: Figure, notes: Iterable[str]) -> None:
    text = "; ".join(n for n in notes if n)
    if text:
        fig.supxlabel(text, fontsize=9, color="#555555")


def omitted_note(n: int) -> str:
    return f"{n} more panels not drawn (at most {MAX_PAGES} pages); every number is in the dataset" if n else ""


def paged_grids(items: list[Any], heading: str, *, per_page: int = MAX_PANELS, axes_per_item: int = 1,
                **layout: Any) -> Iterator[tuple[Figure, list[Axes], list[Any], str]]:
    """A figure for each page of `items` (see `pages`), headed `heading` plus "(i/n)" when
    there are several, with `axes_per_item` axes per item (`layout`: `grid`'s sizes).
    Yields (figure, its axes, the page's items, the note on panels left out: on the last
    page only, "" on the others)."""
    all_pages, omitted = pages(items, per_page)
    for i, page in enumerate(all_pages, 1):
        fig, axes = grid(axes_per_item * len(page), heading + page_suffix(i, len(all_pages)), **layout)
        yield fig, axes, page, omitted_note(omitted) if i == len(all_pages) else ""


def log2_x(ax: Axes, values: Iterable[Any]) -> None:
    """Log2 x axis with a tick at every measured value (powers of two, usually)."""
    ticks = sorted({float(v) for v in values if not missing(v) and float(v) > 0})
    if not ticks:
        return
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    if len(ticks) == 1:  # a single point would otherwise get a degenerate range
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)


def style_axes(ax: Axes, heading: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(heading, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def quantile_handles(names: Iterable[str]) -> list[Line2D]:
    return [Line2D([], [], color="grey", linestyle=QUANTILE_STYLES[q], label=q) for q in names]


class Palette:
    """One colour per server count, in grid order, for every panel of every figure."""

    def __init__(self, servers: Iterable[Any]) -> None:
        cmap = matplotlib.colormaps["tab10"]
        self.colors = {v: cmap(i % 10) for i, v in enumerate(numeric_sorted(servers))}

    def __call__(self, servers: Any) -> Any:
        return self.colors.get(servers, "black")

    def legend(self, fig: Figure, shown: Iterable[Any], extra: Sequence[Line2D] = ()) -> None:
        """One legend for the whole figure: per-axes "best" placement is slow and
        crowds panels, and a colour means the same server count everywhere."""
        present = set(shown)
        handles = [Line2D([], [], color=c, marker="o", markersize=4, label=value_text(s))
                   for s, c in self.colors.items() if s in present]
        if handles or extra:
            fig.legend(handles=[*handles, *extra], title="servers", loc="outside right upper", fontsize=9)
