"""The report's tables as plain data (headers, rows of text cells) for the
template to render: the counts, the recommendation, resources, invalid runs
and the configurations with their repeats. No HTML here: the template
escapes every cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .aggregate import SUMMARY_FILE
from .collect import STATUS_INVALID, STATUS_MISSING, STATUS_OK, STATUS_UNREADABLE
from .dataset import missing, param_columns
from .panels import value_text

MAX_TABLE_ROWS = 500  # repeats / resources tables; the CSV has them all
NOT_MEASURED = "not measured"

Cell = str | list[str]  # a list renders as a bulleted list (every reason of a run)


@dataclass
class Table:
    id: str
    headers: list[str]
    rows: list[list[Cell]]
    more: str = ""  # rows left out, and where they are
    notes: list[str] = field(default_factory=list)


def fmt(value: Any, spec: str = "{:,.1f}", absent: str = "–") -> str:
    if missing(value) or (isinstance(value, (float, np.floating)) and not math.isfinite(float(value))):
        return absent
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def num(value: Any) -> str:
    """Three significant-ish figures for speeds spanning 1 to 1e6."""
    if missing(value):
        return "–"
    v = float(value)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}"


def _label(row: pd.Series | dict[str, Any], cols: Sequence[str]) -> str:
    return ", ".join(f"{c}={value_text(row[c])}" for c in cols if not missing(row[c])) or "(single configuration)"


def counts(runs: pd.DataFrame, table: pd.DataFrame) -> Table:
    status = runs["status"].astype(str)
    rows = [["experiments", len(runs)], ["valid", int((status == STATUS_OK).sum())],
            ["invalid", int((status == STATUS_INVALID).sum())],
            ["unreadable result", int((status == STATUS_UNREADABLE).sum())],
            ["missing (job did not finish)", int((status == STATUS_MISSING).sum())],
            ["configurations (params but repeat)", len(table)]]
    unstable = int(runs["stable"].astype("boolean").eq(False).fillna(False).sum())
    if unstable:
        rows.append(["runs flagged unstable (measurement windows disagree)", unstable])
    return Table("counts", ["", "count"], [[k, str(v)] for k, v in rows])


def _choice_cells(choice: dict[str, Any] | None, cols: Sequence[str], shown: Sequence[str]) -> list[Cell]:
    if choice is None:
        return ["–", "–", "–", "–"]
    config = choice["config"]
    label = ", ".join(f"{c}={value_text(config.get(c))}" for c in shown
                      if config.get(c) is not None) or "(single configuration)"
    lo, hi = choice["samples_per_s_ci95"]
    speed = num(choice["samples_per_s"])
    if lo is not None:
        speed += f" (95% CI {num(lo)} – {num(hi)})"
    speed += f", n={choice['n']}"
    return [label, speed, fmt(choice["latency_p99_ms_max"], "{:,.2f}"),
            fmt(choice["cost_per_million_samples"], "{:,.4g}")]


def recommendation(rec: dict[Any, dict[str, Any]], cols: Sequence[str], varied: Sequence[str]) -> Table:
    shown = [c for c in cols if c in varied and c != "model"] or [c for c in cols if c != "model"]
    rows: list[list[Cell]] = []
    for model, entry in rec.items():
        rows.append([value_text(model), fmt(entry["slo_p99_ms"], "{:,.2f}"),
                     f"{entry['meeting_slo']} of {entry['eligible']}", "fastest",
                     *_choice_cells(entry["fastest"], cols, shown)])
        for tie in entry.get("tied", []):
            rows.append(["", "", "", "tie (intervals overlap)", *_choice_cells(tie, cols, shown)])
        if entry["cheapest"] is not None:
            cheap = _choice_cells(entry["cheapest"], cols, shown)
        elif entry["fastest"] is None:
            cheap = ["–", "–", "–", "–"]
        else:
            cheap = ["no price: the profile has no price_per_gpu_hour for these GPU types", "–", "–", "–"]
        rows.append(["", "", "", "cheapest", *cheap])
    return Table("recommendation", ["model", "SLO p99 ms", "meeting SLO", "pick", "configuration",
                                    "samples/s", "worst p99 ms", "cost / 1M samples"], rows)


TELEMETRY = ("server_cpu_percent_mean", "server_rss_mib_max", "gpu_util_percent_mean",
             "gpu_power_w_mean", "energy_j_per_sample_mean", "client_cpu_us_per_request_mean")


def resources(table: pd.DataFrame, cols: Sequence[str]) -> Table | None:
    """Rows with anything measured; None when nothing was."""
    have = [c for c in TELEMETRY if c in table.columns and table[c].notna().any()]
    if not have:
        return None
    rows_df = table[table[have].notna().any(axis=1)]
    headers = [*cols, "samples/s", "server CPU (% of one core, mean)", "server RSS MiB (max)",
               "GPU util % (mean)", "GPU power W (mean per GPU)", "energy J/sample",
               "client CPU µs/request"]
    rows: list[list[Cell]] = []
    for _, r in rows_df.head(MAX_TABLE_ROWS).iterrows():
        rows.append([*(value_text(r[c]) for c in cols), num(r["samples_per_s_mean"]),
                     fmt(r["server_cpu_percent_mean"], "{:.1f}", NOT_MEASURED),
                     fmt(r["server_rss_mib_max"], "{:,.0f}", NOT_MEASURED),
                     fmt(r["gpu_util_percent_mean"], "{:.1f}", NOT_MEASURED),
                     fmt(r["gpu_power_w_mean"], "{:.1f}", NOT_MEASURED),
                     fmt(r["energy_j_per_sample_mean"], "{:.4g}", NOT_MEASURED),
                     fmt(r["client_cpu_us_per_request_mean"], "{:,.0f}", NOT_MEASURED)])
    return Table("resources", headers, rows, more=_more(len(rows_df), "configurations"))


_BATCHING_CELLS = (("batching_max_batch_size", "max batch", "{:,.0f}"),
                   ("batching_timeout_us", "timeout µs", "{:,.0f}"),
                   ("batching_threads", "batch threads", "{:,.0f}"),
                   ("server_batches", "server batches", "{:,.0f}"),
                   ("server_batch_size_mean", "mean batch (samples)", "{:,.2f}"),
                   ("server_batch_size_p50", "p50 batch", "{:,.0f}"),
                   ("server_batch_size_max", "max batch run", "{:,.0f}"))


def batching(runs: pd.DataFrame) -> Table | None:
    """Each run's server-side batching setting, its speed and the batch sizes the servers
    reported; None when the sweep has no batching axis."""
    if "batching" not in runs.columns:
        return None
    cols = param_columns(runs)
    headers = [*cols, "samples/s", *(title for _, title, _ in _BATCHING_CELLS)]
    rows: list[list[Cell]] = []
    for _, r in runs.head(MAX_TABLE_ROWS).iterrows():
        rows.append([*(value_text(r[c]) for c in cols), num(r["samples_per_s"]),
                     *(fmt(r[name], spec) for name, _, spec in _BATCHING_CELLS)])
    return Table("batching", headers, rows, more=_more(len(runs), "runs"))


def _more(total: int, what: str) -> str:
    extra = total - MAX_TABLE_ROWS
    return f"{extra} more {what} in {SUMMARY_FILE}." if extra > 0 else ""


def invalid(runs: pd.DataFrame) -> Table | None:
    bad = runs[runs["status"].astype(str) != STATUS_OK]
    if bad.empty:
        return None
    params = param_columns(runs)
    rows: list[list[Cell]] = []
    for _, r in bad.iterrows():
        reasons = [p for p in str(r["reason"]).split("; ") if p] or ["(no reason given)"]
        rows.append([str(r["experiment_id"]), _label(r, params), str(r["status"]), reasons])
    return Table("invalid-runs", ["experiment", "configuration", "status", "reasons"], rows)


def repeats(table: pd.DataFrame, cols: Sequence[str]) -> Table | None:
    if table.empty:
        return None
    priced = bool(table["cost_per_million_samples"].notna().any())
    headers = [*cols, "valid runs", "invalid", "missing", "samples/s (mean)", "95% CI",
               "p50 ms", "p99 ms", "all valid"]
    if priced:
        headers.insert(-1, "cost / 1M samples")
    rows: list[list[Cell]] = []
    for _, r in table.head(MAX_TABLE_ROWS).iterrows():
        ci = ("–" if missing(r["samples_per_s_ci95_low"]) else
              f"{num(r['samples_per_s_ci95_low'])} – {num(r['samples_per_s_ci95_high'])} "
              f"(± {num(r['samples_per_s_ci95_half'])})")
        flag = "yes" if r["all_valid"] else "no"
        if r["n_unstable"]:
            flag += f" ({int(r['n_unstable'])} unstable)"
        row: list[Cell] = [*(value_text(r[c]) for c in cols), str(int(r["n"])), str(int(r["n_invalid"])),
                           str(int(r["n_missing"])), num(r["samples_per_s_mean"]), ci,
                           fmt(r["latency_p50_ms_mean"], "{:,.2f}"), fmt(r["latency_p99_ms_mean"], "{:,.2f}"),
                           flag]
        if priced:
            row.insert(-1, fmt(r["cost_per_million_samples"], "{:,.4g}"))
        rows.append(row)
    return Table("repeats", headers, rows, more=_more(len(table), "configurations"))
