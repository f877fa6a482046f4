"""`make submit` against a real Slurm (.ci/slurm-up: slurmctld + slurmd, fake GPUs):
the sweep goes as job arrays, one per resource shape. The fixture starts the cluster
when it is not running (root installs Debian's Slurm); in CI these tests never skip."""

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
        # One window, so no stability verdict: these tests are about the Slurm path, and the
        # 2 arrays run at once on the test cluster's nodes, which share this machine's 2 cores
        # (one CI run: the 1-shard run's windows fell 338 -> 260 -> 208 samples/s while the
        # 2-shard job started beside it; INVALID, exit 3, Slurm FAILED). Stability has its own tests.
        "measure": {"warmup_requests": 2, "requests": 60, "stability_windows": 1, **measure},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1},
        "job": {"time": "00:05:00"},
    }


def status_lines(grid: Path, out: Path, capsys) -> list[str]:
    capsys.readouterr()
    assert cli.main(["status", "--grid", str(grid), "--out", str(out)]) == 0
    return capsys.readouterr().out.strip().splitlines()


def scontrol_show(job_id: str, env: dict) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True).stdout


def test_submit_status_analyze_on_real_slurm(on_slurm, write_grid, tmp_path, models_dir, capsys):
    data = smoke_grid(models_dir)
    # 1 or 2 GPUs: 2 resource shapes, 2 arrays (their throttle and many tasks: test_retries_...)
    data["job"].update(max_running=1, collect=True)
    grid = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 experiment(s) in 2 job array(s)" in printed, printed
    sweep = SweepPaths(out)
    jobs = json.loads(sweep.jobs.read_text())
    ids = [v[-1] for v in jobs.values()]
    arrays = sorted({i.split("_")[0] for i in ids})
    assert len(ids) == 2 and len(arrays) == 2 and all("_" in i for i in ids)  # "<array>_<index>"
    for array in arrays:  # job.max_running is the array's throttle
        assert "ArrayTaskThrottle=1 " in scontrol_show(array, on_slurm)
    (collect_job,) = [s["job_id"] for s in json.loads(sweep.submissions.read_text()) if s["kind"] == "collect"]
    assert f"afterany:{arrays[0]}" in scontrol_show(collect_job, on_slurm).replace("(unfulfilled)", "")
    lines = status_lines(grid, out, capsys)  # tasks map back to their experiments while queued
    assert {line.split()[-1] for line in lines[:-1]} == set(ids), lines
    states = slurm_cluster.wait_for_jobs(ids, timeout_s=600, env=on_slurm)
    assert set(states.values()) == {"COMPLETED"}, states

    lines = status_lines(grid, out, capsys)
    assert lines[-1].startswith("total=2 valid=2 failed=0 invalid=0 cancelled=0 interrupted=0 "
                                "pending=0 running=0"), lines

    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        summary = json.loads(exp.summary.read_text())
        assert summary["valid"], summary["reasons"]
        env = json.loads(exp.env.read_text())["slurm_env"]
        assert f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" == jobs[experiment_id][-1]
        # The task's own log is named by its own SLURM_JOB_ID, where the runner keeps it.
        assert exp.slurm_log(env["SLURM_JOB_ID"]).is_file()
        assert exp.latest_log.samefile(exp.slurm_log(env["SLURM_JOB_ID"]))
        env = json.loads(exp.env.read_text())
        # One shard per allocated (fake) GPU, pinned with CUDA_VISIBLE_DEVICES.
        gpus = [s["gpu"] for s in env["shards"]]
        assert len(set(gpus)) == summary["params"]["servers"] and None not in gpus
        assert list(exp.logs.glob("slurm-*.out"))
        assert "progress=100" in next(exp.logs.glob("slurm-*.out")).read_text()

    # A second submit finds nothing to do: every experiment has a valid result.
    capsys.readouterr()
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    assert "submitted 0 experiment(s) in 0 job array(s)" in capsys.readouterr().out

    # The collect job ran analyze once the arrays had ended.
    assert slurm_cluster.wait_for_jobs([collect_job], timeout_s=300, env=on_slurm)[collect_job] == "COMPLETED"
    dataset = pd.read_csv(sweep.dataset_csv)
    assert dataset["valid"].all() and len(dataset) == 2
    assert sweep.report_index.exists()
    from tests.test_arrays import cms_ee_list

    listed = cms_ee_list(sweep, tmp_path / "home")  # the real `cms ee list`, next to plots/ and report/
    assert listed.returncode == 0 and listed.stdout.count("done: valid") == 2, listed.stdout + listed.stderr
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

    deadline = time.monotonic() + 420  # the shared test cluster may be busy with other jobs
    while not (exp.barrier / "go").exists():  # servers, balancer and clients all running
        assert time.monotonic() < deadline, "the job never reached its measured window"
        time.sleep(0.5)
    running = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert len(running) >= 4  # 2 servers, haproxy, 1 client process carrying the 2 streams (at least)

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


