"""`<sweep>/perf_analyzer.csv`: the per-configuration table in the layout of
Triton perf_analyzer's `-f` CSV (its `--verbose-csv` columns up to `Avg
latency`), so spreadsheets and scripts made for perf_analyzer read our sweeps.

One row per valid configuration (every repeat valid), in grid order; our
configuration's params follow perf_analyzer's columns, since one file holds
several models and deployments. Latencies are in microseconds, as
perf_analyzer writes them. A column we do not measure (the client/server time
breakdown, p95) stays empty, and so does a latency not reported for lack of
samples: nothing is invented.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from osmi_ee.ee.paths import SweepPaths, atomic_write

from .aggregate import key_columns

CSV_FILE = SweepPaths(Path(".")).perf_analyzer_csv.name  # for links
UNMEASURED = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input",
              "Server Compute Infer", "Server Compute Output", "Client Recv")
# perf_analyzer column -> our per-configuration column, in ms (None: not measured)
LATENCIES: tuple[tuple[str, str | None], ...] = (
    ("p50 latency", "latency_p50_ms_mean"),
    ("p90 latency", "latency_p90_ms_mean"),
    ("p95 latency", None),
    ("p99 latency", "latency_p99_ms_mean"),
    ("Avg latency", "latency_mean_ms_mean"),
)
HEADER: tuple[str, ...] = ("Concurrency", "Inferences/Second", *UNMEASURED, *(name for name, _ in LATENCIES))


def _us(ms: Any) -> int | None:
    """Milliseconds -> whole microseconds (perf_analyzer's unit); None when not reported."""
    value = pd.to_numeric(ms, errors="coerce")
    return None if pd.isna(value) or not math.isfinite(value) else int(round(float(value) * 1000))


def _row(config: pd.Series, keys: list[str]) -> dict[str, Any]:
    # Inferences/Second counts samples (requests × batch), as perf_analyzer's -b does.
    row: dict[str, Any] = {
        "Concurrency": None if pd.isna(config["concurrency"]) else int(config["concurrency"]),
        "Inferences/Second": round(float(config["samples_per_s_mean"]), 3),
        **{name: None for name in UNMEASURED},
    }
    for name, col in LATENCIES:
        row[name] = None if col is None else _us(config[col])
    row.update({k: config[k] for k in keys if k not in row})
    return row


def perf_analyzer_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of perf_analyzer.csv from the per-configuration table."""
    keys = key_columns(table)
    valid = table[table["all_valid"].astype(bool) & table["samples_per_s_mean"].notna()]
    columns = [*HEADER, *(k for k in keys if k not in HEADER)]
    frame = pd.DataFrame([_row(r, keys) for _, r in valid.iterrows()], columns=columns)
    for name in ("Concurrency", *(n for n, _ in LATENCIES)):
        frame[name] = frame[name].astype("Int64")  # whole numbers, empty when absent
    return frame


def write_perf_analyzer(table: pd.DataFrame, sweep_dir: Path | str) -> Path:
    path = SweepPaths(Path(sweep_dir)).perf_analyzer_csv
    frame = perf_analyzer_table(table)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path
