"""A job belongs to the runner that started it: `osmi-ee run` killed, interrupted or
started twice never leaves a process behind nor runs an experiment twice at once,
and resume trusts only complete result files.

Real processes throughout: `osmi-ee run` as a subprocess, its jobs as bash. Where
the real benchmark is not the point, each experiment's job.slurm runs a small fake
runner (below) that archives attempts, writes `running`, sleeps and writes a
verdict (`cancelled` on SIGTERM) the way osmi/run.py does; the e2e tests use the
real runner on a tiny grid.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from osmi_ee.ee.paths import ExperimentPaths, SweepPaths

REPO = Path(__file__).resolve().parents[1]

FAKE_RUNNER = '''
import signal, sys, time
from pathlib import Path
from osmi_ee.ee.paths import ExperimentPaths, write_atomic, write_json

seconds, events, mode = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
exp = ExperimentPaths(Path.cwd())
number = exp.start_attempt(keep_logs={exp.job_log.name})
exp.results.mkdir(parents=True, exist_ok=True)

def event(what):
    with open(events, "a") as out:
        out.write(f"{what} {exp.root.name} {number} {time.time():.6f}\\n")

def verdict(status, reasons):
    write_json(exp.summary, {"schema": "osmi-ee/summary/1", "valid": status == "valid", "reasons": reasons,
                             "attempt": {"number": number, "id": f"{number}-fake"}})
    write_atomic(exp.status, status + "\\n")
    event("end")

def cancel(signum, frame):
    verdict("cancelled", [f"cancelled by signal {signal.Signals(signum).name}"])
    sys.exit(4)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else cancel)
write_atomic(exp.status, "running\\n")
event("start")
time.sleep(seconds)
verdict("valid", [])
'''


# ------------------------------------------------------------------ helpers

def generate(write_grid, tmp_path: Path, models_dir: Path, batches: list[int], **measure) -> tuple[Path, SweepPaths]:
    """A generated sweep of one experiment per batch size; returns (grid file, sweep)."""
    grid = write_grid({
        "name": "lifecycle",
        "experiment": {"model": ["small_lstm"], "servers": [1], "clients": [1], "batch": batches},
        "measure": {"warmup_requests": 2, "requests": 30, "min_requests": 30, "stability_windows": 1,
                    "timeout_s": 30, **measure},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 120},
    })
    out = tmp_path / "sweep"
    done = cli(["generate"], grid, out)
    assert done.returncode == 0, done.stderr
    return grid, SweepPaths(out)


def cli(args: list[str], grid: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osmi_ee.ee.cli", *args, "--grid", str(grid), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def start_run(grid: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "osmi_ee.ee.cli", "run", "--grid", str(grid), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def fake_jobs(tmp_path: Path, sweep: SweepPaths, seconds: list[float], mode: str = "normal") -> Path:
    """Every experiment's job.slurm runs the fake runner for seconds[i]; returns the events file."""
    runner = tmp_path / "fake_runner.py"
    runner.write_text(FAKE_RUNNER)
    events = tmp_path / "events.log"
    for experiment_id, s in zip(sweep.experiment_ids(), seconds, strict=True):
        sweep.experiment(experiment_id).job_script.write_text(
            f"#!/bin/bash\nexec {sys.executable} {runner} {s} {events} {mode}\n")
    return events


