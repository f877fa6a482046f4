"""The figures of one analysis, built once: which builder draws what, for which
report section. `plots/` and the HTML report both take their images from
`build_charts`, so a chart looks the same in both places.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import distribution_charts as dist
from . import efficiency_charts as eff
from . import load_charts as load
from .panels import Palette, message_figure, with_roles

NO_VALID = "no valid runs"


@dataclass
class Chart:
    stem: str     # file name stem: plots/<stem>.png, report/fig-<stem>.png (page i > 1: -<i>)
    section: str  # the report section it belongs to
    title: str
    figures: list[Figure]
    message: str = ""  # nothing to draw: why (then `figures` holds one message figure)
    pngs: list[Path] = field(default_factory=list)  # where plots/ saved each page, if it did


@dataclass(frozen=True)
class _Spec:
    stem: str
    section: str
    title: str
    build: Callable[[], list[Figure]]
    always: bool = False  # plots/ always has it: a message figure when there is nothing to draw
    empty: str = NO_VALID


def _specs(runs: pd.DataFrame, table: pd.DataFrame, latencies: Mapping[str, np.ndarray] | None,
           palette: Palette) -> list[_Spec]:
    specs = [
        _Spec("latency_vs_throughput", "latency-throughput", "Latency vs throughput",
              lambda: load.latency_vs_throughput(table, palette), always=True,
              empty="no valid closed-loop runs with a known concurrency (clients × streams)"),
        _Spec("throughput_vs_clients", "throughput", "Throughput vs clients",
              lambda: load.throughput_vs_clients(table, palette), always=True,
              empty="no valid closed-loop runs"),
        _Spec("throughput_vs_rate", "throughput", "Open loop: achieved vs offered rate",
              lambda: load.throughput_vs_rate(table, palette)),
        _Spec("throughput_vs_batch", "throughput", "Throughput vs batch size",
              lambda: load.throughput_vs_batch(table, palette), always=True,
              empty="no valid closed-loop runs"),
        _Spec("scaling", "scaling", "Scaling efficiency", lambda: eff.scaling(table)),
        _Spec("latency_vs_clients", "latency", "Latency vs clients",
              lambda: load.latency_vs_clients(table, palette), always=True,
              empty="no valid closed-loop runs"),
        _Spec("latency_vs_rate", "latency", "Open loop: latency vs offered rate",
              lambda: load.latency_vs_rate(table, palette)),
        _Spec("heatmap", "heatmap", "Throughput over batch × clients", lambda: eff.heatmap(table)),
        _Spec("backend_shares", "backends", "Per-backend share of requests",
              lambda: dist.backend_shares(runs, palette), always=True,
              empty="no runs with more than one server"),
        _Spec("energy", "resources", "Energy per sample", lambda: eff.energy(table, palette)),
    ]
    if latencies is not None:
        specs.insert(7, _Spec("latency_cdf", "cdf", "Latency distribution",
                              lambda: dist.latency_distribution(runs, latencies, palette)))
    return specs


def build_charts(runs: pd.DataFrame, table: pd.DataFrame,
                 latencies: Mapping[str, np.ndarray] | None = None) -> list[Chart]:
    """Every chart with something to draw, plus the core ones (a message figure
    when empty, so the files `make analyze` writes do not depend on how the sweep
    went). `runs`: the dataset; `table`: its aggregate; `latencies`: measured ok
    latencies (ms) per experiment id, for the CDF (None: no CDF)."""
    runs = with_roles(runs)
    palette = Palette(runs["servers"])
    has_valid = bool((runs["valid"].astype(bool) & runs["samples_per_s"].notna()).any())
    charts = []
    for spec in _specs(runs, table, latencies, palette):
        figures = spec.build()
        if figures:
            charts.append(Chart(spec.stem, spec.section, spec.title, figures))
        elif spec.always:
            why = spec.empty if has_valid or spec.stem == "backend_shares" else NO_VALID
            charts.append(Chart(spec.stem, spec.section, spec.title,
                                [message_figure(spec.title, why)], message=why))
    return charts
