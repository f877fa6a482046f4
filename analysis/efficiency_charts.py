"""Figures of what a configuration gets out of its hardware, from the
per-configuration table: scaling efficiency over servers, throughput over
batch × clients, energy per sample. Builders return figures, never save them.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .aggregate import key_columns
from .dataset import missing
from .panels import (
    Palette,
    facets,
    footnote,
    log2_x,
    numeric_sorted,
    paged_grids,
    style_axes,
    title,
    value_text,
    varying,
    with_roles,
)


def _closed(table: pd.DataFrame) -> pd.DataFrame:
    data = with_roles(table)
    return data[~data["_open"] & data["samples_per_s_mean"].notna()]


def scaling_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Closed-loop configurations with N servers and a 1-server twin (every other
    configuration param equal): efficiency = throughput(N) / (N × throughput(1))."""
    data = _closed(table)
    others = [c for c in key_columns(table) if c != "servers"]
    data = data.assign(_servers=pd.to_numeric(data["servers"], errors="coerce"))
    data = data[data["_servers"] >= 1]

    def key(row: pd.Series) -> tuple[Any, ...]:
        return tuple(None if missing(row[c]) else row[c] for c in others)

    base = {key(r): r["samples_per_s_mean"] for _, r in data[data["_servers"] == 1].iterrows()}
    effs = []
    for _, r in data.iterrows():
        one = base.get(key(r))
        effs.append(r["samples_per_s_mean"] / (r["_servers"] * one) if one and one > 0 else math.nan)
    data = data.assign(_efficiency=effs)
    return data[data["_efficiency"].notna()]


def scaling(table: pd.DataFrame) -> list[Figure]:
    rows = scaling_rows(table)
    if rows.empty or rows["_servers"].nunique() < 2:
        return []
    keys = ["model", "batch", *varying(rows, exclude=("model", "batch", "servers", "clients"))]
    clients = numeric_sorted(rows["clients"])
    cmap = matplotlib.colormaps["viridis"]
    ccolors = {c: cmap(i / max(1, len(clients) - 1) * 0.9) for i, c in enumerate(clients)}
    figures = []
    for fig, axes, page, note in paged_grids(
            facets(rows, keys), "Scaling efficiency: throughput(N) / (N × throughput(1)), mean over valid repeats"):
        top = 1.2
        for ax, (key, group) in zip(axes, page):
            for c, line in group.groupby("clients", sort=False):
                line = line.sort_values("_servers")
                ax.plot(line["_servers"], line["_efficiency"], marker="o", markersize=4,
                        color=ccolors.get(c, "black"))
                top = max(top, float(line["_efficiency"].max()) * 1.1)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            log2_x(ax, group["_servers"])
            ax.set_ylim(0, top)
            style_axes(ax, title(keys, key), "servers (model-server shards)", "scaling efficiency (1 = linear)")
        handles = [Line2D([], [], color=ccolors[c], marker="o", markersize=4, label=value_text(c))
                   for c in clients]
        handles.append(Line2D([], [], color="grey", linestyle="--", label="linear"))
        fig.legend(handles=handles, title="clients", loc="outside right upper", fontsize=9)
        footnote(fig, [note])
        figures.append(fig)
    return figures


def _short(value: float) -> str:
    """Compact cell text for heat maps: 2.07k, 950, 12.3."""
    if not math.isfinite(value):
        return "–"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    if abs(value) >= 1e3:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def heatmap(table: pd.DataFrame) -> list[Figure]:
    """Mean samples/s over batch × clients, a panel per model × servers (× other
    varying params); only worth drawing when both batch and clients vary."""
    data = _closed(table)
    data = data[data["batch"].notna() & data["clients"].notna()]
    if data.empty or data["batch"].nunique() < 2 or data["clients"].nunique() < 2:
        return []
    keys = ["model", "servers", *varying(data, exclude=("model", "servers", "batch", "clients"))]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    figures = []
    for fig, axes, page, note in paged_grids(
            facets(data, keys), "Throughput (samples/s, mean over valid repeats) over batch × clients",
            width=5.2, height=4.0):
        for ax, (key, group) in zip(axes, page):
            batches, clients = numeric_sorted(group["batch"]), numeric_sorted(group["clients"])
            cells = np.full((len(batches), len(clients)), np.nan)
            for _, r in group.iterrows():
                cells[batches.index(r["batch"]), clients.index(r["clients"])] = r["samples_per_s_mean"]
            peak = float(np.nanmax(cells)) if np.isfinite(cells).any() else 1.0
            im = ax.imshow(np.ma.masked_invalid(cells), cmap=cmap, origin="lower", aspect="auto",
                           vmin=0, vmax=peak)
            for (bi, ci), value in np.ndenumerate(cells):
                dark = math.isfinite(value) and value < 0.6 * peak
                ax.text(ci, bi, _short(value), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
            ax.set_xticks(range(len(clients)), [value_text(c) for c in clients])
            ax.set_yticks(range(len(batches)), [value_text(b) for b in batches])
            ax.set_xlabel("clients")
            ax.set_ylabel("batch size")
            ax.set_title(title(keys, key), fontsize=10)
            fig.colorbar(im, ax=ax, label="samples/s", shrink=0.85)
        footnote(fig, [note])
        figures.append(fig)
    return figures


def energy(table: pd.DataFrame, palette: Palette) -> list[Figure]:
    """Energy per sample against throughput, a point per configuration."""
    data = with_roles(table)
    rows = data[data["energy_j_per_sample_mean"].notna() & data["samples_per_s_mean"].notna()]
    figures = []
    for fig, axes, page, note in paged_grids(
            facets(rows, ["model"]), "Energy per sample vs throughput (a point per configuration)", width=5.5):
        shown: list[Any] = []
        for ax, (key, group) in zip(axes, page):
            for servers, pts in group.groupby("servers", sort=False):
                ax.scatter(pts["samples_per_s_mean"], pts["energy_j_per_sample_mean"],
                           color=palette(servers), s=25)
                shown.append(servers)
            ax.set_ylim(bottom=0)
            ax.set_xlim(left=0)
            style_axes(ax, title(["model"], key), "throughput (samples/s)", "energy per sample (J)")
        palette.legend(fig, shown)
        footnote(fig, [note])
        figures.append(fig)
    return figures