def wait_for(what: Callable[[], bool], timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def leftovers(root: Path) -> list[str]:
    """Processes working in or naming the sweep (job, runner, servers, HAProxy, clients)."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd, cmdline = proc.info["cwd"] or "", " ".join(proc.info["cmdline"] or [])
        if cwd.startswith(str(root)) or str(root) in cmdline:
            found.append(f"{proc.info['pid']} cwd={cwd} {cmdline}")
    return found


def assert_nothing_left(root: Path, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while (left := leftovers(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "processes outlived the runner:\n" + "\n".join(left)


def events_of(path: Path) -> list[tuple[str, str, int, float]]:
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(what, exp, int(n), float(t)) for what, exp, n, t in rows]


def assert_never_two_at_once(events: list[tuple[str, str, int, float]], per_experiment: bool) -> None:
    """Runs never overlap: of one experiment (per_experiment), or at all."""
    running: dict[str, int] = {}
    for what, exp, _, _ in sorted(events, key=lambda e: e[3]):
        key = exp if per_experiment else "all"
        running[key] = running.get(key, 0) + (1 if what == "start" else -1)
        assert running[key] <= 1, f"two runs at once ({key}): {events}"


def status_lines(grid: Path, out: Path) -> list[str]:
    done = cli(["status"], grid, out)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def stderr_lines(err: str) -> list[str]:
    """stderr without the progress bar's redraws."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("experiments:")]


def summary(exp: ExperimentPaths) -> dict:
    return json.loads(exp.summary.read_text())


# ------------------------------------------------------------------ fake runner

def test_sigkilled_runner_leaves_nothing_and_the_sweep_resumes(write_grid, tmp_path):
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1, 2, 4])
    first, second, third = (sweep.experiment(i) for i in sweep.experiment_ids())
    events = fake_jobs(tmp_path, sweep, [0.1, 60, 0.1])
    runner = start_run(grid, sweep.root)
    wait_for(lambda: second.read_status() == "running", 30, "the second experiment never started")
    runner.kill()
    runner.communicate(timeout=10)

    # The job died with its runner, and its own runner still wrote the verdict.
    assert_nothing_left(sweep.root)
    assert second.read_status() == "cancelled"
    assert summary(second)["reasons"] == ["cancelled by signal SIGTERM"]
    assert first.read_status() == "valid" and third.read_status() is None
    lines = status_lines(grid, sweep.root)
    assert lines[-1].startswith("total=3 valid=1 failed=0 invalid=0 cancelled=1 interrupted=0 pending=0 "
                                "running=0"), lines

    fake_jobs(tmp_path, sweep, [0.1, 0.1, 0.1])
    again = cli(["run"], grid, sweep.root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "skipped (valid)=1 valid=2"
    assert summary(first)["attempt"]["number"] == 1 and not first.attempts.exists()  # kept as it was
    assert summary(second)["attempt"]["number"] == 2 and summary(second)["valid"]
    assert (second.attempt(1) / "status").read_text().strip() == "cancelled"
    assert summary(third)["attempt"]["number"] == 1
    runs = events_of(events)
    assert [(e[0], e[1]) for e in runs if e[0] == "start"] == [
        ("start", first.root.name), ("start", second.root.name), ("start", second.root.name),
        ("start", third.root.name)]
    assert_never_two_at_once(runs, per_experiment=False)


def test_a_job_outliving_its_killed_runner_keeps_the_experiment(write_grid, tmp_path):
    """The job holds the lock too: while it still ends (here: it ignores the SIGTERM its
    runner's death sends), a new runner leaves its experiment alone."""
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1, 2])
    slow, other = (sweep.experiment(i) for i in sweep.experiment_ids())
    events = fake_jobs(tmp_path, sweep, [4, 0.1], mode="stubborn")
    runner = start_run(grid, sweep.root)
    wait_for(lambda: slow.read_status() == "running", 30, "the job never started")
    runner.kill()
    runner.communicate(timeout=10)

    again = cli(["run"], grid, sweep.root)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "skipped (running elsewhere)=1 valid=1"
    assert f"{slow.root.name}: skipped, being run by another runner (pid {runner.pid})" in again.stderr
    wait_for(lambda: slow.read_status() == "valid", 30, "the orphaned job never ended")
    assert_nothing_left(sweep.root)
    assert [e[1] for e in events_of(events) if e[0] == "start"] == [slow.root.name, other.root.name]
    assert summary(slow)["attempt"]["number"] == 1


