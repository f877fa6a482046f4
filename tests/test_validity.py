"""VALID means true: each run judged on its own files, requests seen at both ends.

Real servers, HAProxy and clients; what a test fakes is only the leftovers of an
"earlier attempt" that it plants in the experiment folder before running.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.paths import ExperimentPaths, SweepPaths
from osmi_ee.osmi import haproxy
from osmi_ee.osmi.procs import ProcessGroup, free_port
from osmi_ee.osmi.run import ExperimentRun

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_haproxy")]

MARKER = "OLD-ATTEMPT-MARKER"


def grid(models_dir: Path, **measure) -> dict:
    return {
        "name": "validity",
        "experiment": {"model": ["small_lstm"], "servers": [1], "clients": [2], "batch": [2]},
        "measure": {"warmup_requests": 2, "requests": 60, "timeout_s": 30, "stability_tolerance": 0.5,
                    **measure},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 120},
    }


def generated(write_grid, tmp_path: Path, data: dict) -> tuple[Path, Path, ExperimentPaths]:
    path = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    return path, out, sweep.experiment(sweep.experiment_ids()[0])


def plant_old_attempt(exp: ExperimentPaths, clients: range) -> None:
    """What a finished, valid earlier attempt leaves: 5,000 fast requests per client."""
    exp.results.mkdir(parents=True, exist_ok=True)
    exp.logs.mkdir(parents=True, exist_ok=True)
    n = 5000
    for k in clients:
        pd.DataFrame({"client": np.full(n, k, np.int32), "seq": np.arange(n, dtype=np.int32),
                      "phase": np.ones(n, np.int8), "start_ns": np.arange(n, dtype=np.int64) * 10**6,
                      "latency_ns": np.full(n, 7_100_000, np.int64), "code": np.zeros(n, np.int16),
                      "delay_ns": np.zeros(n, np.int64)}).to_parquet(exp.client_records(k), index=False)
        exp.client_summary(k).write_text(json.dumps({"client": k, "sent": n, "ok": n, "failed": 0, "errors": {}}))
    exp.summary.write_text(json.dumps({"schema": "osmi-ee/summary/1", "valid": True, "marker": MARKER}))
    exp.server_log(0).write_text(f"{MARKER}: the old attempt's server log\n")
    exp.status.write_text("valid\n")


def leftover_processes(root: Path) -> str:
    return subprocess.run(["pgrep", "-af", str(root)], capture_output=True, text=True).stdout.strip()


def test_rerun_failing_before_clients_reports_nothing_of_the_old_attempt(write_grid, tmp_path):
    # The model folder is empty: the new attempt fails before any server or client starts.
    path, out, exp = generated(write_grid, tmp_path, grid(tmp_path / "no-models"))
    plant_old_attempt(exp, range(2))
    assert cli.main(["run", "--grid", str(path), "--out", str(out), "--force"]) != 0

    summary = json.loads(exp.summary.read_text())
    assert summary["valid"] is False and summary["attempt"]["number"] == 2
    assert summary["requests"] == {"sent": 0, "ok": 0, "failed": 0}
    assert summary["latency_ms"]["p50"] is None and summary["throughput"]["samples_per_s"] is None
    assert any("no exported model" in r for r in summary["reasons"])
    assert not any(MARKER in r for r in summary["reasons"])
    assert not exp.server_log(0).exists() or MARKER not in exp.server_log(0).read_text()
    assert exp.read_status() == "failed"
    # The old attempt is kept for audit, whole.
    old = exp.attempt(1)
    assert json.loads((old / "results" / "summary.json").read_text())["marker"] == MARKER
    assert (old / "status").read_text().strip() == "valid"
    assert MARKER in (old / "logs" / "server-0.log").read_text()


def test_killed_clients_earlier_records_are_not_counted(write_grid, during_window, tmp_path, models_dir,
                                                        monkeypatch):
    monkeypatch.setenv("OSMI_EE_TEST_STREAMS_PER_PROCESS", "1")  # 2 streams, 2 processes: one to kill
    path, out, exp = generated(write_grid, tmp_path,
                               grid(models_dir, duration_s=6, requests=None, stability_windows=1,
                                    stability_max_windows=1, min_requests=1))
    plant_old_attempt(exp, range(2))

    def kill_client_1(exp: ExperimentPaths) -> bool:
        pids = subprocess.run(["pgrep", "-f", "--", f"{exp.root.name}/config.yaml --client-id=1 "],
                              capture_output=True, text=True).stdout.split()
        if pids:
            subprocess.run(["kill", "-9", *pids])
        return bool(pids)

    with during_window(exp, kill_client_1, delay_s=1.0) as hit:
        rc = cli.main(["run", "--grid", str(path), "--out", str(out), "--force"])
    assert hit == [True], "client 1 was not found to kill"
    assert rc != 0
    s = json.loads(exp.summary.read_text())
    assert not s["valid"] and s["throughput"]["samples_per_s"] is None
    assert any("client 1 exited with code -9" in r for r in s["reasons"]), s["reasons"]
    # Only client 0's requests of this attempt: none of the 10,000 planted ones.
    client0 = next(c for c in s["clients"] if c["client"] == 0)
    assert 0 < s["requests"]["sent"] == client0["sent"] < 5000
    assert not exp.client_records(1).exists()
    assert s["attempt"]["number"] == 2
    assert not leftover_processes(out)


def foreign_balancer(group: ProcessGroup, tmp_path: Path, models_dir: Path) -> int:
    """Another sweep's shard behind another HAProxy that shares its port (SO_REUSEPORT,
    HAProxy's default); returns that port."""
    shard_port, port, stats = free_port(), free_port(), free_port()
    (tmp_path / "foreign").mkdir()
    config = tmp_path / "foreign" / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "small_lstm" base_path: '
                      f'"{models_dir}/small_lstm" model_platform: "tensorflow" }} }}\n')
    import sys

    shard = group.start("foreign shard", [sys.executable, "-m", "osmi_ee.osmi.model_server",
                                          f"--port={shard_port}", f"--model_config_file={config}"],
                        tmp_path / "foreign" / "shard.log")
    cfg = haproxy.render_config(port, stats, [haproxy.Backend("f0", "127.0.0.1", shard_port)], timeout_s=30)
    cfg = "\n".join(line for line in cfg.splitlines() if "noreuseport" not in line) + "\n"
    (tmp_path / "foreign" / "haproxy.cfg").write_text(cfg)
    balancer = group.start("foreign haproxy", ["haproxy", "-db", "-f", str(tmp_path / "foreign" / "haproxy.cfg")],
                           tmp_path / "foreign" / "haproxy.log")
    haproxy.wait_all_up(stats, ["f0"], timeout_s=120, alive=lambda: shard.alive() and balancer.alive())
    return port


