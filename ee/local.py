"""The local executor: runs each experiment's job script with bash, one at a time.

The script is the same one sbatch would get, so a local run exercises the
cluster path too. Experiments with a complete valid result are skipped unless
forced, so an interrupted sweep resumes where it stopped.

A job belongs to the runner that started it:
- it runs in a process group (and session) of its own, so a Ctrl-C in the
  terminal reaches only the runner, which passes SIGTERM on to the whole group
  and waits for the job's verdict (`cancelled`);
- it dies with the runner (PR_SET_PDEATHSIG=SIGTERM: the job's own runner
  still tears down and writes its verdict), so a SIGKILLed `osmi-ee run`
  leaves nothing behind;
- it holds the experiment's lock (flock on <experiment>/.lock) together with
  the runner: the locked fd is passed to the job, so the lock lasts as long as
  either lives, and a second `osmi-ee run` skips the experiment rather than
  running it twice at once.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from tqdm import tqdm

from osmi_ee.ee.outcome import ExperimentOutcome, is_valid, lock_owner, recorded_state
from osmi_ee.ee.paths import ExperimentPaths, SweepPaths

VERDICT_WAIT_S = 120.0  # after SIGTERM, the job's time to tear down and write its verdict
LOCK_RETRY_S = 0.5  # a `status` probe holds the lock for microseconds: ride it out
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the sweep; `outcome` is how the job then running ended."""

    def __init__(self, signum: int, outcome: ExperimentOutcome | None, outcomes: list[ExperimentOutcome]):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outcome = outcome
        self.outcomes = outcomes

    def __str__(self) -> str:
        ended = f"; {self.outcome.id} {self.outcome.state}" if self.outcome else ""
        return f"interrupted by {signal.Signals(self.signum).name}{ended}; rerun to resume"


class ExperimentLock:
    """Exclusive flock on the experiment's .lock file. The fd is non-inheritable:
    only the job gets a copy (pass_fds), never the servers or clients it starts."""

    def __init__(self, exp: ExperimentPaths):
        self.path = exp.lock
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        deadline = time.monotonic() + LOCK_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who runs it, for the runner that must skip it
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # a job still tearing down keeps the lock through its own copy
            self.fd = None


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


