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
from osmi_ee.osmi import haproxy, protos, server_metrics
from osmi_ee.osmi.client import build_requests
from osmi_ee.osmi.export import exported_models
from osmi_ee.osmi.model_config import render_model_config
from osmi_ee.osmi.procs import Child, ProcessGroup, describe_pid, foreign_listeners, free_port

BALANCER_UP_S = 30.0  # HAProxy must see every shard UP within this
PROBE_TIMEOUT_S = 30.0  # one readiness Predict


class SetupError(Exception):
    """Something could not be brought up; the message names the part and why."""


def server_command(kind: str, given: list[str]) -> tuple[str, list[str]]:
    """(server kind, argv prefix): the job script's command, else TF-Serving where
    asked or found, else our compatible server."""
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


@dataclass
class Shard:
    name: str  # s<k>: also its HAProxy backend name
    port: int
    rest_port: int  # serves the shard's own request counter (TF-Serving's Prometheus page)
    gpu: str | None
    child: Child

    def manifest(self) -> dict[str, Any]:
        """Proof of one shard per GPU, for env.json."""
        return {"name": self.name, "port": self.port, "rest_port": self.rest_port, "gpu": self.gpu,
                "pid": self.child.process.pid}


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
        self.argv: list[str] = []  # a shard's whole command line (its version is read from it)
        self.shards: list[Shard] = []
        self.balancer: Balancer | None = None

    def start_shards(self, count: int, *, model: str, server: str, given_command: list[str],
                     model_config: Path, monitoring_config: Path, log: Callable[[int], Path],
                     intra_op_threads: int, timeout_s: float) -> None:
        """Starts `count` shards and returns once each answers a Predict for `model`."""
        self.kind, prefix = server_command(server, given_command)
        for k in range(count):
            port, rest_port = free_port(), free_port()
            argv = [*prefix, f"--port={port}", f"--rest_api_port={rest_port}",
                    f"--model_config_file={model_config}", f"--monitoring_config_file={monitoring_config}"]
            if intra_op_threads:
                argv.append(f"--tensorflow_intra_op_parallelism={intra_op_threads}")
            env = dict(os.environ)
            gpu = gpu_for_shard(k)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu  # one shard per GPU
            child = self.group.start(f"server {k}", argv, log(k), env)
            self.shards.append(Shard(f"s{k}", port, rest_port, gpu, child))
            self.argv = argv
        self._wait_ready(build_requests(model, 1, seed=0, count=1)[0], timeout_s)
        for shard in self.shards:
            check_ports(shard.child, shard.port, shard.rest_port)

    def _wait_ready(self, request: bytes, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = {shard.name: shard for shard in self.shards}
        last_error: dict[str, str] = {}
        while pending:
            for name, shard in list(pending.items()):
                if not shard.child.alive():
                    raise SetupError(port_in_use(shard.child, shard.port, shard.rest_port))
                error = probe(f"127.0.0.1:{shard.port}", request, timeout_s=PROBE_TIMEOUT_S)
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
        backends = [haproxy.Backend(s.name, "127.0.0.1", s.port) for s in self.shards]
        write_atomic(config, haproxy.render_config(port, stats_port, backends, timeout_s=request_timeout_s,
                                                   host=host, threads=threads))
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
        return {shard.name: shard.child.process.pid for shard in self.shards}

    def served(self, model: str) -> dict[str, int | None]:
        """Each shard's own count of Predict calls for `model`; None where it cannot say."""
        counts: dict[str, int | None] = {}
        for shard in self.shards:
            try:
                counts[shard.name] = server_metrics.read_request_counts(
                    "127.0.0.1", shard.rest_port, timeout_s=5).get(model, 0)
            except OSError:
                counts[shard.name] = None
        return counts

    def exited_shards(self) -> list[str]:
        """A reason for each shard that is no longer running."""
        return [f"server {s.name} exited during the measured window (code {s.child.process.returncode}); "
                f"log {s.child.log}" for s in self.shards if not s.child.alive()]

    def balancer_gone(self, exc: Exception) -> str:
        """Why the balancer's stats page stopped answering."""
        child = self.balancer.child if self.balancer else None
        if child is not None and not child.alive():
            return f"the balancer (haproxy) exited with code {child.process.returncode} during the run; log {child.log}"
        return f"the balancer (haproxy) stopped answering on its stats port: {exc}"
