"""Helpers for tests that run jobs on the real Slurm test cluster (.ci/slurm-up).

That cluster has 3 nodes (osmi-n1..osmi-n3, each in its own network namespace with its own address and
hostname) where root can create namespaces, else one node 'localhost' (OSMI_SLURM_NODES=1).
Not a test module. Typical use in a fixture::

    env = slurm_cluster.ensure_cluster()            # {"SLURM_CONF": ...}; starts the cluster if needed
    jid = subprocess.run(["sbatch", "--parsable", ...], env={**os.environ, **env}, ...).stdout.strip()
    states = slurm_cluster.wait_for_jobs([jid], timeout_s=60, env=env)
    slurm_cluster.stop_started_cluster()           # at session end (conftest): only if we started it

Job ids are strings (ints accepted): "12" (a plain job, or a whole array: all its tasks), or "12_3" (one
array task). States come from `squeue --json` (lists finished jobs for MinJobAge, 300 s) and from the
jobcomp/filetxt file, parsed here because `sacct -c` mishandles arrays (Slurm 22.05).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SLURM_UP = REPO / ".ci" / "slurm-up"
SLURM_DOWN = REPO / ".ci" / "slurm-down"

# Slurm base states after which a job never runs again.
FINISHED_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})
# For an array (or a requeued job) with mixed outcomes, report the first of these that occurs.
_WORST_FIRST = ("NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "FAILED", "TIMEOUT", "DEADLINE",
                "PREEMPTED", "CANCELLED", "REVOKED", "SPECIAL_EXIT", "COMPLETED")
_KV = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)")


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **(env or {})}


def _run(args: list[str], env: Mapping[str, str] | None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(env), capture_output=True, text=True, timeout=timeout)


def slurm_available(env: Mapping[str, str] | None = None) -> bool:
    """True if sbatch is on PATH, SLURM_CONF is set (in env or os.environ) and the controller is UP."""
    e = _env(env)
    if not shutil.which("sbatch", path=e.get("PATH")) or not e.get("SLURM_CONF"):
        return False
    try:
        p = _run(["scontrol", "ping"], env, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and "is UP" in p.stdout


def default_conf() -> Path:
    """The slurm.conf .ci/slurm-up writes ($OSMI_SLURM_DIR, default /tmp/osmi-slurm)."""
    return Path(os.environ.get("OSMI_SLURM_DIR", "/tmp/osmi-slurm")).resolve() / "slurm.conf"


# The cluster ensure_cluster started in this process ({"SLURM_CONF": ...}), if it did: only that
# one is ours to stop. One that already ran (CI's .ci/run, a developer's shell) is left alone.
_started: dict[str, str] = {}


def ensure_cluster(timeout_s: float = 600) -> dict[str, str]:
    """Start the test cluster if needed (.ci/slurm-up; may apt-get install) and return env vars to use.

    Raises RuntimeError with the tail of slurm-up's output if it fails (e.g. not root, no apt).
    stop_started_cluster() stops it again if (and only if) this call started it.
    """
    if slurm_available():
        return {"SLURM_CONF": os.environ["SLURM_CONF"]}
    # Daemons may run without SLURM_CONF in our environment (slurm-up by hand): theirs, not ours.
    was_up = slurm_available({"SLURM_CONF": str(default_conf())})
    p = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=timeout_s)
    if not was_up and "already running" not in p.stderr:
        _started["SLURM_CONF"] = str(default_conf())  # even half started: slurm-down cleans up
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("export SLURM_CONF="):
        raise RuntimeError(f"{SLURM_UP} failed (rc={p.returncode}):\n{p.stderr[-3000:]}{p.stdout[-1000:]}")
    env = {"SLURM_CONF": lines[-1].split("=", 1)[1]}
    if _started:
        _started.update(env)
    return env


def started_cluster() -> bool:
    """Did ensure_cluster start the cluster in this process (and it was not stopped since)?"""
    return bool(_started)


def stop_started_cluster(timeout_s: float = 120) -> None:
    """Stop the cluster ensure_cluster started in this process (.ci/slurm-down); else do nothing.

    Raises RuntimeError if slurm-down fails.
    """
    if not _started:
        return
    p = subprocess.run([str(SLURM_DOWN)], env=_env(_started), capture_output=True, text=True,
                       timeout=timeout_s)
    if p.returncode != 0:
        raise RuntimeError(f"{SLURM_DOWN} failed (rc={p.returncode}):\n{p.stderr[-3000:]}")
    _started.clear()


# ---- nodes and their namespaces ----------------------------------------------------------------

NETNS_DIR = Path("/run/netns")


def nodes(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, address) of every node, by name, from `scontrol show node -o` (NodeName, NodeAddr)."""
    p = _run(["scontrol", "show", "node", "-o"], env)
    if p.returncode != 0:
        raise RuntimeError(f"scontrol show node failed (rc={p.returncode}): {p.stderr.strip()}")
    found = []
    for line in p.stdout.splitlines():
        fields = dict(_KV.findall(line.strip()))
        if "NodeName" in fields:
            found.append((fields["NodeName"], fields.get("NodeAddr", fields["NodeName"])))
    return sorted(found)


