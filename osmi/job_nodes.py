"""The nodes of the running Slurm job, by name and by the address their servers bind.

The batch step's node comes first: it is node 0 of osmi.placement, where the
runner and the balancer run. An address is Slurm's NodeAddr for the node when
it is an IP, else what the name (or NodeAddr) resolves to, else the name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    name: str  # Slurm's node name (srun -w)
    address: str  # what its shards bind and the balancer and clients dial

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "address": self.address}


class NodeError(RuntimeError):
    pass


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}")
    return done.stdout


def node_addr(scontrol_show_node: str) -> str | None:
    """NodeAddr from `scontrol show node <name>` output."""
    found = re.search(r"\bNodeAddr=(\S+)", scontrol_show_node)
    return found.group(1) if found else None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def resolve(name: str) -> str:
    """The node's address: NodeAddr if an IP, else what it resolves to (getent's order), else the name."""
    addr = node_addr(_run(["scontrol", "show", "node", name])) or name
    if is_ip(addr):
        return addr
    try:
        return socket.getaddrinfo(addr, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError:
        return addr


def ordered(names: list[str], batch_node: str | None) -> list[str]:
    """The batch step's node first, the others in Slurm's order."""
    if batch_node in names:
        return [batch_node, *(n for n in names if n != batch_node)]
    return names


def this_node() -> str:
    """The name of the node we run on: Slurm's where it ran us, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def job_nodes() -> list[Node]:
    """The nodes of this job (SLURM_JOB_NODELIST), the batch node first."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise NodeError("SLURM_JOB_NODELIST is not set: a multi-node experiment runs inside a Slurm job")
    names = _run(["scontrol", "show", "hostnames", nodelist]).split()
    return [Node(name, resolve(name)) for name in ordered(names, os.environ.get("SLURMD_NODENAME"))]