def test_two_runners_at_once_run_each_experiment_exactly_once(write_grid, tmp_path):
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1, 2, 4])
    events = fake_jobs(tmp_path, sweep, [1.5, 1.5, 1.5])
    runners = [start_run(grid, sweep.root), start_run(grid, sweep.root)]
    results = [r.communicate(timeout=60) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], results

    runs = events_of(events)
    starts = sorted(e[1] for e in runs if e[0] == "start")
    assert starts == sorted(sweep.experiment_ids())  # each once
    assert_never_two_at_once(runs, per_experiment=True)
    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        assert exp.read_status() == "valid" and summary(exp)["attempt"]["number"] == 1
        assert not exp.attempts.exists()
    ran = sum(int(part.split("=", 1)[1]) for out, _ in results for part in out.split()
              if part.startswith("valid="))
    assert ran == 3
    assert "being run by another runner (pid " in results[0][1] + results[1][1]
    assert_nothing_left(sweep.root)


def test_sigterm_cancels_the_job_and_exits_143(write_grid, tmp_path):
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1, 2])
    exp = sweep.experiment(sweep.experiment_ids()[0])
    fake_jobs(tmp_path, sweep, [60, 0.1])
    runner = start_run(grid, sweep.root)
    wait_for(lambda: exp.read_status() == "running", 30, "the job never started")
    runner.terminate()
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 143, err
    assert stderr_lines(err) == [f"osmi-ee run: interrupted by SIGTERM; {exp.root.name} cancelled; "
                                 "rerun to resume"]
    assert exp.read_status() == "cancelled"
    assert sweep.experiment(sweep.experiment_ids()[1]).read_status() is None  # not started after the stop
    assert_nothing_left(sweep.root)


def test_second_ctrl_c_kills_a_job_that_ignores_sigterm(write_grid, tmp_path):
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1])
    exp = sweep.experiment(sweep.experiment_ids()[0])
    fake_jobs(tmp_path, sweep, [60], mode="stubborn")
    runner = start_run(grid, sweep.root)
    wait_for(lambda: exp.read_status() == "running", 30, "the job never started")
    runner.send_signal(signal.SIGINT)
    time.sleep(1)
    assert runner.poll() is None and leftovers(sweep.root)  # still waiting for the verdict
    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 130, err
    assert stderr_lines(err) == [f"osmi-ee run: interrupted by SIGINT; {exp.root.name} interrupted; "
                                 "rerun to resume"]
    assert_nothing_left(sweep.root)
    assert status_lines(grid, sweep.root)[0].split()[1] == "interrupted"


