"""The Slurm executor: sbatch each experiment, and read job states back.

A queued or running job comes first; otherwise the experiment's own complete
result files are the truth (see ee/outcome.py for the states).
"""

from __future__ import annotations

import json
import shutil
import subprocess

from osmi_ee.ee.outcome import ExperimentOutcome, is_valid, lock_held, recorded_state
from osmi_ee.ee.paths import SweepPaths, write_json

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class SubmissionError(RuntimeError):
    pass


def slurm_present() -> bool:
    return shutil.which("sbatch") is not None


def load_jobs(sweep: SweepPaths) -> dict[str, list[str]]:
    """experiment id -> job ids, oldest first (one per submission attempt)."""
    try:
        return json.loads(sweep.jobs.read_text())
    except FileNotFoundError:
        return {}


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Scheduler state of the given jobs that Slurm still knows about."""
    if not job_ids:
        return {}
    out = subprocess.run(["squeue", "--json"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SubmissionError(f"squeue failed: {out.stderr.strip()}")
    wanted = set(job_ids)
    states = {}
    for job in json.loads(out.stdout).get("jobs", []):
        job_id = str(job.get("job_id"))
        if job_id in wanted:
            state = job.get("job_state")
            if isinstance(state, list):  # newer Slurm gives a list of flags
                state = state[0] if state else "UNKNOWN"
            states[job_id] = str(state)
    return states


def _queued(state: str | None) -> str:
    return "pending" if state == "PENDING" else "running"


def submit(sweep: SweepPaths, *, force: bool = False) -> list[ExperimentOutcome]:
    """sbatch every experiment with no valid result, no queued job and no local
    runner; one outcome each (skipped=True for those left alone)."""
    if not slurm_present():
        raise SubmissionError("sbatch not found: Slurm is not installed here; use `make run` to run locally")
    jobs = load_jobs(sweep)
    latest = {exp: ids[-1] for exp, ids in jobs.items() if ids}
    queued = queue_states(list(latest.values()))
    outcomes: list[ExperimentOutcome] = []
    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        job = latest.get(experiment_id)
        if not force and is_valid(exp):
            outcomes.append(ExperimentOutcome(experiment_id, "valid", job, "already valid", skipped=True))
            continue
        if job and queued.get(job) in ACTIVE_STATES:
            outcomes.append(ExperimentOutcome(experiment_id, _queued(queued[job]), job,
                                              f"job {job} is {queued[job]}", skipped=True))
            continue
        if lock_held(exp):  # `osmi-ee run` is running it here right now
            outcomes.append(ExperimentOutcome(experiment_id, "running", None, "being run by a local runner",
                                              skipped=True))
            continue
        exp.logs.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["sbatch", "--parsable", f"--chdir={exp.root}", str(exp.job_script)],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            write_json(sweep.jobs, jobs)  # keep what was submitted before the failure
            raise SubmissionError(f"sbatch failed for {experiment_id}: {out.stderr.strip()}")
        job_id = out.stdout.strip().split(";")[0]
        exp.status.unlink(missing_ok=True)  # a fresh attempt: old verdicts no longer apply
        jobs.setdefault(experiment_id, []).append(job_id)
        outcomes.append(ExperimentOutcome(experiment_id, "pending", job_id, "submitted"))
        write_json(sweep.jobs, jobs)  # record each id at once: nothing lost on a crash
    return outcomes


def _ended_without_verdict(job: str, slurm_state: str | None) -> tuple[str, str]:
    """A job that left no status file: cancelled while queued, or dead before the runner."""
    if slurm_state == "CANCELLED":
        return "cancelled", f"job {job} was cancelled before its runner started"
    ended = f"ended {slurm_state}" if slurm_state else "is no longer known to Slurm"
    return "failed", f"job {job} {ended} without a status from its runner"


def experiment_states(sweep: SweepPaths) -> dict[str, ExperimentOutcome]:
    """Per experiment, its outcome so far: the queue first, then its own result files."""
    jobs = load_jobs(sweep)
    latest = {exp: ids[-1] for exp, ids in jobs.items() if ids}
    queued = queue_states(list(latest.values())) if latest and slurm_present() else {}
    states = {}
    for experiment_id in sweep.experiment_ids():
        job = latest.get(experiment_id)
        slurm_state = queued.get(job) if job else None
        if slurm_state in ACTIVE_STATES:
            state, reason = _queued(slurm_state), f"Slurm: {slurm_state}"
        else:
            # `running` here: a local runner holds the lock, else `interrupted`
            # (the runner was killed: scancel past KillWait, time limit, node failure).
            state, reason = recorded_state(sweep.experiment(experiment_id))
            if state is None:
                state, reason = _ended_without_verdict(job, slurm_state) if job else ("not submitted", "")
        states[experiment_id] = ExperimentOutcome(experiment_id, state, job, reason)
    return states
