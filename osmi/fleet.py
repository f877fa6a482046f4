"""The serving side of a run: N model-server shards and the HAProxy in front of them.

Used by the job runner (osmi.run) and the bench alike. A shard gets free ports
(gRPC, and REST for its own request counter) and one GPU where the job has
GPUs; it counts as up only once a real Predict through it succeeds. Every port
we hand out must then be listened on by our process alone: with SO_REUSEPORT
another listener would silently take part of the load.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from osmi_ee.ee.paths import write_atomic
from osmi_ee.osmi import batching, haproxy, protos, server_metrics
from osmi_ee.osmi.export import exported_models
from osmi_ee.osmi.job_nodes import this_node
from osmi_ee.osmi.model_config import render_model_config
from osmi_ee.osmi.procs import Child, ProcessGroup, describe_pid, foreign_listeners, free_port
from osmi_ee.osmi.server_kinds import TRITON, TRITONSERVER, ServerKind, ShardConfig, server_kind, triton_command

BALANCER_UP_S = 30.0  # HAProxy must see every shard UP within this
PROBE_TIMEOUT_S = 30.0  # one readiness Predict


class SetupError(Exception):
    """Something could not be brought up; the message names the part and why."""


def server_command(kind: str, given: list[str]) -> tuple[str, list[str]]:
    """(server kind, argv prefix): the job script's command, else TF-Serving where
    asked or found, else our compatible server."""
    if kind == TRITON:  # the profile's tritonserver (a container), else the one setup installed
        try:
            return TRITONSERVER, triton_command(given)
        except RuntimeError as exc:
            raise SetupError(str(exc)) from None
    if given:
        real = any(Path(w).name == "tensorflow_model_server" for w in given)
        return ("tensorflow_model_server" if real else Path(given[-1]).name), given
    real = shutil.which("tensorflow_model_server")
    if kind == "tfserving" and not real:
        raise SetupError("serve.server is 'tfserving' but tensorflow_model_server is not on PATH")
    if kind == "tfserving" or (kind == "auto" and real):
        return "tensorflow_model_server", [real]
    return "osmi-model-server", [sys.executable, "-m", "osmi_ee.osmi.model_server"]


def gpu_for_shard(k: int) -> str | None:
    """The GPU shard k may use: the k-th of the job's allocation (Slurm sets the list)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return None
    ids = [g for g in visible.split(",") if g]
    return ids[k % len(ids)] if ids else None


def probe(target: str, request: bytes, timeout_s: float) -> str | None:
    """None if one Predict to `target` succeeds, else the error text."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(protos.PREDICT_METHOD)
        try:
            call(request, timeout=timeout_s)
            return None
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"


def write_server_configs(model: str, models_dir: str | Path, model_config: Path, monitoring_config: Path) -> None:
    """The shards' model config (the one model) and monitoring config (their request counters)."""
    base = Path(models_dir) / model
    if model not in exported_models(models_dir):
        raise SetupError(f"no exported model at {base}/<version>/saved_model.pb; "
                         f"run `make models` (osmi-export --models {model})")
    write_atomic(model_config, render_model_config({model: base}))
    write_atomic(monitoring_config, server_metrics.monitoring_config_text())


def _foreign(child: Child, ports: tuple[int, ...]) -> tuple[int, str] | None:
    """The first of `ports` that someone besides `child` listens on, with who."""
    for port in ports:
        others = foreign_listeners(port, child.process.pid)
        if others:
            return port, ", ".join(describe_pid(p) for p in others)
    return None


def check_ports(child: Child, *ports: int) -> None:
    """Only our own process may listen on the ports we handed it."""
    found = _foreign(child, ports)
    if found:
        raise SetupError(f"port {found[0]} of {child.name} is also bound by {found[1]}; "
                         "another process listens on it")


def port_in_use(child: Child, *ports: int) -> str:
    """Why a child died at start: a port someone else holds, else its log."""
    found = _foreign(child, ports)
    if found:
        return (f"port {found[0]} is in use by {found[1]}, so {child.name} could not listen on it "
                f"({child.name} exited with code {child.process.returncode}; log {child.log})")
    return child.describe_exit()


@dataclass(frozen=True)
class NodeShare:
    """The shards one node runs in a multi-node job (osmi.placement): s<first> on, bound to `host`."""
    first: int
    count: int
    host: str  # the node's address; the balancer and the probes dial it


def bind_flags(kind: str, host: str) -> list[str]:
    """The flags that make a shard listen on `host`. tensorflow_model_server has none:
    it always listens on 0.0.0.0 (gRPC) and every interface (REST)."""
    if host == "127.0.0.1" or kind == "tensorflow_model_server":
        return []  # loopback: osmi-model-server's default
    return [f"--grpc_bind_host={host}"]


@dataclass
class Shard:
    name: str  # s<k>: also its HAProxy backend name
    port: int
    rest_port: int  # serves the shard's own request counter (TF-Serving's Prometheus page)
    gpu: str | None
    child: Child  # the shard, or (another node's shard) the srun step of its node's launcher
    host: str = "127.0.0.1"  # where the balancer, probes and counters reach it
    node: str | None = None  # the node it runs on; None: this machine, a child of ours
    pid: int | None = None  # its pid on its node, where that is not child's

    def manifest(self) -> dict[str, Any]:
        """Proof of one shard per GPU (and where it ran), for env.json."""
        return {"name": self.name, "port": self.port, "rest_port": self.rest_port, "gpu": self.gpu,
                "pid": self.pid or self.child.process.pid, "node": self.node or this_node(), "address": self.host}


