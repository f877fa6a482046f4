"""The Slurm executor: send the sweep as job arrays, and read job states back.

`plan` decides which experiments to send: those with no valid result, no queued
task and no local runner. `submit` sends them as one `sbatch --array` per
resource shape (ee/arrays.py), throttled to job.max_running, requeueable when
job.retries > 0, after an export job when asked, and before a collect job
(job.collect). jobs.json maps each experiment to its job ids, oldest first; an
array task's id is "<array>_<index>", as squeue and scontrol write it.

A queued or running task comes first; otherwise the experiment's own complete
result files are the truth (see ee/outcome.py for the states).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from osmi_ee.ee.arrays import INFRASTRUCTURE_STATES, REQUEUE_WARNING_S, expand_task_string, index_spec, load_arrays
from osmi_ee.ee.config import Job
from osmi_ee.ee.outcome import ExperimentOutcome, is_valid, lock_held, recorded_state
from osmi_ee.ee.paths import SweepPaths, write_json

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


class SubmissionError(RuntimeError):
    pass


def slurm_present() -> bool:
    return shutil.which("sbatch") is not None


def load_jobs(sweep: SweepPaths) -> dict[str, list[str]]:
    """experiment id -> job ids, oldest first (one per submission)."""
    try:
        return json.loads(sweep.jobs.read_text())
    except FileNotFoundError:
        return {}


def _base_state(state: Any) -> str:
    if isinstance(state, list):  # newer Slurm gives a list of flags
        state = state[0] if state else "UNKNOWN"
    return str(state)


def _task_id(value: Any) -> int | None:
    """squeue's array_task_id: an int in 22.05, {"set": .., "number": ..} later."""
    if isinstance(value, dict):
        return value.get("number") if value.get("set") else None
    return value if isinstance(value, int) else None


