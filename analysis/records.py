"""Sweep directory -> per-run figures recomputed from every raw request record.

`collect` reads each run's `summary.json`, i.e. the runner's own figures.
`aggregate_records` recomputes the request counts and latency percentiles of
every run from its clients' raw records (`results/requests-client<k>.parquet`,
as written by osmi-client), so a dataset can be checked against, or rebuilt
from, the raw data.

Per run: `sent` = measured requests, `ok` = those with code 0, `failed` =
sent - ok; latency p50/p90/p99 (ms, numpy's default linear interpolation, as
osmi_ee.osmi.metrics) over measured ok requests only. Warm-up records are
never counted.

Built for size: tens of millions of records in seconds. Only the three
columns needed are read (phase, latency_ns, code), one run's files at a time,
percentiles come from one `np.percentile` call per run (a single partial
sort), and runs are spread over a small process pool.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .collect import load_sweep

MEASURED = 1  # osmi_ee.osmi.client.MEASURED (not imported: it pulls in gRPC)
PERCENTILES = (50, 90, 99)
COLUMNS = ("phase", "latency_ns", "code")
RESULT_COLUMNS = ("experiment_id", "client_files", "records", "sent", "ok", "failed",
                  "latency_p50_ms", "latency_p90_ms", "latency_p99_ms")
RECORDS_GLOB = "requests-client*.parquet"


def run_figures(results_dir: Path | str) -> dict[str, Any]:
    """Counts and latency percentiles of one run from its clients' record files.

    A run without record files gets zero counts and NaN percentiles; one
    without a measured ok request gets NaN percentiles.
    """
    import pyarrow.parquet as pq

    files = sorted(Path(results_dir).glob(RECORDS_GLOB))
    phases, latencies, codes = [], [], []
    for path in files:
        table = pq.read_table(path, columns=list(COLUMNS), use_threads=False, memory_map=True)
        phases.append(table.column("phase").to_numpy())
        latencies.append(table.column("latency_ns").to_numpy())
        codes.append(table.column("code").to_numpy())
    row: dict[str, Any] = {"client_files": len(files)}
    if not files:
        row.update(records=0, sent=0, ok=0, failed=0,
                   **{f"latency_p{p}_ms": math.nan for p in PERCENTILES})
        return row
    phase = phases[0] if len(phases) == 1 else np.concatenate(phases)
    latency = latencies[0] if len(latencies) == 1 else np.concatenate(latencies)
    code = codes[0] if len(codes) == 1 else np.concatenate(codes)
    measured = phase == MEASURED
    good = measured & (code == 0)
    sent, ok = int(np.count_nonzero(measured)), int(np.count_nonzero(good))
    row.update(records=int(phase.size), sent=sent, ok=ok, failed=sent - ok)
    if ok:
        # ms first, as metrics.latency_stats_ms does: the same floats, the same answer
        values = np.percentile(latency[good] / 1e6, PERCENTILES)
    else:
        values = [math.nan] * len(PERCENTILES)
    row.update({f"latency_p{p}_ms": float(v) for p, v in zip(PERCENTILES, values)})
    return row


def _chunk(sweep_dir: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    return [{"experiment_id": eid, **run_figures(Path(sweep_dir) / eid / "results")} for eid in ids]


def aggregate_records(sweep_dir: Path | str, workers: int | None = None) -> pd.DataFrame:
    """One row per experiment of `<sweep_dir>/sweep.json` (in its order): the
    request counts and latency percentiles recomputed from the raw records.

    `workers`: processes (default: up to 2, at most the CPU count); 1 runs here.
    Raises collect.SweepError when the sweep directory or sweep.json is unusable.
    """
    sweep_dir = Path(sweep_dir)
    ids = load_sweep(sweep_dir)["experiments"]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, len(ids)))
    if workers == 1:
        rows = _chunk(str(sweep_dir), ids)
    else:
        # Contiguous slices, a few per worker: little pickling, balanced enough.
        n = workers * 4
        size = math.ceil(len(ids) / n)
        slices = [ids[i:i + size] for i in range(0, len(ids), size)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = [row for part in pool.map(_chunk, [str(sweep_dir)] * len(slices), slices) for row in part]
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    for col in ("client_files", "records", "sent", "ok", "failed"):
        frame[col] = frame[col].astype("int64")
    for p in PERCENTILES:
        frame[f"latency_p{p}_ms"] = frame[f"latency_p{p}_ms"].astype("float64")
    return frame
