"""The Slurm executor: sbatch each experiment, and read job states back.

Files on disk come first: an experiment's `status` file is the truth once the
runner wrote it; the scheduler is asked only about jobs without one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

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


def submit(sweep: SweepPaths, *, force: bool = False) -> dict[str, str]:
    """sbatch every experiment with no valid result and no queued job; returns id -> job id."""
    if not slurm_present():
        raise SubmissionError("sbatch not found: Slurm is not installed here; use `make run` to run locally")
    jobs = load_jobs(sweep)
    latest = {exp: ids[-1] for exp, ids in jobs.items() if ids}
    queued = queue_states(list(latest.values()))
    submitted: dict[str, str] = {}
    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        if not force and exp.read_status() == "valid":
            continue
        job = latest.get(experiment_id)
        if job and queued.get(job) in ACTIVE_STATES:
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
        submitted[experiment_id] = job_id
        write_json(sweep.jobs, jobs)  # record each id at once: nothing lost on a crash
    return submitted


def experiment_states(sweep: SweepPaths) -> dict[str, dict[str, Any]]:
    """Per experiment: state (pending|running|done|invalid|failed|not submitted) and job id."""
    jobs = load_jobs(sweep)
    latest = {exp: ids[-1] for exp, ids in jobs.items() if ids}
    queued = queue_states(list(latest.values())) if latest and slurm_present() else {}
    states = {}
    for experiment_id in sweep.experiment_ids():
        status = sweep.experiment(experiment_id).read_status()
        job = latest.get(experiment_id)
        slurm_state = queued.get(job) if job else None
        if slurm_state == "PENDING":
            state = "pending"
        elif slurm_state in ACTIVE_STATES:
            state = "running"
        elif status == "valid":
            state = "done"
        elif status in ("invalid", "failed"):
            state = status
        elif status == "running":
            # The runner started but the job is gone: killed (scancel, timeout, node failure).
            state = "failed"
        elif job:
            state = "failed" if slurm_state is None else slurm_state.lower()
        else:
            state = "not submitted"
        states[experiment_id] = {"state": state, "job_id": job, "slurm_state": slurm_state}
    return states