class _Stop:
    """SIGINT/SIGTERM while the sweep runs. The first passes SIGTERM to the job's
    process group (its runner tears down and writes `cancelled`); a second one,
    or a job that takes longer than VERDICT_WAIT_S to end, gets SIGKILL."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.first_at: float | None = None
        self.job: subprocess.Popen | None = None
        self.killed = False
        self._saved: dict[int, Callable | int] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread only
            for signum in STOP_SIGNALS:
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)
        if self.first_at is None:
            self.first_at = time.monotonic()
        self._pass_on()

    def _pass_on(self) -> None:
        if self.job is None:
            return
        if len(self.signals) == 1:
            _signal_group(self.job.pid, signal.SIGTERM)
        else:
            self.kill()

    def attach(self, job: subprocess.Popen) -> None:
        self.job = job
        if self.signals:  # it came while the job was starting
            self._pass_on()

    def kill(self) -> None:
        if self.job is not None:
            _signal_group(self.job.pid, signal.SIGKILL)
            self.killed = True

    def overdue(self) -> bool:
        return (self.first_at is not None and not self.killed
                and time.monotonic() - self.first_at > VERDICT_WAIT_S)


def _die_with_runner(runner: int) -> Callable[[], None]:
    """preexec_fn of a job: SIGTERM when the runner dies, whatever kills it."""
    global _libc
    if _libc is None:  # loaded in the parent: the child between fork and exec does little
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc = _libc

    def preexec() -> None:
        for signum in STOP_SIGNALS:  # our Python handlers must not run in the child
            try:
                signal.signal(signum, signal.SIG_DFL)
            except ValueError:  # not the main thread: nothing was installed
                pass
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != runner:  # the runner died before prctl: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _start_job(exp: ExperimentPaths, lock_fd: int) -> subprocess.Popen:
    exp.logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OSMI_EE_EXECUTOR": "local"}
    if exp.job_log.exists():  # the earlier attempt's job log: the runner archives it with the rest
        os.replace(exp.job_log, exp.logs / "job.earlier.out")
    with open(exp.job_log, "wb") as log:
        return subprocess.Popen(["bash", str(exp.job_script)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=exp.root, env=env, start_new_session=True,
                                pass_fds=(lock_fd,), preexec_fn=_die_with_runner(os.getpid()))


def _wait_job(job: subprocess.Popen, stop: _Stop) -> int:
    """Waits for the job's main process, then kills whatever it left in its group."""
    # WNOWAIT: the exited job stays a zombie until job.wait(), so its group id
    # cannot be reused by another process before the killpg below.
    while os.waitid(os.P_PID, job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if stop.overdue():
            stop.kill()
        time.sleep(0.1)
    stop.job = None
    _signal_group(job.pid, signal.SIGKILL)
    return job.wait()


def _file_id(path: os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _run_job(exp: ExperimentPaths, lock: ExperimentLock, stop: _Stop) -> ExperimentOutcome:
    experiment_id = exp.root.name
    status_before = _file_id(exp.status)
    job = _start_job(exp, lock.fd)
    stop.attach(job)
    rc = _wait_job(job, stop)
    if _file_id(exp.status) == status_before:
        # The runner never wrote a status (it is replaced atomically, so a write
        # shows): the job ended before the runner started.
        state = "interrupted" if stop.signals else "failed"
        outcome = ExperimentOutcome(experiment_id, state, reason=f"the job exited with code {rc} "
                                                                 "before its runner started")
    else:
        state, reason = recorded_state(exp, held=False)  # the job is gone: nobody runs it now
        outcome = ExperimentOutcome(experiment_id, state or "failed", reason=reason)
    if outcome.state != "valid" and not stop.signals:
        tqdm.write(f"{experiment_id}: {outcome.state} (exit {rc}); see {exp.job_log}", file=sys.stderr)
    return outcome


def _run_one(exp: ExperimentPaths, *, force: bool, stop: _Stop, bar: tqdm) -> ExperimentOutcome:
    experiment_id = exp.root.name
    lock = ExperimentLock(exp)
    if not lock.acquire():
        owner = lock_owner(exp)
        reason = "being run by another runner" + (f" (pid {owner})" if owner else "")
        tqdm.write(f"{experiment_id}: skipped, {reason}", file=sys.stderr)
        return ExperimentOutcome(experiment_id, "running", reason=reason, skipped=True)
    try:
        # Decided under the lock: another runner may have finished it a moment ago.
        if not force and is_valid(exp):
            return ExperimentOutcome(experiment_id, "valid", reason="already valid", skipped=True)
        bar.set_postfix_str(experiment_id)
        return _run_job(exp, lock, stop)
    finally:
        lock.release()


def run_order(sweep: SweepPaths, ids: list[str]) -> list[str]:
    """Repeat 1 of every configuration, then repeat 2, ...: a machine that drifts over
    minutes then spreads each configuration's launches over the whole sweep, so the
    interval over its repeats holds the drift instead of one configuration absorbing it."""
    try:
        params = json.loads(sweep.sweep.read_text()).get("params", {})
    except (OSError, ValueError):
        return ids
    position = {i: n for n, i in enumerate(ids)}
    return sorted(ids, key=lambda i: (params.get(i, {}).get("repeat") or 1, position[i]))


def run_local(sweep: SweepPaths, *, force: bool = False, only: list[str] | None = None) -> list[ExperimentOutcome]:
    """Runs the sweep's experiments; one outcome each. Raises Interrupted after
    SIGINT/SIGTERM, once the job then running has ended."""
    ids = run_order(sweep, [i for i in sweep.experiment_ids() if not only or i in only])
    outcomes: list[ExperimentOutcome] = []
    bar = tqdm(ids, desc="experiments", unit="exp", file=sys.stderr, dynamic_ncols=True)
    try:
        with _Stop() as stop:
            for experiment_id in bar:
                if stop.signals:
                    raise Interrupted(stop.signals[0], None, outcomes)
                outcome = _run_one(sweep.experiment(experiment_id), force=force, stop=stop, bar=bar)
                outcomes.append(outcome)
                if stop.signals:
                    raise Interrupted(stop.signals[0], None if outcome.skipped else outcome, outcomes)
    finally:
        bar.close()  # before any message: the bar's line must end first
    return outcomes