def test_clients_launched_with_srun(on_slurm, write_grid, tmp_path, models_dir, capsys, monkeypatch):
    """The multi-node client path (one srun step of M tasks), exercised on one node."""
    # One stream per process, so 3 streams are 3 srun tasks (sbatch hands the job our environment).
    monkeypatch.setenv("OSMI_EE_TEST_STREAMS_PER_PROCESS", "1")
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


# A stand-in for the runner (the array machinery is under test, not the benchmark): each run
# is counted, and leaves a verdict as the runner would.
FAKE_JOB = """#!/bin/bash
cd "$(dirname "$0")"
echo "$SLURM_JOB_ID restart=${SLURM_RESTART_COUNT:-0}" >> runs
verdict() {
    mkdir -p results
    printf '{"schema": "osmi-ee/summary/1", "valid": %s, "reasons": []}' "$2" > results/summary.json
    echo "$1" > status
}
case MODE in
    sleep-once) if [[ ! -e slept ]]; then touch slept; echo running > status; sleep 600; fi; verdict valid true ;;
    invalid) verdict invalid false; exit 3 ;;
    valid) verdict valid true ;;
esac
"""


def slurm(args: list[str], env: dict) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, timeout=30)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def test_retries_requeue_infrastructure_failures_never_invalid(on_slurm, write_grid, tmp_path, capsys):
    """One array of three tasks, throttled to one at a time, job.retries: 1. Task 0 gets the
    warning Slurm sends before a time limit and requeues itself, then runs again; task 1 ends
    INVALID and a `scontrol requeue` does not run it again; task 2 is valid at once."""
    models = tmp_path / "models"  # the pre-flight wants exported models: an empty marker is enough
    (models / "small_lstm" / "1").mkdir(parents=True)
    (models / "small_lstm" / "1" / "saved_model.pb").write_bytes(b"")
    grid = write_grid({"name": "retries", "profile": "localhost",
                       "experiment": {"model": ["small_lstm"], "batch": [1, 2, 4], "gpu": ["cpu"]},
                       "serve": {"models_dir": str(models)},
                       "job": {"time": "00:10:00", "max_running": 1, "retries": 1}})
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    sleeper, invalid, valid = (sweep.experiment(e) for e in sweep.experiment_ids())
    for exp, mode in ((sleeper, "sleep-once"), (invalid, "invalid"), (valid, "valid")):
        exp.job_script.write_text(FAKE_JOB.replace("MODE", mode))
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 0
    jobs = json.loads(sweep.jobs.read_text())
    task = {exp: jobs[exp.root.name][-1] for exp in (sleeper, invalid, valid)}
    assert len({t.split("_")[0] for t in task.values()}) == 1  # one shape, one array

    deadline = time.monotonic() + 300
    while not (sleeper.root / "slept").exists():
        assert time.monotonic() < deadline, "task 0 never started"  # the cluster may be busy
        time.sleep(0.25)
    shown = scontrol_show(task[invalid].split("_")[0], on_slurm)
    assert "ArrayTaskThrottle=1 " in shown and "Reason=JobArrayTaskLimit" in shown, shown
    assert "Requeue=1" in scontrol_show(task[sleeper], on_slurm)

    # What Slurm sends --signal=B:USR1@<s> before the time limit; the task's shell requeues it.
    # (scancel then retries for a while: once requeued, the task "can not be altered now".)
    signal = subprocess.Popen(["scancel", "--batch", "--signal=USR1", task[sleeper]], env={**os.environ, **on_slurm},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "Restarts=1" not in scontrol_show(task[sleeper], on_slurm):
            assert time.monotonic() < deadline, "the time-limit warning did not requeue the task"
            time.sleep(0.5)
    finally:
        signal.kill()
        signal.wait()
    slurm(["scontrol", "update", f"JobId={task[sleeper]}", "StartTime=now"], on_slurm)  # skip Slurm's 2-min hold
    states = slurm_cluster.wait_for_jobs(list(task.values()), timeout_s=300, env=on_slurm)
    assert states[task[invalid]] == "FAILED" and states[task[valid]] == "COMPLETED", states
    assert states[task[sleeper]] == "COMPLETED", states

    # An operator (or a node failure) requeues the INVALID task: its verdict stands, nothing reruns.
    slurm(["scontrol", "requeue", task[invalid]], on_slurm)
    time.sleep(1)
    slurm(["scontrol", "update", f"JobId={task[invalid]}", "StartTime=now"], on_slurm)
    deadline = time.monotonic() + 300
    while "Restarts=1" not in (shown := scontrol_show(task[invalid], on_slurm)) or "JobState=COMPLETED" not in shown:
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)

    runs = {name: len((exp.root / "runs").read_text().splitlines())
            for name, exp in (("sleeper", sleeper), ("invalid", invalid), ("valid", valid))}
    assert runs == {"sleeper": 2, "invalid": 1, "valid": 1}, runs
    assert "restart=1" in (sleeper.root / "runs").read_text()
    lines = status_lines(grid, out, capsys)
    assert lines[-1].startswith("total=3 valid=2 failed=0 invalid=1 "), lines
    # The requeued attempt's log is kept, next to the one that ran again.
    assert len(list(sleeper.logs.glob("slurm-*.out"))) == 2


