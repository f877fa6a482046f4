"""Faults injected into a real run: each gives a verdict and a reason that names the
part and what happened, leaves no process behind, and loses no record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.paths import ExperimentPaths, SweepPaths

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_haproxy")]


def grid(models_dir: Path, servers: int = 2) -> dict:
    return {
        "name": "faults",
        "experiment": {"model": ["small_lstm"], "servers": [servers], "clients": [2], "batch": [2]},
        # 6 s windows, at most one: the fault lands inside the measured window.
        "measure": {"warmup_requests": 2, "duration_s": 6, "stability_windows": 1,
                    "stability_max_windows": 1, "min_requests": 1, "timeout_s": 4},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 120},
    }


def pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def run_with_fault(write_grid, during_window, tmp_path: Path, data: dict,
                   fault: Callable[[ExperimentPaths], bool]) -> tuple[int, Path, ExperimentPaths]:
    """Generate and run the grid; `fault(exp)` runs 1.5 s into the measured window and
    returns whether it found its target."""
    path = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    exp = sweep.experiment(sweep.experiment_ids()[0])
    with during_window(exp, fault) as hit:
        rc = cli.main(["run", "--grid", str(path), "--out", str(out)])
    assert hit == [True], "the fault found nothing to hit"
    return rc, out, exp


def no_process_left(root: Path) -> None:
    deadline = time.monotonic() + 10
    while pids_of(str(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pids_of(str(root)), subprocess.run(["pgrep", "-af", str(root)], capture_output=True,
                                                  text=True).stdout


def records_accounted(summary: dict) -> None:
    """Nothing lost: every client's own count is in the records the verdict read."""
    for c in summary["clients"]:
        if c.get("sent") is not None:
            assert c["sent"] == c["ok"] + c["failed"]
    assert summary["requests"]["sent"] == sum(c["sent"] for c in summary["clients"] if c.get("sent"))


def test_hung_shard_is_named(write_grid, during_window, tmp_path, models_dir):
    stopped: list[int] = []

    def stop_shard_1(exp: ExperimentPaths) -> bool:
        pids = pids_of(f"--rest_api_port=.*--model_config_file={exp.model_config}")
        if not pids:
            return False
        pid = sorted(pids)[-1]  # the shard started last
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
        return True

    try:
        rc, out, exp = run_with_fault(write_grid, during_window, tmp_path, grid(models_dir), stop_shard_1)
    finally:
        for pid in stopped:  # let a stopped process take its SIGKILL and go
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    s = json.loads(exp.summary.read_text())
    assert rc != 0 and not s["valid"] and s["throughput"]["samples_per_s"] is None
    assert any("stopped answering the balancer's health checks" in r and "server s" in r
               for r in s["reasons"]), s["reasons"]
    records_accounted(s)
    no_process_left(out)


def test_killed_balancer_is_named(write_grid, during_window, tmp_path, models_dir):
    def kill_haproxy(exp: ExperimentPaths) -> bool:
        pids = pids_of(f"haproxy -db -f {exp.haproxy_config}")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return bool(pids)

    rc, out, exp = run_with_fault(write_grid, during_window, tmp_path, grid(models_dir, servers=1), kill_haproxy)
    s = json.loads(exp.summary.read_text())
    assert rc != 0 and not s["valid"]
    assert any("the balancer (haproxy) exited" in r for r in s["reasons"]), s["reasons"]
    assert not any("internal error" in r for r in s["reasons"]), s["reasons"]
    records_accounted(s)
    no_process_left(out)


def test_killed_job_runner_leaves_nothing_and_is_not_valid(write_grid, during_window, tmp_path, models_dir):
    def kill_runner(exp: ExperimentPaths) -> bool:
        pids = pids_of("osmi_ee.osmi.run --config config.yaml")
        ours = [p for p in pids if Path(f"/proc/{p}/cwd").resolve() == exp.root.resolve()]
        for pid in ours:
            os.kill(pid, signal.SIGKILL)
        return bool(ours)

    rc, out, exp = run_with_fault(write_grid, during_window, tmp_path, grid(models_dir, servers=1), kill_runner)
    assert rc != 0
    # The runner could write no verdict: the experiment is not valid, and no shard,
    # balancer or client outlives it (each carries a death signal).
    assert exp.read_status() != "valid"
    no_process_left(out)