@dataclass
class Balancer:
    port: int
    stats_port: int
    child: Child


class Fleet:
    """The shards and balancer of one run, children of `group` (stopped with it)."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group
        self.kind = ""  # the server the shards run (summary, env.json)
        self.given_command: list[str] = []  # the job script's server command, if any
        self.version: str | None = None  # as a running shard reports it (Triton); None: osmi.env asks
        self.argv: list[str] = []  # a shard's whole command line (its version is read from it)
        self.shards: list[Shard] = []
        self.balancer: Balancer | None = None

    def start_shards(self, count: int, *, model: str, server: str, given_command: list[str],
                     model_config: Path, monitoring_config: Path, log: Callable[[int], Path],
                     intra_op_threads: int, timeout_s: float, batching_file: Path | None = None,
                     on_node: NodeShare | None = None) -> None:
        """Starts `count` shards and returns once each answers a Predict for `model`.
        `batching_file`: the batching parameters file (server-side batching on), or None.
        `on_node`: only this node's share of them (osmi.node_shards), else all on loopback."""
        self.kind, prefix = server_command(server, given_command)
        self.given_command = list(given_command)
        share = on_node or NodeShare(0, count, "127.0.0.1")
        for j, k in enumerate(range(share.first, share.first + share.count)):
            port, rest_port = free_port(share.host), free_port(share.host)
            argv = self.api.argv(prefix, port, rest_port, bind_flags(self.kind, share.host), ShardConfig(
                model_config, monitoring_config, intra_op_threads, tuple(batching.server_flags(batching_file))))
            env = self.api.env(dict(os.environ))
            gpu = gpu_for_shard(j)  # j-th GPU of this node
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu  # one shard per GPU
            child = self.group.start(f"server {k}", argv, log(k), env)
            self.shards.append(Shard(f"s{k}", port, rest_port, gpu, child, host=share.host))
            self.argv = argv
        self._wait_ready(model, timeout_s)
        if self.shards:
            self.version = self.api.version(self.shards[0].host, self.shards[0].rest_port)
        for shard in self.shards:
            check_ports(shard.child, shard.port, shard.rest_port)

    @property
    def api(self) -> ServerKind:
        """How to start, probe and count the shards of this kind (osmi.server_kinds)."""
        return server_kind(self.kind, self.given_command)

    def _wait_ready(self, model: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {shard.name: shard for shard in self.shards}
        last_error: dict[str, str] = {}
        while pending:
            for name, shard in list(pending.items()):
                if not shard.child.alive():
                    raise SetupError(port_in_use(shard.child, shard.port, shard.rest_port))
                error = self.api.ready_error(f"{shard.host}:{shard.port}", model, PROBE_TIMEOUT_S)
                if error is None:
                    del pending[name]
                else:
                    last_error[name] = error
            if pending and time.monotonic() > deadline:
                raise SetupError(f"servers {sorted(pending)} not ready after {timeout_s:.0f} s: {last_error}")
            if pending:
                time.sleep(0.25)

    def start_balancer(self, command: list[str], *, config: Path, log: Path, request_timeout_s: float,
                       host: str = "127.0.0.1", port: int | None = None, threads: int = 1) -> Balancer:
        """HAProxy over every shard, per request; returns once it sees them all UP.
        `port`: None for a free one (tests pass a taken one)."""
        port, stats_port = port or free_port(), free_port()
        backends = [haproxy.Backend(s.name, s.host, s.port) for s in self.shards]
        write_atomic(config, haproxy.render_config(port, stats_port, backends, timeout_s=request_timeout_s,
                                                   host=host, threads=threads, health_uri=self.api.health_uri))
        if not shutil.which(command[0]):
            raise SetupError(f"{command[0]!r} not found (profile haproxy: {command}); "
                             "install Debian's haproxy (apt-get install haproxy)")
        child = self.group.start("haproxy", [*command, "-db", "-f", str(config)], log)
        self.balancer = Balancer(port, stats_port, child)
        try:
            haproxy.wait_all_up(stats_port, [b.name for b in backends], timeout_s=BALANCER_UP_S, alive=child.alive)
        except RuntimeError:
            raise SetupError(port_in_use(child, port, stats_port)) from None
        check_ports(child, port, stats_port)
        return self.balancer

    # ------------------------------------------------------------ during the run

    def manifest(self) -> list[dict[str, Any]]:
        return [shard.manifest() for shard in self.shards]

    def pids(self) -> dict[str, int]:
        """The shards that are this machine's processes (psutil sees no other node's)."""
        return {shard.name: shard.child.process.pid for shard in self.shards if shard.node is None}

    def served(self, model: str) -> dict[str, int | None]:
        """Each shard's own count of Predict calls for `model`; None where it cannot say."""
        counts: dict[str, int | None] = {}
        for shard in self.shards:
            try:
                counts[shard.name] = self.api.served(shard.host, shard.rest_port, model)
            except OSError:
                counts[shard.name] = None
        return counts

    def exited_shards(self) -> list[str]:
        """A reason for each shard that is no longer running."""
        return [f"server {s.name}{f' on node {s.node}' if s.node else ''} exited during the measured window "
                f"(code {s.child.process.returncode}); log {s.child.log}" for s in self.shards if not s.child.alive()]

    def balancer_gone(self, exc: Exception) -> str:
        """Why the balancer's stats page stopped answering."""
        child = self.balancer.child if self.balancer else None
        if child is not None and not child.alive():
            return f"the balancer (haproxy) exited with code {child.process.returncode} during the run; log {child.log}"
        return f"the balancer (haproxy) stopped answering on its stats port: {exc}"