def run_in_process(exp: ExperimentPaths, balancer_port: int) -> dict:
    run = ExperimentRun(exp.config)
    run.balancer_port = balancer_port
    run.execute()
    return json.loads(exp.summary.read_text())


def test_a_foreign_balancer_on_our_port_makes_the_run_not_valid(write_grid, tmp_path, models_dir):
    group = ProcessGroup()
    try:
        port = foreign_balancer(group, tmp_path, models_dir)
        _, out, exp = generated(write_grid, tmp_path, grid(models_dir))
        s = run_in_process(exp, port)
    finally:
        group.stop()
    assert not s["valid"] and s["throughput"]["samples_per_s"] is None
    assert any(f"port {port}" in r and "in use" in r for r in s["reasons"]), s["reasons"]
    assert not leftover_processes(out)


def test_a_taken_port_is_a_setup_error_that_names_it(write_grid, tmp_path, models_dir):
    import socket

    with socket.socket() as sock:  # a plain listener, no SO_REUSEPORT
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        _, out, exp = generated(write_grid, tmp_path, grid(models_dir))
        s = run_in_process(exp, port)
    assert not s["valid"] and exp.read_status() == "failed"
    assert any(f"port {port} is in use" in r for r in s["reasons"]), s["reasons"]
    assert not leftover_processes(out)