def test_truncated_summary_is_not_valid_and_is_rerun(write_grid, tmp_path):
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1])
    exp = sweep.experiment(sweep.experiment_ids()[0])
    fake_jobs(tmp_path, sweep, [0.1])
    assert cli(["run"], grid, sweep.root).returncode == 0
    text = exp.summary.read_text()
    exp.summary.write_text(text[: len(text) // 2])  # a disk that filled up, a copy cut short

    lines = status_lines(grid, sweep.root)
    assert lines[0].split()[1] == "failed", lines
    assert lines[-1].startswith("total=1 valid=0 failed=1"), lines
    again = cli(["run"], grid, sweep.root)
    assert again.returncode == 0 and again.stdout.strip() == "valid=1", again.stderr
    assert summary(exp)["valid"] and summary(exp)["attempt"]["number"] == 2
    assert (exp.attempt(1) / "results" / "summary.json").read_text() == text[: len(text) // 2]


def test_running_without_a_lock_holder_is_interrupted_and_rerun(write_grid, tmp_path):
    grid, sweep = generate(write_grid, tmp_path, tmp_path / "models", [1, 2])
    orphan, held = (sweep.experiment(i) for i in sweep.experiment_ids())
    fake_jobs(tmp_path, sweep, [0.1, 0.1])
    for exp in (orphan, held):
        exp.status.write_text("running\n")
    # Another runner, alive, holds the second one.
    fd = os.open(held.lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        lines = status_lines(grid, sweep.root)
        assert [line.split()[1] for line in lines[:2]] == ["interrupted", "running"], lines
        assert lines[-1].startswith("total=2 valid=0 failed=0 invalid=0 cancelled=0 interrupted=1 pending=0 "
                                    "running=1"), lines

        again = cli(["run"], grid, sweep.root)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "skipped (running elsewhere)=1 valid=1"
        assert f"{held.root.name}: skipped, being run by another runner (pid {os.getpid()})" in again.stderr
        assert orphan.read_status() == "valid" and held.read_status() == "running"
    finally:
        os.close(fd)
    assert status_lines(grid, sweep.root)[1].split()[1] == "interrupted"  # its holder is gone


def test_profile_option_replaces_the_grids_profile(write_grid, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text((REPO / "slurm" / "profiles" / "localhost.yaml").read_text()
                       .replace("name: localhost", "name: mine", 1))
    grid = write_grid({"name": "p", "experiment": {"model": ["small_lstm"]}})
    out = tmp_path / "sweep"
    done = cli(["generate", "--profile", str(profile)], grid, out)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "sweep.json").read_text())["profile"] == "mine"
    missing = cli(["status", "--profile", str(tmp_path / "nope.yaml")], grid, out)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_template_error_is_one_message_and_exit_2(write_grid, tmp_path, monkeypatch, capsys):
    """The renderer's backstop (the grid checks stop such values first) ends as a message."""
    from osmi_ee.ee import cli as ee_cli, generate as ee_generate
    from osmi_ee.ee.render import TemplateError

    def refuse(*_args, **_kwargs):
        raise TemplateError("template placeholders with no value: {job.nope}")

    monkeypatch.setattr(ee_generate, "generate", refuse)
    grid = write_grid({"name": "t", "experiment": {"model": ["small_lstm"]}})
    assert ee_cli.main(["generate", "--grid", str(grid), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == "osmi-ee generate: template placeholders with no value: {job.nope}\n"


# ------------------------------------------------------------------ real runner

@pytest.mark.e2e
@pytest.mark.usefixtures("require_haproxy")
def test_ctrl_c_cancels_the_real_runner(write_grid, tmp_path, models_dir):
    grid, sweep = generate(write_grid, tmp_path, models_dir, [1])
    exp = sweep.experiment(sweep.experiment_ids()[0])
    runner = start_run(grid, sweep.root)
    wait_for(lambda: exp.read_status() == "running" and exp.server_log(0).exists(), 60,
             "the runner never started its server")
    runner.send_signal(signal.SIGINT)  # what Ctrl-C does: the job is in a group of its own
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 130, err
    assert "Traceback" not in err
    assert stderr_lines(err) == [f"osmi-ee run: interrupted by SIGINT; {exp.root.name} cancelled; "
                                 "rerun to resume"]
    assert exp.read_status() == "cancelled"
    s = summary(exp)
    assert s["valid"] is False and "cancelled by signal SIGTERM" in s["reasons"], s["reasons"]
    assert_nothing_left(sweep.root, timeout_s=5)
    assert status_lines(grid, sweep.root)[-1].startswith("total=1 valid=0 failed=0 invalid=0 cancelled=1")


@pytest.mark.e2e
@pytest.mark.usefixtures("require_haproxy")
def test_sigkilled_runner_takes_servers_down_and_resumes(write_grid, tmp_path, models_dir):
    grid, sweep = generate(write_grid, tmp_path, models_dir, [1])
    exp = sweep.experiment(sweep.experiment_ids()[0])
    runner = start_run(grid, sweep.root)
    wait_for(lambda: exp.read_status() == "running" and exp.server_log(0).exists(), 60,
             "the runner never started its server")
    runner.kill()
    runner.communicate(timeout=10)
    assert_nothing_left(sweep.root, timeout_s=20)  # job, runner, server, HAProxy, clients
    assert exp.read_status() == "cancelled"
    assert "cancelled by signal SIGTERM" in summary(exp)["reasons"]

    again = cli(["run"], grid, sweep.root)
    assert again.returncode == 0 and again.stdout.strip() == "valid=1", again.stderr
    assert summary(exp)["valid"] and summary(exp)["attempt"]["number"] == 2
    assert (exp.attempt(1) / "status").read_text().strip() == "cancelled"
    assert_nothing_left(sweep.root, timeout_s=5)
