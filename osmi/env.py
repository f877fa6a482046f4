"""The environment manifest of one run: what ran where, with which versions."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_line(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def server_version(kind: str, argv: list[str]) -> str | None:
    """What served the figures, with its version: TF-Serving's own --version line, or
    our compatible server with the osmi-ee and TensorFlow versions it runs."""
    if kind == "osmi-model-server":
        tf = _version("tensorflow") or _version("tensorflow-cpu")
        return f"osmi-model-server {_version('osmi-ee')} (TensorFlow {tf})"
    if not argv:
        return None
    # The shard's command without its per-shard flags; works through `apptainer exec` too.
    prefix = [w for w in argv if not w.startswith("--")]
    return _first_line([*prefix, "--version"]) or kind


def manifest(haproxy: list[str], server_argv: list[str]) -> dict[str, Any]:
    """Versions and host facts; each unknown stays None (never a made-up value)."""
    try:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    except ImportError:
        memory_bytes = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_bytes,
        "packages": {name: _version(name) for name in
                     ("osmi-ee", "tensorflow", "tensorflow-cpu", "tensorflow-serving-api",
                      "grpcio", "protobuf", "numpy", "cloudmesh-ee")},
        "haproxy": _first_line([*haproxy, "-v"]),
        "slurm": _first_line(["sbatch", "--version"]),
        "server_command": server_argv,
        "slurm_env": {k: v for k, v in os.environ.items() if k.startswith("SLURM_")},
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "git_commit": git_commit(Path(__file__).resolve().parent.parent),
    }


class MachineLoad:
    """How busy the machine was while a run measured: CPU used by processes outside
    this job, the load average and CPU time stolen by a hypervisor, so an unstable
    run can say why (for example, a busy machine)."""

    def __init__(self, own_pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self.own_pid = own_pid or os.getpid()
        self.loadavg_start = list(os.getloadavg())
        self._times = psutil.cpu_times()
        self._procs = self._process_times()
        self._t0 = time.monotonic()

    def _process_times(self) -> dict[int, float]:
        times = {}
        for proc in self._psutil.process_iter(["cpu_times"]):
            cpu = proc.info.get("cpu_times")
            if cpu is not None:
                times[proc.pid] = cpu.user + cpu.system
        return times

    def finish(self) -> dict[str, Any]:
        """Call while the job's processes still run (they are told apart as ours)."""
        after = self._psutil.cpu_times()
        elapsed = time.monotonic() - self._t0
        try:
            ours = {self.own_pid, *(c.pid for c in self._psutil.Process(self.own_pid).children(recursive=True))}
        except self._psutil.Error:
            ours = {self.own_pid}
        now = self._process_times()
        foreign = sum(max(0.0, t - self._procs[pid]) for pid, t in now.items()
                      if pid in self._procs and pid not in ours)
        total = sum(after) - sum(self._times)
        steal = getattr(after, "steal", 0.0) - getattr(self._times, "steal", 0.0)
        return {"cpu_count": os.cpu_count(),
                "loadavg_start": self.loadavg_start,
                "loadavg_end": list(os.getloadavg()),
                "other_processes_cores": foreign / elapsed if elapsed > 0 else None,
                "cpu_steal_fraction": steal / total if total > 0 else None}


def busy_machine_note(load: dict[str, Any] | None) -> str | None:
    """'the machine is busy: ...' when processes outside the job or a hypervisor took
    a good part of the CPU while it measured, else None."""
    if not load or not load.get("cpu_count"):
        return None
    cores = load["cpu_count"]
    other = load.get("other_processes_cores") or 0.0
    steal = load.get("cpu_steal_fraction") or 0.0
    parts = []
    if other > 0.25 * cores:
        parts.append(f"other processes used {other:.1f} of {cores} cores "
                     f"(load average {load['loadavg_end'][0]:.1f})")
    if steal > 0.05:
        parts.append(f"{steal:.0%} of CPU time stolen by the hypervisor")
    return "the machine is busy: " + ", ".join(parts) if parts else None
