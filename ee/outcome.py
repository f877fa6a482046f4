"""What became of one experiment: one record and one vocabulary for every executor and `status`.

    valid          status `valid` and a complete summary.json that says valid
    invalid        the runner's verdict: measured, but not a figure to trust (reasons in the summary)
    failed         no measurement (setup error, job died before the runner, unreadable results)
    cancelled      the runner was told to stop (SIGTERM/SIGINT, scancel) and wrote that verdict
    interrupted    status still `running` but nobody runs it: its runner died without a verdict
    pending        queued in Slurm
    running        running now (a Slurm job, or a local runner holding the experiment's lock)
    not submitted  nothing started yet

Only `valid` is final: every other state is run again by `osmi-ee run` and `submit`.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from osmi_ee.ee.paths import ExperimentPaths

STATES = ("valid", "invalid", "failed", "cancelled", "interrupted", "pending", "running", "not submitted")
# Status words only the runner writes, and whose summary tells why.
VERDICTS = ("invalid", "failed", "cancelled")


@dataclass(frozen=True)
class ExperimentOutcome:
    id: str
    state: str  # one of STATES
    job_id: str | None = None  # Slurm job id; None for local runs
    reason: str = ""  # why it is in this state, or why it was skipped
    skipped: bool = False  # this call left it alone (already valid, queued, run by another runner)


def lock_held(exp: ExperimentPaths) -> bool:
    """Is some runner (or its job) holding the experiment's lock right now?"""
    try:
        fd = os.open(exp.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        # Shared and non-blocking: two probes never disturb each other, and a runner
        # that meets a probe retries (see local.ExperimentLock.acquire).
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's lock
    return False


def lock_owner(exp: ExperimentPaths) -> str | None:
    """The pid the lock holder wrote into the lock file, if any."""
    try:
        text = exp.lock.read_text().strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def _reasons(summary: dict | None) -> str:
    reasons = summary.get("reasons") if summary else None
    return "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else ""


def recorded_state(exp: ExperimentPaths, *, held: bool | None = None) -> tuple[str | None, str]:
    """(state, reason) that the experiment's own files prove; state None: never started.

    `held` says whether a runner holds the lock (None: ask the lock). Only complete,
    readable results count: a `valid` status without a summary that parses and
    says valid is not valid.
    """
    status = exp.read_status()
    if status is None:
        return None, ""
    if status == "running":
        if held is None:
            held = lock_held(exp)
        if held:
            return "running", ""
        return "interrupted", "status is still `running` but no runner holds it: it died without a verdict"
    summary = exp.read_summary()
    if status == "valid":
        if summary is None:
            return "failed", f"{exp.summary} is missing, truncated or unreadable"
        if summary.get("valid") is not True:
            return "invalid", _reasons(summary) or "status says valid, summary.json does not"
        return "valid", ""
    if status in VERDICTS:
        return status, _reasons(summary) if summary else f"{exp.summary} is missing, truncated or unreadable"
    return "failed", f"unknown status {status!r} in {exp.status}"


def is_valid(exp: ExperimentPaths) -> bool:
    """Done for good: nothing to run again."""
    return recorded_state(exp, held=False)[0] == "valid"
