"""Bench parts that run whole experiments through the real sweep machinery.

- `load`: 64 clients against 2 shards for 60 s: is every request accounted for at
  all three counting points (clients, balancer, each shard)?
- `repro`: the same small grid swept twice, side by side (`osmi-ee compare`): a
  point VALID in both runs must have overlapping intervals.

Both write grids, generate and run them with `osmi-ee` exactly as a user would, and
read the summaries; nothing here measures by itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

LOAD_CLIENTS, LOAD_SERVERS, LOAD_SECONDS = 64, 2, 60.0  # common.Sizes: fewer with --quick
REPRO_AXES = {"model": ["small_lstm"], "servers": [1], "clients": [1, 4], "batch": [1, 16]}


def _sweep(grid: dict[str, Any], work: Path, name: str) -> tuple[int, Path]:
    """Generate and run `grid` into work/<name>; returns (exit code, sweep dir)."""
    from osmi_ee.ee import cli

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    if cli.main(["generate", "--grid", str(path), "--out", str(out)]) != 0:
        raise RuntimeError(f"generate failed for {path}")
    return cli.main(["run", "--grid", str(path), "--out", str(out)]), out


def _summaries(out: Path) -> list[dict[str, Any]]:
    from osmi_ee.ee.paths import SweepPaths

    sweep = SweepPaths(out)
    return [json.loads(sweep.experiment(i).summary.read_text()) for i in sweep.experiment_ids()]


def bench_load(models_dir: Path, work: Path, *, clients: int = LOAD_CLIENTS,
               seconds: float = LOAD_SECONDS) -> dict[str, Any]:
    """One closed-loop run of `clients` clients over LOAD_SERVERS shards for `seconds`."""
    grid = {
        "name": "bench-load",
        "experiment": {"model": ["small_lstm"], "servers": [LOAD_SERVERS], "clients": [clients], "batch": [1]},
        # One window of the whole duration: this checks the accounting under load, not
        # the stability of 64 processes sharing 2 cores.
        "measure": {"warmup_requests": 2, "duration_s": seconds, "stability_windows": 1,
                    "stability_max_windows": 1, "stability_max_s": seconds + 30, "timeout_s": 60},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 300},
        "job": {"time": "00:30:00"},
    }
    rc, out = _sweep(grid, work, "load")
    (s,) = _summaries(out)
    acc = s.get("accounting") or {}
    served = acc.get("server_served") or {}
    sent = s["requests"]["sent"]
    accounted = (sent == s["requests"]["ok"] + s["requests"]["failed"]
                 and acc.get("balancer_forwarded") == sent
                 and all(v is not None for v in served.values())
                 and sum(v for v in served.values() if v is not None) == sent
                 and all(c.get("sent") is not None for c in s["clients"])
                 and sum(c["sent"] for c in s["clients"]) == sent)
    return {"load_clients": clients, "load_servers": LOAD_SERVERS, "load_window_s": s["window_s"],
            "load_sent": sent, "load_ok": s["requests"]["ok"], "load_failed": s["requests"]["failed"],
            "load_balancer_forwarded": acc.get("balancer_forwarded"), "load_shard_served": served,
            "load_every_request_accounted": bool(accounted), "load_valid": s["valid"],
            "load_samples_per_s": s["throughput"]["samples_per_s"],
            "load_samples_per_s_ci95": s["throughput"]["samples_per_s_ci95"],
            "load_reasons": s["reasons"], "load_exit_code": rc}


def bench_repro(models_dir: Path, work: Path, *, duration_s: float = 6.0) -> dict[str, Any]:
    """The same grid twice, then compare: how many points disagree (VALID in both, disjoint
    intervals)? The target is none."""
    from osmi_ee.analysis.compare import compare_sweeps, counts

    grid = {
        "name": "bench-repro",
        "experiment": dict(REPRO_AXES),
        "measure": {"warmup_requests": 5, "duration_s": duration_s, "stability_max_s": 40, "timeout_s": 30},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1},
    }
    _sweep(grid, work, "repro-a")
    _sweep(grid, work, "repro-b")
    points = compare_sweeps(work / "repro-a", work / "repro-b")
    return {"repro_counts": counts(points),
            "repro_points": [{"point": p.point, "verdict": p.verdict, "a": p.a_samples_per_s, "a_ci95": p.a_ci95,
                              "b": p.b_samples_per_s, "b_ci95": p.b_ci95} for p in points]}