def squeue_ids(job: dict[str, Any]) -> list[str]:
    """The ids one squeue record stands for: its own, and "<array>_<i>" for array tasks
    (a still pending part of an array is one record for all its indices)."""
    ids = [str(job.get("job_id"))]
    array = job.get("array_job_id")
    array = array.get("number") if isinstance(array, dict) else array
    if array:
        task = _task_id(job.get("array_task_id"))
        if task is not None:
            ids.append(f"{array}_{task}")
        else:
            ids += [f"{array}_{i}" for i in expand_task_string(job.get("array_task_string") or "")]
    return ids


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Scheduler state of the given jobs (plain ids or array tasks "A_i") that Slurm still knows."""
    if not job_ids:
        return {}
    out = subprocess.run(["squeue", "--json"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SubmissionError(f"squeue failed: {out.stderr.strip()}")
    wanted = set(job_ids)
    states = {}
    for job in json.loads(out.stdout).get("jobs", []):
        for job_id in squeue_ids(job):
            if job_id in wanted:
                states[job_id] = _base_state(job.get("job_state"))
    return states


def _queued(state: str | None) -> str:
    return "pending" if state == "PENDING" else "running"


@dataclass
class Plan:
    """What a submit would do: the experiments to send, and why each other one is left alone."""

    to_submit: list[str] = field(default_factory=list)
    skipped: list[ExperimentOutcome] = field(default_factory=list)
    active_arrays: set[str] = field(default_factory=set)  # arrays of this sweep still queued or running


def plan(sweep: SweepPaths, *, force: bool = False) -> Plan:
    """Experiments with no valid result (any, with force), no queued task and no local runner."""
    if not slurm_present():
        raise SubmissionError("sbatch not found: Slurm is not installed here; use `make run` to run locally")
    jobs = load_jobs(sweep)
    latest = {exp: ids[-1] for exp, ids in jobs.items() if ids}
    queued = queue_states(list(latest.values()))
    result = Plan()
    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        job = latest.get(experiment_id)
        if not force and is_valid(exp):
            result.skipped.append(ExperimentOutcome(experiment_id, "valid", job, "already valid", skipped=True))
        elif job and queued.get(job) in ACTIVE_STATES:
            result.skipped.append(ExperimentOutcome(experiment_id, _queued(queued[job]), job,
                                                    f"job {job} is {queued[job]}", skipped=True))
            result.active_arrays.add(job.split("_")[0])
        elif lock_held(exp):  # `osmi-ee run` is running it here right now
            result.skipped.append(ExperimentOutcome(experiment_id, "running", None,
                                                    "being run by a local runner", skipped=True))
        else:
            result.to_submit.append(experiment_id)
    return result


@dataclass
class Submission:
    """What one submit sent."""

    outcomes: list[ExperimentOutcome]  # one per experiment, skipped ones included
    arrays: list[dict[str, Any]] = field(default_factory=list)  # name, job_id, indices, tasks
    export_job: str | None = None
    collect_job: str | None = None


def _sbatch(sweep: SweepPaths, args: list[str], what: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--chdir={sweep.root}", *args],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SubmissionError(f"sbatch failed for {what}: {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def _record(sweep: SweepPaths, entry: dict[str, Any]) -> None:
    try:
        done = json.loads(sweep.submissions.read_text())
    except FileNotFoundError:
        done = []
    done.append({"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry})
    write_json(sweep.submissions, done)


def array_args(job: Job, indices: list[int], dependency: str | None = None) -> list[str]:
    """sbatch flags of one array: its indices and throttle, requeue policy, dependency."""
    throttle = f"%{job.max_running}" if job.max_running else ""
    args = [f"--array={index_spec(indices)}{throttle}"]
    if job.retries:  # Slurm requeues after node failure or preemption; the task's shell near the time limit
        args += ["--requeue", f"--signal=B:USR1@{REQUEUE_WARNING_S}"]
    else:
        args.append("--no-requeue")
    if dependency:
        args.append(f"--dependency={dependency}")
    return args


def refusals(sweep: SweepPaths, job: Job, todo: Plan, *, export_models: bool = False) -> list[str]:
    """Asks Slurm (`sbatch --test-only`: nothing is queued) whether it would take every job this
    submit sends; one problem per job it would refuse (no such partition, GPUs, memory, ...)."""
    arrays, _ = load_arrays(sweep)
    wanted = set(todo.to_submit)
    checks = [(f"array {a.name} ({', '.join(a.shape)})",
               [*array_args(job, a.indices(wanted)), str(sweep.array_script(a.name))])
              for a in arrays if a.indices(wanted)]
    if job.collect and checks:
        checks.append(("the collect job (job.collect)", [str(sweep.collect_script)]))
    if export_models and checks:
        checks.append(("the model export job (--export-models)", [str(sweep.export_script)]))
    problems = []
    for what, args in checks:
        out = subprocess.run(["sbatch", "--test-only", f"--chdir={sweep.root}", *args],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            why = " ".join(out.stderr.replace("sbatch: error:", "").split())
            problems.append(f"Slurm refuses {what}: {why}")
    return problems


def submit(sweep: SweepPaths, job: Job, todo: Plan, *, export_models: bool = False) -> Submission:
    """Sends `todo.to_submit` as one array per shape, recording each task's id at once."""
    arrays, _ = load_arrays(sweep)
    jobs = load_jobs(sweep)
    sent = Submission(outcomes=list(todo.skipped))
    if not todo.to_submit:
        return sent
    sweep.slurm_logs.mkdir(parents=True, exist_ok=True)
    dependency = None
    if export_models:
        sent.export_job = _sbatch(sweep, [str(sweep.export_script)], "the model export job")
        _record(sweep, {"kind": "export", "job_id": sent.export_job})
        dependency = f"afterok:{sent.export_job}"
    wanted = set(todo.to_submit)
    for array in arrays:
        indices = array.indices(wanted)
        if not indices:
            continue
        for i in indices:  # a fresh attempt: old verdicts no longer apply (and a requeue reads this one's)
            sweep.experiment(array.experiments[i]).status.unlink(missing_ok=True)
        args = array_args(job, indices, dependency)
        try:
            array_id = _sbatch(sweep, [*args, str(sweep.array_script(array.name)), str(job.retries)],
                               f"array {array.name}")
        except SubmissionError:
            write_json(sweep.jobs, jobs)  # keep what was submitted before the failure
            raise
        for i in indices:
            eid = array.experiments[i]
            jobs.setdefault(eid, []).append(f"{array_id}_{i}")
            sent.outcomes.append(ExperimentOutcome(eid, "pending", f"{array_id}_{i}", "submitted"))
        write_json(sweep.jobs, jobs)  # record the ids at once: nothing lost on a crash
        entry = {"kind": "array", "name": array.name, "job_id": array_id, "array": args[0].split("=", 1)[1],
                 "tasks": len(indices), "retries": job.retries}
        sent.arrays.append(entry)
        _record(sweep, entry)
    if job.collect and sent.arrays:
        after = sorted(todo.active_arrays | {a["job_id"] for a in sent.arrays}, key=int)
        sent.collect_job = _sbatch(sweep, [f"--dependency=afterany:{':'.join(after)}", str(sweep.collect_script)],
                                   "the collect job")
        _record(sweep, {"kind": "collect", "job_id": sent.collect_job, "after": after})
    return sent


def _ended_without_verdict(job: str, slurm_state: str | None) -> tuple[str, str]:
    """A job that left no status file: cancelled while queued, or dead before the runner."""
    if slurm_state == "CANCELLED":
        return "cancelled", f"job {job} was cancelled before its runner started"
    ended = f"ended {slurm_state}" if slurm_state else "is no longer known to Slurm"
    why = " (infrastructure)" if slurm_state in INFRASTRUCTURE_STATES else ""
    return "failed", f"job {job} {ended}{why} without a status from its runner"


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
