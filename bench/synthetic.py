"""The `analyze` part: a synthetic sweep of raw request records (made once, reused),
and the time analysis.records.aggregate_records takes over it."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from osmi_ee.bench.common import Sizes, run_worker, say

SYNTH_VERSION = 1  # bump when the synthetic data's layout changes: old data is rebuilt
SYNTH_AXES = {  # 3 x 4 x 8 x 8 x 5 = 3,840 runs
    "model": ["small_lstm", "medium_cnn", "large_tcnn"],
    "servers": [1, 2, 4, 8],
    "clients": [1, 2, 4, 8, 16, 32, 64, 128],
    "batch": [1, 2, 4, 8, 16, 32, 64, 128],
    "repeat": [1, 2, 3, 4, 5],
}


def synth_ids(runs: int | None) -> list[tuple[str, dict[str, Any]]]:
    keys = list(SYNTH_AXES)
    out = []
    for values in itertools.product(*SYNTH_AXES.values()):
        params = dict(zip(keys, values))
        params.update(gpu="cpu", scenario="closed", rate=None)
        eid = (f"{params['model']}-s{params['servers']}-c{params['clients']}-b{params['batch']}"
               f"-cpu-r{params['repeat']}-synth")
        out.append((eid, params))
    return out if runs is None else out[:runs]
def _synth_write(root: str, chunk: list[tuple[int, str, dict[str, Any]]], records: int) -> int:
    """Writes the record file and summary of some synthetic runs, as osmi-client and
    the runner would (Records.write_parquet: the client's own columns and types)."""
    import numpy as np

    from osmi_ee.osmi.client import Records
    from osmi_ee.osmi.schema import MEASURED, SUMMARY_SCHEMA, WARMUP

    for index, eid, params in chunk:
        rng = np.random.default_rng(index)
        results = Path(root) / eid / "results"
        results.mkdir(parents=True, exist_ok=True)
        warm = min(64, records // 8)
        rec = Records(capacity=records)
        rec.size = records
        rec.phase[:] = MEASURED
        rec.phase[:warm] = WARMUP
        rec.latency_ns[:] = (rng.lognormal(np.log(2e6), 0.35, records)).astype(np.int64)
        rec.start_ns[:] = 1_700_000_000_000_000_000 + index * 10**12 + np.cumsum(rec.latency_ns)
        failed = rng.random(records) < 0.001
        rec.code[failed] = 14  # UNAVAILABLE, now and then
        rec.write_parquet(results / "requests-client0.parquet", 0)
        measured = rec.phase == MEASURED
        summary = {"schema": SUMMARY_SCHEMA, "experiment_id": eid, "params": params,
                   "valid": not bool((failed & measured).any()),
                   "requests": {"sent": int(measured.sum()), "ok": int((measured & ~failed).sum()),
                                "failed": int((measured & failed).sum())}}
        (results / "summary.json").write_text(json.dumps(summary) + "\n")
    return len(chunk)


def synthetic_sweep(root: Path, runs: int | None, records: int) -> tuple[Path, bool]:
    """The synthetic sweep under `root`, made once (reused while its marker matches).
    Returns (sweep dir, reused)."""
    from concurrent.futures import ProcessPoolExecutor

    from osmi_ee.ee.paths import write_json

    entries = synth_ids(runs)
    marker = root / "bench-data.json"
    spec = {"version": SYNTH_VERSION, "runs": len(entries), "records_per_run": records}
    try:
        if json.loads(marker.read_text()) == spec and (root / "sweep.json").is_file():
            return root, True
    except (OSError, ValueError):
        pass
    if root.exists():
        if not marker.exists() and any(root.iterdir()):
            raise RuntimeError(f"{root} holds something other than the bench's synthetic data; "
                               "pass another --data-dir")
        shutil.rmtree(root)  # ours, made with other sizes (or half made): make it again
    root.mkdir(parents=True)
    write_json(marker, {**spec, "complete": False})  # ours from now on, even if cut short
    say(f"making the synthetic sweep: {len(entries):,} runs x {records:,} records in {root} (once)")
    t0 = time.perf_counter()
    indexed = [(i, eid, params) for i, (eid, params) in enumerate(entries)]
    step = max(1, min(64, len(indexed) // 4))
    chunks = [indexed[i:i + step] for i in range(0, len(indexed), step)]
    workers = min(2, os.cpu_count() or 1)
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = 0
            for n in pool.map(_synth_write, [str(root)] * len(chunks), chunks, [records] * len(chunks)):
                done += n
                if done % 640 < step:
                    say(f"  {done:,}/{len(indexed):,} runs written")
    else:
        for chunk in chunks:
            _synth_write(str(root), chunk, records)
    write_json(root / "sweep.json", {"name": "bench-synthetic", "axes": [*SYNTH_AXES, "gpu", "scenario", "rate"],
                                     "experiments": [eid for eid, _ in entries],
                                     "params": {eid: params for eid, params in entries}})
    write_json(marker, spec)
    say(f"synthetic sweep ready in {time.perf_counter() - t0:.0f} s")
    return root, False



def bench_analyze(sizes: Sizes, data_dir: Path) -> dict[str, Any]:
    sweep, reused = synthetic_sweep(data_dir, sizes.synth_runs, sizes.synth_records)
    workers = min(2, os.cpu_count() or 1)
    agg = run_worker(["--worker", "aggregate", "--sweep", str(sweep), "--workers", str(workers)], timeout_s=600)
    expected_runs = len(synth_ids(sizes.synth_runs))
    if agg["runs"] != expected_runs or agg["records"] != expected_runs * sizes.synth_records or agg["p99_nan"]:
        raise RuntimeError(f"aggregate_records gave {agg}; expected {expected_runs} runs")
    say(f"analyze: {agg['records']:,} records of {agg['runs']:,} runs in {agg['seconds']:.1f} s")
    return {"analyze_s_63M": agg["seconds"], "analyze_runs": agg["runs"], "analyze_records": agg["records"],
            "analyze_workers": workers, "analyze_data_reused": reused}
