"""Child processes that cannot outlive the job: start, watch, tear down.

Every child gets PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILLed runner leaves
no server, balancer or client behind; the normal path stops them in reverse
start order with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (bind to 0). Callers retry on a lost race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_listeners(port: int) -> list[int | None]:
    """Pids of the sockets listening on TCP `port` (None where the owner is not ours to see)."""
    import psutil

    return [c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]


def foreign_listeners(port: int, own_pid: int) -> list[int | None]:
    """Listeners on `port` that are neither `own_pid` nor one of its descendants:
    proof that only our process answers on a port we handed out."""
    import psutil

    try:
        ours = {own_pid, *(c.pid for c in psutil.Process(own_pid).children(recursive=True))}
    except psutil.Error:
        ours = {own_pid}
    return [pid for pid in port_listeners(port) if pid not in ours]


def describe_pid(pid: int | None) -> str:
    if pid is None:
        return "a process of another user"
    try:
        import psutil

        return f"pid {pid} ({' '.join(psutil.Process(pid).cmdline())[:120]})"
    except Exception:  # gone meanwhile, or not ours to read
        return f"pid {pid}"


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def describe_exit(self) -> str:
        return f"{self.name} exited with code {self.process.returncode}; log {self.log}:\n{log_tail(self.log)}"


@dataclass
class ProcessGroup:
    """The children of one job, stopped together."""

    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, preexec_fn=_die_with_parent)
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def stop(self, children: list[Child] | None = None, grace_s: float = 10.0) -> None:
        targets = list(reversed(children if children is not None else self.children))
        for child in targets:
            if child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in targets:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.children]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