def test_preflight_refuses_before_anything_is_queued(on_slurm, write_grid, tmp_path, capsys):
    data = smoke_grid(tmp_path / "no-models")  # a new user who skipped `make models`
    data["name"] = "preflight-refused"  # its jobs' names start with it: none may be queued
    data["profile"] = {"name": "bad", "gpus": {"fake": {"gres": "gpu:{n}"}},
                       "haproxy": ["no-such-haproxy-binary"]}
    grid = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing submitted" in err and "no exported model for small_lstm" in err, err
    assert "make models EXPERIMENT=" in err and "no-such-haproxy-binary" in err, err
    sweep = SweepPaths(out)
    assert not sweep.jobs.exists() and not sweep.submissions.exists()
    names = slurm(["squeue", "-h", "-o", "%j"], on_slurm).split()
    assert not any(n.startswith("preflight-refused") for n in names), names

    # Slurm itself is asked too (sbatch --test-only): a shape no node has is refused up front.
    data = smoke_grid(tmp_path / "no-models")
    data["experiment"]["gpu"] = ["cpu"]
    data["profile"] = {"name": "big", "gpus": {"cpu": {"mem": "999999G"}}}
    grid = write_grid(data, "big.yaml")
    assert cli.main(["generate", "--grid", str(grid), "--out", str(tmp_path / "big")]) == 0
    assert cli.main(["submit", "--grid", str(grid), "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert "Slurm refuses array" in err and "--mem=999999G" in err, err
    assert not SweepPaths(tmp_path / "big").jobs.exists()



def test_export_models_job_goes_first(on_slurm, write_grid, tmp_path, capsys):
    """--export-models: the models are exported by a job of its own, and the arrays wait for it."""
    data = smoke_grid(tmp_path / "models-to-come")
    data["name"] = "export-first"
    grid = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(grid), "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["submit", "--grid", str(grid), "--out", str(out), "--export-models"]) == 0
    sweep = SweepPaths(out)
    sent = json.loads(sweep.submissions.read_text())
    try:
        (export,) = [s["job_id"] for s in sent if s["kind"] == "export"]
        arrays = [s["job_id"] for s in sent if s["kind"] == "array"]
        assert len(arrays) == 2
        for array in arrays:
            assert f"Dependency=afterok:{export}" in scontrol_show(array, on_slurm)
        script = sweep.export_script.read_text()
        assert "-m osmi_ee.ee.cli models --grid" in script and str(grid) in script
    finally:  # the export itself is test_export.py's business: cancel before it runs
        subprocess.run(["scancel", *[s["job_id"] for s in sent]], env={**os.environ, **on_slurm}, check=False)
