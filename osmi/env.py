"""The environment manifest of one run: what ran where, with which versions."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
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
