"""Figures of speed and latency against load, from the per-configuration table
(`aggregate.aggregate`): each builder returns its figures (one per page of at
most MAX_PANELS panels), never saves them.

Panels are split by model, batch and every other parameter that varies and is
not on the panel's axes, so unlike runs never share a line; one line per
server count, coloured by the shared Palette.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .panels import (
    QUANTILE_STYLES,
    Palette,
    facets,
    footnote,
    grid,
    log2_x,
    omitted_note,
    page_suffix,
    pages,
    quantile_handles,
    style_axes,
    title,
    value_text,
    varying,
    with_roles,
)

MEAN_NOTE = "points: mean over valid repeats"
BARS_NOTE = "bars: 95% confidence interval"
CLIENTS_LABEL = "clients (concurrent gRPC clients)"
RATE_LABEL = "offered rate (requests/s)"
LATENCY_LABEL = "latency per request (ms)"
LATENCIES = (("latency_p50_ms_mean", "p50"), ("latency_p90_ms_mean", "p90"), ("latency_p99_ms_mean", "p99"))


def _measured(table: pd.DataFrame, open_loop: bool) -> pd.DataFrame:
    data = with_roles(table)
    return data[(data["_open"] == open_loop) & data["samples_per_s_mean"].notna()]


def _errorbar(ax: Axes, line: pd.DataFrame, x: str, y: str, **style: Any) -> bool:
    """Points with their 95% interval as bars where there is one; True if any bar."""
    mean = line[y].to_numpy(float)
    low = line["samples_per_s_ci95_low"].to_numpy(float)
    high = line["samples_per_s_ci95_high"].to_numpy(float)
    yerr = np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0).clip(min=0)
    ax.errorbar(line[x].to_numpy(float), mean, yerr=yerr, marker="o", markersize=4,
                capsize=3, linewidth=1.5, **style)
    return bool((yerr > 0).any())


def _heading(base: str, page: Sequence[tuple[Any, pd.DataFrame]], bars: bool) -> str:
    notes = []
    if any((group["n"] > 1).any() for _, group in page):
        notes.append(MEAN_NOTE)
    if bars:
        notes.append(BARS_NOTE)
    return base + (f"\n{'; '.join(notes)}" if notes else "")


def _load_figures(data: pd.DataFrame, palette: Palette, *, x: str, x_label: str,
                  series: Sequence[tuple[str, str]], y_label: str, heading: str,
                  bars: bool = False, identity: bool = False) -> list[Figure]:
    """Panels (model × batch × every other varying param), a line per server
    count (and per series, by line style), x on a log2 axis."""
    data = data[data[x].notna()]
    on_x = (x, "rate") if x == "_rate" else (x,)
    keys = ["model", "batch", *varying(data, exclude=("model", "batch", "servers", *on_x))]
    all_pages, omitted = pages(facets(data, keys))
    figures = []
    for i, page in enumerate(all_pages, 1):
        fig, axes = grid(len(page), heading)
        drew_bars, shown = False, []
        for ax, (key, group) in zip(axes, page):
            for servers, line in group.groupby("servers", sort=False):
                line = line.sort_values(x)
                shown.append(servers)
                for col, name in series:
                    pts = line[line[col].notna()]
                    style = {"color": palette(servers), "linestyle": QUANTILE_STYLES.get(name, "-")}
                    if pts.empty:
                        continue
                    if bars:
                        drew_bars |= _errorbar(ax, pts, x, col, **style)
                    else:
                        ax.plot(pts[x].to_numpy(float), pts[col].to_numpy(float), marker="o",
                                markersize=4, linewidth=1.5, **style)
            if identity:
                xs = sorted(group[x].dropna().astype(float).unique())
                ax.plot(xs, xs, color="grey", linestyle=":", linewidth=1)
            log2_x(ax, group[x])
            ax.set_ylim(bottom=0)
            style_axes(ax, title(keys, key), x_label, y_label)
        fig.suptitle(_heading(heading + page_suffix(i, len(all_pages)), page, drew_bars), fontsize=13)
        extra = quantile_handles(name for _, name in series) if len(series) > 1 else []
        if identity:
            extra.append(Line2D([], [], color="grey", linestyle=":", label="offered = achieved"))
        palette.legend(fig, shown, extra)
        footnote(fig, [omitted_note(omitted) if i == len(all_pages) else ""])
        figures.append(fig)
    return figures


def throughput_vs_clients(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    return _load_figures(_measured(table, False), palette, x="clients", x_label=CLIENTS_LABEL,
                         series=[("samples_per_s_mean", "")], y_label="throughput (samples/s)",
                         heading="Throughput vs clients", bars=True)


def throughput_vs_rate(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    return _load_figures(_measured(table, True), palette, x="_rate", x_label=RATE_LABEL,
                         series=[("requests_per_s_mean", "")], y_label="achieved throughput (requests/s)",
                         heading="Open loop: achieved vs offered rate", identity=True)


def latency_vs_clients(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    return _load_figures(_measured(table, False), palette, x="clients", x_label=CLIENTS_LABEL,
                         series=LATENCIES, y_label=LATENCY_LABEL,
                         heading="Latency vs clients: p50 solid, p90 dash-dot, p99 dashed")


def latency_vs_rate(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    return _load_figures(_measured(table, True), palette, x="_rate", x_label=RATE_LABEL,
                         series=LATENCIES, y_label=LATENCY_LABEL,
                         heading="Open loop: latency vs offered rate")


def throughput_vs_batch(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    """A line per server count at the largest client count measured: the loaded
    regime, and one line per colour stays readable."""
    data = _measured(table, False)
    data = data[data["batch"].notna() & data["clients"].notna()]
    keys = ["model", *varying(data, exclude=("model", "servers", "clients", "batch"))]
    all_pages, omitted = pages(facets(data, keys))
    figures = []
    heading = "Throughput vs batch size at the most clients"
    for i, page in enumerate(all_pages, 1):
        fig, axes = grid(len(page), heading)
        drew_bars, shown = False, []
        for ax, (key, group) in zip(axes, page):
            clients = group["clients"].astype(float).max()
            loaded = group[group["clients"].astype(float) == clients]
            for servers, line in loaded.groupby("servers", sort=False):
                shown.append(servers)
                drew_bars |= _errorbar(ax, line.sort_values("batch"), "batch", "samples_per_s_mean",
                                       color=palette(servers))
            log2_x(ax, loaded["batch"])
            ax.set_ylim(bottom=0)
            style_axes(ax, f"{title(keys, key)}, clients={value_text(clients)}",
                       "batch size (samples/request, log2)", "throughput (samples/s)")
        fig.suptitle(_heading(heading + page_suffix(i, len(all_pages)), page, drew_bars), fontsize=13)
        palette.legend(fig, shown)
        footnote(fig, [omitted_note(omitted) if i == len(all_pages) else ""])
        figures.append(fig)
    return figures


def latency_vs_throughput(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    """perf_analyzer's chart: x samples/s, y p50 (solid) and p99 (dashed) where
    reported, one point per closed-loop configuration, a line per server count
    joining increasing concurrency (the number at each point)."""
    data = _measured(table, False)
    data = data[data["concurrency"].notna()]
    keys = ["model", "batch", *varying(data, exclude=("model", "batch", "servers", "clients"))]
    all_pages, omitted = pages(facets(data, keys))
    figures = []
    heading = "Latency vs throughput: p50 solid, p99 dashed; numbers: concurrency (clients × streams)"
    for i, page in enumerate(all_pages, 1):
        fig, axes = grid(len(page), heading + page_suffix(i, len(all_pages)))
        shown, no_p99 = [], False
        for ax, (key, group) in zip(axes, page):
            for servers, line in group.groupby("servers", sort=False):
                line = line.sort_values("concurrency")
                shown.append(servers)
                for col, name in (("latency_p50_ms_mean", "p50"), ("latency_p99_ms_mean", "p99")):
                    pts = line[line[col].notna()]
                    no_p99 |= name == "p99" and len(pts) < len(line)
                    ax.plot(pts["samples_per_s_mean"].to_numpy(float), pts[col].to_numpy(float),
                            marker="o", markersize=4, linewidth=1.5, color=palette(servers),
                            linestyle=QUANTILE_STYLES[name])
                    if name == "p50":
                        for _, p in pts.iterrows():
                            ax.annotate(value_text(p["concurrency"]), (p["samples_per_s_mean"], p[col]),
                                        textcoords="offset points", xytext=(4, -10), fontsize=7)
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            style_axes(ax, title(keys, key), "throughput (samples/s)", LATENCY_LABEL)
        palette.legend(fig, shown, quantile_handles(("p50", "p99")))
        footnote(fig, ["p99 is drawn only where reported (1,000 requests or more)" if no_p99 else "",
                       omitted_note(omitted) if i == len(all_pages) else ""])
        figures.append(fig)
    return figures