def _netns_inode(node: str) -> int:
    try:
        return (NETNS_DIR / node).stat().st_ino
    except FileNotFoundError:
        raise FileNotFoundError(f"node {node!r} has no network namespace ({NETNS_DIR / node}): "
                                "a single-node cluster (OSMI_SLURM_NODES=1)?") from None


def proc_read(pid: int, name: str) -> bytes:
    """/proc/<pid>/<name> (comm, cmdline, environ, ...), b"" if the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone meanwhile, or a kernel thread
        return b""


def namespace_pids(node: str, include_slurmd: bool = False) -> list[int]:
    """Pids of the processes in a node's network namespace (/run/netns/<node>), its slurmd left out
    unless include_slurmd: job steps, their children and anything they left behind.

    Raises FileNotFoundError if the node has no namespace. Needs root (to read other users' /proc).
    """
    want = f"net:[{_netns_inode(node)}]"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != want:
                continue
        except OSError:
            continue
        if include_slurmd or proc_read(int(entry.name), "comm").strip() != b"slurmd":
            pids.append(int(entry.name))
    return sorted(pids)


def job_pids(job_id: str | int, node: str) -> list[int]:
    """The processes of one job in a node's namespace: its slurmstepd ("slurmstepd: [<id>.<step>]")
    and every process whose environment names the job (SLURM_JOB_ID=<id>), the children that
    escaped their step included. Other jobs sharing the node are left out."""
    env_mark = f"SLURM_JOB_ID={job_id}".encode()
    stepd_mark = f"slurmstepd: [{job_id}.".encode()
    mine = []
    for pid in namespace_pids(node):
        if proc_read(pid, "cmdline").startswith(stepd_mark) or env_mark in proc_read(pid, "environ").split(b"\0"):
            mine.append(pid)
    return mine


# ---- jobcomp file ------------------------------------------------------------------------------

def jobcomp_path(env: Mapping[str, str] | None = None) -> Path | None:
    """JobCompLoc from the slurm.conf named by SLURM_CONF, or None."""
    conf = _env(env).get("SLURM_CONF")
    try:
        text = Path(conf).read_text() if conf else ""
    except OSError:
        return None
    m = re.search(r"^\s*JobCompLoc\s*=\s*(\S+)", text, re.M | re.I)
    return Path(m.group(1)) if m else None


def parse_jobcomp_line(line: str) -> dict[str, str]:
    """One jobcomp/filetxt line ("JobId=5 Name=x JobState=COMPLETED ... ExitCode=0:0") -> dict."""
    return {k: v for k, v in _KV.findall(line.strip())}


def read_jobcomp(env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """All jobcomp records, oldest first (a requeued job may appear more than once)."""
    path = jobcomp_path(env)
    try:
        text = path.read_text(errors="replace") if path else ""
    except OSError:
        return []
    return [r for r in map(parse_jobcomp_line, text.splitlines()) if "JobId" in r]


def _split(job_id: str | int) -> tuple[int, int | None]:
    """'12' -> (12, None); '12_3' -> (12, 3)."""
    head, _, task = str(job_id).strip().partition("_")
    return int(head), (int(task) if task else None)


def _in_task_string(task: int, spec: str) -> bool:
    """Is task in an array_task_string such as '0-7%2', '1,3-5', '0-15:4'?"""
    for part in spec.split("%")[0].split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        if lo.isdigit() and int(lo) <= task <= int(hi or lo) and (task - int(lo)) % int(step or 1) == 0:
            return True
    return False


def job_records(job_id: str | int, env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """The jobcomp records of a job: one per finished array task for an array id; last record per JobId.

    A cancelled array's never-started tasks have one record with JobId=<array id> and no ArrayJobId.
    """
    jid, task = _split(job_id)
    by_raw: dict[str, dict[str, str]] = {}
    for r in read_jobcomp(env):
        arr, t = r.get("ArrayJobId"), r.get("ArrayTaskId")
        if task is None:
            hit = (r["JobId"] == str(jid) and not arr) or arr == str(jid)
        else:
            hit = arr == str(jid) and t == str(task)
        if hit:
            by_raw[r["JobId"]] = r  # later record wins (requeue)
    if task is not None and not by_raw:  # task never started: the array's own record covers it
        by_raw = {r["JobId"]: r for r in read_jobcomp(env) if r["JobId"] == str(jid) and not r.get("ArrayJobId")}
    return list(by_raw.values())


# ---- squeue --json ----------------------------------------------------------------------------

def _squeue(env: Mapping[str, str] | None) -> list[dict] | None:
    """All jobs squeue knows (incl. finished ones for MinJobAge); None if the controller is unreachable."""
    try:
        p = _run(["squeue", "--json"], env)
        return json.loads(p.stdout)["jobs"] if p.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError):
        return None


def _base_state(s: object) -> str:
    if isinstance(s, list):  # newer Slurm: ["COMPLETED", ...flags]
        s = s[0] if s else ""
    return str(s).split()[0].upper() if s else "UNKNOWN"


def _squeue_states(job_id: str | int, jobs: list[dict]) -> dict[str, str]:
    """{raw job id or 'pending meta': state} for the squeue records that belong to job_id."""
    jid, task = _split(job_id)
    out: dict[str, str] = {}
    for j in jobs:
        arr, t = j.get("array_job_id") or 0, j.get("array_task_id")
        spec = j.get("array_task_string") or ""
        if task is None:
            hit = (j.get("job_id") == jid and not arr) or arr == jid
        else:
            hit = arr == jid and (t == task or (t is None and spec and _in_task_string(task, spec)))
        if hit:
            out[str(j.get("job_id"))] = _base_state(j.get("job_state"))
    return out


def _aggregate(states: Iterable[str]) -> str:
    states = list(states)
    for s in _WORST_FIRST:
        if s in states:
            return s
    return states[0] if states else "UNKNOWN"


def _state(job_id: str | int, jobs: list[dict] | None, env: Mapping[str, str] | None) -> tuple[str | None, bool]:
    """(state, settled). settled: finished and every finished part has its jobcomp record."""
    sq = _squeue_states(job_id, jobs or [])
    running = [s for s in sq.values() if s not in FINISHED_STATES]
    if running:
        return ("RUNNING" if "RUNNING" in running else running[0]), False
    recs = job_records(job_id, env)
    jc = {r["JobId"]: _base_state(r.get("JobState")) for r in recs}
    merged = {**sq, **jc}  # jobcomp wins where both know a part
    if not merged:
        return None, False
    settled = set(sq) <= set(jc) or jobs is None
    return _aggregate(merged.values()), settled


def job_state(job_id: str | int, env: Mapping[str, str] | None = None) -> str | None:
    """Current base state (PENDING, RUNNING, COMPLETED, FAILED, ...) or None if Slurm knows no such job.

    For an array id: RUNNING/PENDING while any task is unfinished, then COMPLETED only if every task
    completed, else the worst task state (FAILED before TIMEOUT before CANCELLED).
    """
    return _state(job_id, _squeue(env), env)[0]


def wait_for_jobs(job_ids: Iterable[str | int], timeout_s: float = 120,
                  env: Mapping[str, str] | None = None, poll_s: float = 0.25) -> dict[str | int, str]:
    """Poll until every job is finished; return {job_id: final state} (keys as given).

    Raises TimeoutError naming the unfinished jobs and their states. A finished job whose jobcomp
    record has not appeared yet gets up to 5 s of grace before its squeue state is accepted.
    """
    ids = list(job_ids)
    deadline = time.monotonic() + timeout_s
    first_done: dict[str | int, float] = {}
    done: dict[str | int, str] = {}
    while True:
        jobs = _squeue(env)
        now = time.monotonic()
        pending: dict[str | int, str | None] = {}
        for jid in ids:
            if jid in done:
                continue
            state, settled = _state(jid, jobs, env)
            if state in FINISHED_STATES:
                first_done.setdefault(jid, now)
                if settled or now - first_done[jid] > 5:
                    done[jid] = state
                    continue
            pending[jid] = state
        if not pending:
            return {jid: done[jid] for jid in ids}
        if now > deadline:
            raise TimeoutError(f"Slurm jobs not finished after {timeout_s} s: {pending}")
        time.sleep(poll_s)
