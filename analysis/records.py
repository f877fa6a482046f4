"""Sweep directory -> per-run figures recomputed from every raw request record.

`collect` reads each run's `summary.json`, i.e. the runner's own figures.
`aggregate_records` recomputes the request counts and latency percentiles of
every run from its clients' raw records (`results/requests-client<k>.parquet`,
as written by osmi-client), so a dataset can be checked against, or rebuilt
from, the raw data.

Per run: `sent` = measured requests, `ok` = those with code 0, `failed` =
sent - ok; latency p50/p90/p99 by osmi_ee.osmi.metrics.latency_stats_ms itself
(the same interpolation and the same sample rule: NaN where too few requests lie
beyond the quantile) over measured ok requests only. Warm-up records are never
counted.

Built for size: tens of millions of records in seconds. Only the three
columns needed are read (phase, latency_ns, code), one run's files at a time,
percentiles come from one `np.percentile` call per run (a single partial
sort), and runs are spread over a small process pool.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osmi_ee.ee.paths import ExperimentPaths
from osmi_ee.osmi.metrics import latency_stats_ms
from osmi_ee.osmi.schema import MEASURED, RECORD_COLUMNS

from .collect import load_sweep

PERCENTILES = (50, 90, 99)
COLUMNS = ("phase", "latency_ns", "code")
assert set(COLUMNS) <= set(RECORD_COLUMNS)  # the client's record layout (osmi.schema)
RESULT_COLUMNS = ("experiment_id", "client_files", "records", "sent", "ok", "failed",
                  "latency_p50_ms", "latency_p90_ms", "latency_p99_ms")
MAX_SAMPLES = 200_000  # latencies kept per run for the distribution figures


def run_figures(results_dir: Path | str) -> dict[str, Any]:
    """Counts and latency percentiles of one run from its clients' record files.

    A run without record files gets zero counts and NaN percentiles; one
    without a measured ok request gets NaN percentiles.
    """
    files = ExperimentPaths(Path(results_dir).parent).all_client_records()
    phases, latencies, codes = [], [], []
    for path in files:
        phase, latency, code = _read(path)
        phases.append(phase)
        latencies.append(latency)
        codes.append(code)
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
    # The job's own definition, sample rule included: no p99 from fewer than 1,000 requests.
    stats = latency_stats_ms(latency[good])
    row.update({f"latency_p{p}_ms": math.nan if stats[f"p{p}"] is None else stats[f"p{p}"]
                for p in PERCENTILES})
    return row


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(COLUMNS), use_threads=False, memory_map=True)
    return tuple(table.column(c).to_numpy() for c in COLUMNS)  # type: ignore[return-value]


def ok_latencies_ms(results_dir: Path | str, max_samples: int = MAX_SAMPLES,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Latencies (ms) of one run's measured, successful requests, sampled down to
    `max_samples`; empty when no record file can be read (a broken one is skipped)."""
    chunks = []
    for path in ExperimentPaths(Path(results_dir).parent).all_client_records():
        try:
            phase, latency, code = _read(path)
        except Exception:  # noqa: BLE001 (one broken record file must not sink the figures)
            continue
        chunks.append(latency[(phase == MEASURED) & (code == 0)])
    if not chunks:
        return np.empty(0)
    values = np.concatenate(chunks).astype(float) / 1e6
    if values.size > max_samples:
        values = (rng or np.random.default_rng(0)).choice(values, max_samples, replace=False)
    return values


class LatencySamples(Mapping[str, np.ndarray]):
    """`ok_latencies_ms` by experiment id, read when a figure asks for one (a CDF
    draws a few runs a panel, not the whole sweep) and kept; one seeded generator,
    so the same sweep gives the same figures."""

    def __init__(self, sweep_dir: Path | str, experiment_ids: Sequence[str]) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.ids = list(experiment_ids)
        self.known = set(self.ids)
        self.cache: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(0)

    def __getitem__(self, experiment_id: str) -> np.ndarray:
        if experiment_id not in self.known:
            raise KeyError(experiment_id)
        if experiment_id not in self.cache:
            results = ExperimentPaths(self.sweep_dir / experiment_id).results
            self.cache[experiment_id] = ok_latencies_ms(results, rng=self.rng)
        return self.cache[experiment_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


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
