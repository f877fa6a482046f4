"""`make submit` against a real single-node Slurm (.ci/slurm-up: slurmctld + slurmd,
2 fake GPUs). The fixture starts the cluster when it is not running (root
installs Debian's Slurm); in CI these tests never skip."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.paths import SweepPaths
from tests import slurm_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("require_haproxy")]


@pytest.fixture(scope="module")
def slurm_env():
    if not slurm_cluster.slurm_available() and os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("no Slurm here and not root to start one (.ci/slurm-up)")
    return slurm_cluster.ensure_cluster()


@pytest.fixture
def on_slurm(slurm_env, monkeypatch):
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    return slurm_env


def smoke_grid(models_dir: Path, **measure) -> dict:
    return {
        "name": "slurm-smoke",
        "profile": "localhost",
        "experiment": {"model": ["small_lstm"], "servers": [1, 2], "clients": [2], "batch": [4],
                       "gpu": ["fake"]},
        "measure": {"warmup_requests": 2, "requests": 60, "stability_tolerance": 0.5, **measure},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1},
        "job": {"time": "00:05:00"},
    }


def status_lines(grid: Path, out: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert cli.main(["status", "--grid", str(grid), "--out", str(out)]) == 0
    return capsys.readouterr().out.strip().splitlines()


def test_submit_status_analyze_on_real_slurm(on_slurm, write_grid, tmp_path, models_dir, capsys):
    grid = write_grid(smoke_grid(models_dir))
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    jobs = json.loads(sweep.jobs.read_text())
    ids = [v[-1] for v in jobs.values()]
    assert len(ids) == 2
    states = slurm_cluster.wait_for_jobs(ids, timeout_s=300, env=on_slurm)
    assert set(states.values()) == {"COMPLETED"}, states

    lines = status_lines(grid, out, capsys)
    assert lines[-1].startswith("total=2 valid=2 failed=0 invalid=0 cancelled=0 interrupted=0 "
                                "pending=0 running=0"), lines

    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        summary = json.loads(exp.summary.read_text())
        assert summary["valid"], summary["reasons"]
        env = json.loads(exp.env.read_text())
        assert env["slurm_env"]["SLURM_JOB_ID"] == jobs[experiment_id][-1]
        # One shard per allocated (fake) GPU, pinned with CUDA_VISIBLE_DEVICES.
        gpus = [s["gpu"] for s in env["shards"]]
        assert len(set(gpus)) == summary["params"]["servers"] and None not in gpus
        assert list(exp.logs.glob("slurm-*.out"))
        assert "progress=100" in next(exp.logs.glob("slurm-*.out")).read_text()

    # A second submit finds nothing to do: every experiment has a valid result.
    capsys.readouterr()
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    assert "submitted 0 job(s)" in capsys.readouterr().out

    assert cli.main(["analyze", "--grid", str(grid), "--out", str(out), "--no-plots"]) == 0
    dataset = pd.read_csv(sweep.dataset_csv)
    assert dataset["valid"].all() and len(dataset) == 2
    from osmi_ee.analysis.collect import collect

    assert list(dataset.columns) == list(collect(out).columns)


def test_scancel_stops_everything_and_records_failure(on_slurm, write_grid, tmp_path, models_dir, capsys):
    data = smoke_grid(models_dir, duration_s=120, requests=None)
    data["experiment"]["servers"] = [2]
    grid = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    exp = sweep.experiment(sweep.experiment_ids()[0])
    job_id = json.loads(sweep.jobs.read_text())[exp.root.name][-1]

    deadline = time.monotonic() + 180
    while not (exp.barrier / "go").exists():  # servers, balancer and clients all running
        assert time.monotonic() < deadline, "the job never reached its measured window"
        time.sleep(0.5)
    running = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert len(running) >= 5  # runner, 2 servers, haproxy, 2 clients (at least)

    subprocess.run(["scancel", job_id], check=True, env={**os.environ, **on_slurm})
    states = slurm_cluster.wait_for_jobs([job_id], timeout_s=120, env=on_slurm)
    assert states[job_id] == "CANCELLED"
    time.sleep(1)
    left = subprocess.run(["pgrep", "-af", str(out)], capture_output=True, text=True).stdout.strip()
    assert left == "", f"processes outlived the job:\n{left}"

    lines = status_lines(grid, out, capsys)
    assert lines[-1].startswith("total=1 valid=0 failed=0 invalid=0 cancelled=1 "), lines
    if exp.summary.exists():  # the runner had time to write its verdict before SIGKILL
        summary = json.loads(exp.summary.read_text())
        assert summary["valid"] is False
        assert summary["throughput"]["samples_per_s"] is None


def test_clients_launched_with_srun(on_slurm, write_grid, tmp_path, models_dir, capsys):
    """The multi-node client path (one srun step of M tasks), exercised on one node."""
    data = smoke_grid(models_dir)
    data["experiment"].update(servers=[1], clients=[3])
    data["job"]["clients_launcher"] = "srun"
    grid = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    (job_id,) = [v[-1] for v in json.loads(sweep.jobs.read_text()).values()]
    assert slurm_cluster.wait_for_jobs([job_id], timeout_s=300, env=on_slurm)[job_id] == "COMPLETED"
    exp = sweep.experiment(sweep.experiment_ids()[0])
    summary = json.loads(exp.summary.read_text())
    assert summary["valid"], summary["reasons"]
    assert [c["client"] for c in summary["clients"]] == [0, 1, 2]
    assert summary["requests"]["sent"] >= 3 * 60
    assert summary["requests"]["sent"] == sum(c["sent"] for c in summary["clients"])
    assert (exp.logs / "clients-srun.log").exists()
