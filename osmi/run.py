"""One experiment, inside its job: servers up, balancer, clients, teardown, verdict.

    config.yaml -> N model-server shards -> HAProxy (per-request h2) -> M clients
                -> results/{summary.json, requests-client<k>.parquet, env.json,
                   backends.json} + status + progress lines

Whatever happens (error, SIGTERM from scancel, Ctrl-C), every child is
stopped and a summary is written; the exit status is 0 only for a VALID run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import traceback
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from osmi_ee.ee.config import GridError, load_experiment_config
from osmi_ee.ee.paths import ExperimentPaths, write_atomic, write_json
from osmi_ee.osmi import haproxy, metrics, protos, server_metrics
from osmi_ee.osmi.client import build_requests
from osmi_ee.osmi.env import MachineLoad, busy_machine_note, manifest, server_version
from osmi_ee.osmi.export import exported_models
from osmi_ee.osmi.model_config import render_model_config
from osmi_ee.osmi.procs import Child, ProcessGroup, describe_pid, foreign_listeners, free_port
from osmi_ee.osmi.telemetry import Telemetry

EXIT_VALID, EXIT_ERROR, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 3, 4
SCHEMA = "osmi-ee/summary/1"


class Cancelled(Exception):
    pass


class SetupError(Exception):
    pass


def progress(status: str, percent: int) -> None:
    # cloudmesh-ee's `cms ee list` reads these lines from the job output.
    pid = os.environ.get("SLURM_JOB_ID", str(os.getpid()))
    print(f"# cloudmesh status={status} progress={percent} pid={pid}", flush=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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


class ExperimentRun:
    def __init__(self, config_path: Path, server_argv: list[str] | None = None):
        self.config_path = config_path.resolve()
        self.paths = ExperimentPaths(self.config_path.parent)
        self.grid, self.params, self.raw = load_experiment_config(self.config_path)
        self.group = ProcessGroup()
        self.problems: list[str] = []
        self.clients: list[dict[str, Any]] = []
        self.server_kind = ""
        self.server_argv: list[str] = []
        self.given_server_command = list(server_argv or [])
        self.shards: list[dict[str, Any]] = []  # name, port, GPU: proof of one shard per GPU
        self.telemetry: Telemetry | None = None
        self.server_children: list[Child] = []
        self.attempt = 0
        self.attempt_id = ""
        self.cancelled = False
        self.balancer_port: int | None = None  # None: a free one (tests set it to provoke a clash)
        self.backend_counts: dict[str, int] | None = None  # None: the balancer could not be read
        self.server_counts: dict[str, int | None] = {}
        self.windows_measured = 0
        self.window_edges_ns: list[int] = []
        self.load: dict[str, Any] | None = None
        self.balancer: Child | None = None

    # ------------------------------------------------------------ stages

    def write_model_config(self) -> None:
        model = self.params["model"]
        base = Path(self.grid.serve.models_dir) / model
        if model not in exported_models(self.grid.serve.models_dir):
            raise SetupError(f"no exported model at {base}/<version>/saved_model.pb; "
                             f"run `make models` (osmi-export --models {model})")
        write_atomic(self.paths.model_config, render_model_config({model: base}))
        write_atomic(self.paths.monitoring_config, server_metrics.monitoring_config_text())

    def start_servers(self) -> list[haproxy.Backend]:
        serve = self.grid.serve
        self.server_kind, prefix = server_command(serve.server, self.given_server_command)
        backends, children = [], []
        for k in range(self.params["servers"]):
            port, rest_port = free_port(), free_port()
            # The REST port serves the shard's own request counter (TF-Serving's
            # Prometheus page), read before and after the window.
            argv = [*prefix, f"--port={port}", f"--rest_api_port={rest_port}",
                    f"--model_config_file={self.paths.model_config}",
                    f"--monitoring_config_file={self.paths.monitoring_config}"]
            if serve.intra_op_threads:
                argv.append(f"--tensorflow_intra_op_parallelism={serve.intra_op_threads}")
            env = dict(os.environ)
            gpu = gpu_for_shard(k)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu  # one shard per GPU
            children.append(self.group.start(f"server {k}", argv, self.paths.server_log(k), env))
            self.shards.append({"name": f"s{k}", "port": port, "rest_port": rest_port, "gpu": gpu,
                                "pid": children[-1].process.pid})
            backends.append(haproxy.Backend(f"s{k}", "127.0.0.1", port))
            self.server_argv = argv
        self.server_children = children
        self.wait_servers_ready(backends, children)
        for shard, child in zip(self.shards, children):
            self.check_ports(child, shard["port"], shard["rest_port"])
        return backends

    def check_ports(self, child: Child, *ports: int) -> None:
        """Only our own process may listen on the ports we handed it: another listener
        (SO_REUSEPORT lets two share a port) would silently serve part of the load."""
        for port in ports:
            others = foreign_listeners(port, child.process.pid)
            if others:
                raise SetupError(f"port {port} of {child.name} is also bound by "
                                 f"{', '.join(describe_pid(p) for p in others)}; another process listens on it")

    def port_in_use(self, child: Child, *ports: int) -> str:
        """Why a child died at start: a port someone else holds, else its log."""
        for port in ports:
            others = foreign_listeners(port, child.process.pid)
            if others:
                return (f"port {port} is in use by {', '.join(describe_pid(p) for p in others)}, "
                        f"so {child.name} could not listen on it ({child.name} exited with code "
                        f"{child.process.returncode}; log {child.log})")
        return child.describe_exit()

    def wait_servers_ready(self, backends: list[haproxy.Backend], children: list[Child]) -> None:
        request = build_requests(self.params["model"], 1, seed=0, count=1)[0]
        deadline = time.monotonic() + self.grid.serve.startup_timeout_s
        pending = dict(zip([b.name for b in backends], zip(backends, children)))
        last_error: dict[str, str] = {}
        while pending:
            for name, (backend, child) in list(pending.items()):
                if not child.alive():
                    shard = self.shards[int(name[1:])]
                    raise SetupError(self.port_in_use(child, shard["port"], shard["rest_port"]))
                error = probe(f"{backend.host}:{backend.port}", request, timeout_s=30)
                if error is None:
                    del pending[name]
                else:
                    last_error[name] = error
            if pending and time.monotonic() > deadline:
                raise SetupError(f"servers {sorted(pending)} not ready after "
                                 f"{self.grid.serve.startup_timeout_s:.0f} s: {last_error}")
            if pending:
                time.sleep(0.25)

    def start_balancer(self, backends: list[haproxy.Backend]) -> tuple[int, int]:
        port, stats_port = self.balancer_port or free_port(), free_port()
        # Clients on other nodes must reach the balancer; on one node keep it on loopback.
        bind = "0.0.0.0" if self.grid.job.nodes > 1 else "127.0.0.1"
        cfg = haproxy.render_config(port, stats_port, backends, timeout_s=self.grid.measure.timeout_s,
                                    host=bind)
        write_atomic(self.paths.haproxy_config, cfg)
        command = self.grid.profile.haproxy
        if not shutil.which(command[0]):
            raise SetupError(f"{command[0]!r} not found (profile haproxy: {command}); "
                             "install Debian's haproxy (apt-get install haproxy)")
        child = self.group.start("haproxy", [*command, "-db", "-f", str(self.paths.haproxy_config)],
                                 self.paths.haproxy_log)
        self.balancer = child
        try:
            haproxy.wait_all_up(stats_port, [b.name for b in backends], timeout_s=30, alive=child.alive)
        except RuntimeError:
            raise SetupError(self.port_in_use(child, port, stats_port)) from None
        self.check_ports(child, port, stats_port)
        return port, stats_port

    def client_limits(self) -> list[str]:
        """The clients' own bound: enough for the longest measurement the window loop
        may ask for; the loop ends them earlier through the stop file."""
        m, scenario = self.grid.measure, self.params["scenario"]
        if m.duration_s:
            per_window = m.duration_s / m.stability_windows
            return [f"--duration-s={min(per_window * m.stability_max_windows, m.stability_max_s)}"]
        if scenario == "offline":  # all requests at once: one batch, no windows to add
            return [f"--requests={m.requests}"]
        return [f"--requests={math.ceil(m.requests * m.stability_max_windows / m.stability_windows)}"]

    def run_clients(self, port: int, stats_port: int) -> None:
        measure = self.grid.measure
        barrier = self.paths.barrier
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir(parents=True)
        m = self.params["clients"]
        job = self.grid.job
        use_srun = job.clients_launcher == "srun" or (job.clients_launcher == "auto" and job.nodes > 1)
        host = socket.gethostname() if job.nodes > 1 else "127.0.0.1"
        common = [sys.executable, "-m", "osmi_ee.osmi.client", f"--target={host}:{port}",
                  f"--model={self.params['model']}", f"--batch={self.params['batch']}",
                  f"--scenario={self.params['scenario']}", f"--streams={measure.streams}",
                  f"--warmup={measure.warmup_requests}", f"--warmup-s={measure.warmup_s}",
                  f"--timeout-s={measure.timeout_s}", f"--seed={measure.seed}", f"--barrier={barrier}",
                  *self.client_limits(), f"--stop-file={barrier / 'stop'}"]
        if self.params["rate"]:  # the target is for all clients together
            common.append(f"--rate={self.params['rate'] / m}")
        children = []
        if use_srun:
            if not os.environ.get("SLURM_JOB_ID") or not shutil.which("srun"):
                raise SetupError("job.clients_launcher is srun but this is not a Slurm job")
            # One step of M tasks spread over the job's nodes; each task's id is its
            # SLURM_PROCID, and {k} in the paths becomes that id. --overlap: the step
            # shares CPUs with the batch step that runs the shards.
            argv = ["srun", "--overlap", "--overcommit", f"--nodes={job.nodes}", f"--ntasks={m}",
                    "--kill-on-bad-exit=0", *common,
                    f"--records={self.paths.results}/requests-client{{k}}.parquet",
                    f"--summary={self.paths.results}/client-{{k}}.json"]
            children.append(self.group.start("clients (srun)", argv, self.paths.logs / "clients-srun.log"))
        else:
            for k in range(m):
                argv = [*common, f"--client-id={k}", f"--records={self.paths.client_records(k)}",
                        f"--summary={self.paths.client_summary(k)}"]
                children.append(self.group.start(f"client {k}", argv, self.paths.client_log(k)))

        # Everyone warmed up before the window opens, so the window holds M active clients.
        warm_deadline = time.monotonic() + measure.timeout_s * (measure.warmup_requests + 1) + 60
        while len(list(barrier.glob("ready-*"))) < m:
            dead = [c for c in children if not c.alive()]
            if dead:
                raise SetupError(dead[0].describe_exit())
            if time.monotonic() > warm_deadline:
                raise SetupError("clients did not finish warm-up in time")
            time.sleep(0.01)
        # Both ends counted over the same window: the balancer per backend, each shard itself.
        before = haproxy.request_counts(stats_port)
        downs_before = haproxy.down_transitions(stats_port)
        served_before = self.read_server_counts()
        self.telemetry = Telemetry({s["name"]: s["pid"] for s in self.shards})
        self.telemetry.start()
        machine = MachineLoad()
        go = time.time() + 0.05
        write_atomic(barrier / "go", repr(go))
        progress("running", 50)
        self.measure_windows(go, stats_port, children)

        limit = measure.stability_max_s + measure.timeout_s + 60
        deadline = time.monotonic() + limit
        for child in children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.problems.append(f"{child.name} still running after {limit:.0f} s; stopped")
        self.load = machine.finish()
        # A shard that died mid-window invalidates the run even when HAProxy hid it
        # by retrying its requests elsewhere: the load was not on N servers.
        for shard, child in zip(self.shards, self.server_children):
            if not child.alive():
                self.problems.append(f"server {shard['name']} exited during the measured window "
                                     f"(code {child.process.returncode}); log {child.log}")
        self.group.stop(children, grace_s=5)
        self.telemetry.stop()
        served_after = self.read_server_counts()
        self.server_counts = {name: (served_after[name] - served_before[name])
                              if served_after.get(name) is not None and served_before.get(name) is not None
                              else None for name in served_before}
        try:
            after = haproxy.request_counts(stats_port)
            self.backend_counts = {name: after.get(name, 0) - before.get(name, 0) for name in after}
            for name, downs in sorted(haproxy.down_transitions(stats_port).items()):
                if downs > downs_before.get(name, 0):
                    self.problems.append(
                        f"server {name} stopped answering the balancer's health checks during the run "
                        f"(HAProxy marked it DOWN {downs - downs_before.get(name, 0)} time(s)): hung or "
                        "overloaded; its log: " + str(self.paths.server_log(int(name[1:]))))
        except OSError as exc:
            after = None
            self.problems.append(self.balancer_gone(exc))
        write_json(self.paths.backends, {"before": before, "after": after, "measured": self.backend_counts,
                                         "served_by_shard": self.server_counts})
        for k in range(m):
            child = children[0] if use_srun else children[k]
            entry: dict[str, Any] = {"client": k, "exit_code": child.process.returncode}
            try:
                entry.update(json.loads(self.paths.client_summary(k).read_text()))
            except (OSError, ValueError):
                entry["sent"] = None
            self.clients.append(entry)

    def balancer_gone(self, exc: Exception) -> str:
        if self.balancer is not None and not self.balancer.alive():
            return (f"the balancer (haproxy) exited with code {self.balancer.process.returncode} during "
                    f"the run; log {self.balancer.log}")
        return f"the balancer (haproxy) stopped answering on its stats port: {exc}"

    def read_server_counts(self) -> dict[str, int | None]:
        """Each shard's own count of Predict calls for this model; None where it cannot say."""
        counts: dict[str, int | None] = {}
        for shard in self.shards:
            try:
                counts[shard["name"]] = server_metrics.read_request_counts(
                    "127.0.0.1", shard["rest_port"], timeout_s=5).get(self.params["model"], 0)
            except OSError:
                counts[shard["name"]] = None
        return counts

    def measure_windows(self, go: float, stats_port: int, children: list[Child]) -> None:
        """Measure window after window until the last k agree and there are enough
        requests, or the cap (windows, seconds) is reached; then tell the clients to stop.

        A window lasts duration_s / k (count mode: holds requests x clients / k
        requests), and at least MIN_WINDOW_S with MIN_WINDOW_REQUESTS in it, so no
        rate rests on a handful of requests or a few polls. Live counts come from
        HAProxy; the verdict recomputes each window's rate from the clients' own
        records, cut at the same edges, with the same stability rule.
        """
        m = self.grid.measure
        k = m.stability_windows
        per_window = (m.requests or 1) * self.params["clients"] / k if not m.duration_s else 0
        min_len = m.duration_s / k if m.duration_s else metrics.MIN_WINDOW_S
        min_count = max(per_window, metrics.MIN_WINDOW_REQUESTS)
        end = go + m.stability_max_s

        def total() -> int | None:
            try:
                return sum(haproxy.request_counts(stats_port).values())
            except OSError:
                return None

        start_total = total()
        if start_total is None:
            return  # the balancer is gone; the summary says so
        time.sleep(max(0.0, go - time.time()))
        edges, counts = [go], [start_total]
        rates: list[float] = []
        closed = True
        while len(rates) < m.stability_max_windows and closed:
            closed = False
            time.sleep(max(0.0, min(edges[-1] + min_len, end) - time.time()))
            while all(c.alive() for c in children):  # wait for this window to close
                now, n_now = time.time(), total()
                if n_now is None:
                    break
                if n_now - counts[-1] >= min_count or now >= end:
                    closed = True
                    break
                time.sleep(0.02)
            if not closed:
                break  # the clients ended (their own bound) or the balancer went away
            edges.append(now)
            counts.append(n_now)
            rates.append((n_now - counts[-2]) / (now - edges[-2]))
            windows = [{"samples_per_s": r} for r in rates]
            settled = len(rates) >= k and metrics.stability_problem(windows, m.stability_tolerance, k) is None
            if (settled and n_now - start_total >= m.min_requests and now - go >= m.min_duration_s) or now >= end:
                break
        self.window_edges_ns = [int(t * 1e9) for t in edges]
        self.windows_measured = len(rates)
        write_atomic(self.paths.barrier / "stop", repr(time.time()))

    # ------------------------------------------------------------ results

    def load_records(self) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(self.paths.client_records(k)) for k in range(self.params["clients"])
                  if self.paths.client_records(k).exists()]
        if not tables:
            return {name: np.zeros(0, np.int64) for name in ("client", "phase", "start_ns", "latency_ns", "code")}
        table = pa.concat_tables(tables)
        return {name: table.column(name).to_numpy() for name in table.column_names}

    def summary(self, started: str) -> dict[str, Any]:
        measure = self.grid.measure
        records = self.load_records()
        # The records cut at the live loop's window edges (else k equal parts); the
        # last k must agree.
        parts = max(measure.stability_windows, self.windows_measured)
        edges = self.window_edges_ns if self.windows_measured >= measure.stability_windows else None
        figures = metrics.summarize(
            records, batch=self.params["batch"], clients=self.clients,
            backend_counts=self.backend_counts, server_counts=self.server_counts,
            min_backend_share=measure.min_backend_share, problems=self.problems,
            stability_windows=parts, stability_tolerance=measure.stability_tolerance,
            min_duration_s=measure.min_duration_s, min_requests=measure.min_requests,
            target_rate=self.params["rate"], mode="duration" if measure.duration_s else "count",
            stability_last=measure.stability_windows, window_edges_ns=edges)
        figures["machine_load"] = self.load
        if figures["measurement"]["stable"] is False:
            figures["measurement"]["note"] = busy_machine_note(self.load)
        if self.telemetry is not None:
            figures["telemetry"] = self.telemetry.summary(figures["samples_ok"])
            self.telemetry.write_parquet(self.paths.telemetry)
        return {
            "schema": SCHEMA,
            "experiment_id": self.raw.get("sweep", {}).get("experiment_id", self.paths.root.name),
            "attempt": {"number": self.attempt, "id": self.attempt_id},
            "params": self.params,
            **figures,
            "clients": self.clients,
            "server_kind": self.server_kind,
            "server_version": server_version(self.server_kind, self.server_argv),
            "started_at": started,
            "finished_at": now_iso(),
        }

    # ------------------------------------------------------------ main

    def write_cancelled(self, started: str) -> None:
        """The short verdict of a cancelled run, written before teardown; the full
        summary replaces it once everything is down."""
        write_json(self.paths.summary, {
            "schema": SCHEMA, "experiment_id": self.raw.get("sweep", {}).get("experiment_id", self.paths.root.name),
            "attempt": {"number": self.attempt, "id": self.attempt_id}, "params": self.params,
            "valid": False, "reasons": list(self.problems), "requests": {"sent": None, "ok": None, "failed": None},
            "throughput": {"samples_per_s": None, "samples_per_s_ci95": None, "requests_per_s": None},
            "started_at": started, "finished_at": now_iso()})
        write_atomic(self.paths.status, "cancelled\n")

    def execute(self) -> int:
        started = now_iso()
        # A fresh attempt: whatever an earlier one left moves to attempts/<n>/, so the
        # verdict, status and analysis read only this attempt's files. The executor's
        # log of this job (already open) stays.
        own_logs = {self.paths.job_log.name}
        if os.environ.get("SLURM_JOB_ID"):
            own_logs.add(f"slurm-{os.environ['SLURM_JOB_ID']}.out")
        self.attempt = self.paths.start_attempt(keep_logs=own_logs)
        self.attempt_id = f"{self.attempt}-{started}"
        self.paths.results.mkdir(parents=True, exist_ok=True)
        write_atomic(self.paths.status, "running\n")
        progress("running", 5)
        try:
            _Signals.arm()
            self.write_model_config()
            backends = self.start_servers()
            progress("running", 30)
            port, stats_port = self.start_balancer(backends)
            progress("running", 40)
            self.run_clients(port, stats_port)
            progress("running", 90)
        except Cancelled as exc:
            _Signals.disarm()
            self.cancelled = True
            self.problems.append(str(exc))
            # Slurm's SIGKILL may follow within seconds (KillWait): a verdict first.
            self.write_cancelled(started)
        except SetupError as exc:
            self.problems.append(str(exc))
        except Exception as exc:  # a bug must still end in teardown and a summary
            traceback.print_exc()
            self.problems.append(f"internal error: {exc!r}")
        finally:
            _Signals.disarm()
            if _Signals.received is not None and not self.cancelled:
                # The signal reached the whole job's group: a child may have died of it
                # first (and be the error we caught), but the run was cancelled.
                self.cancelled = True
                self.problems.insert(0, f"cancelled by signal {signal.Signals(_Signals.received).name}")
                self.write_cancelled(started)
            if self.telemetry is not None:
                self.telemetry.stop()
            self.group.stop(grace_s=1.0 if self.cancelled else 10.0)
        write_json(self.paths.env, {**manifest(self.grid.profile.haproxy, self.server_argv),
                                    "shards": self.shards, "config": self.raw,
                                    "attempt": {"number": self.attempt, "id": self.attempt_id},
                                    "machine_load": self.load,
                                    "started_at": started, "finished_at": now_iso()})
        summary = self.summary(started)
        write_json(self.paths.summary, summary)
        if summary["valid"]:
            status = "valid"
        elif self.cancelled:
            status = "cancelled"
        else:
            status = "invalid" if self.clients else "failed"
        write_atomic(self.paths.status, status + "\n")
        for reason in summary["reasons"]:
            print(f"INVALID: {reason}", file=sys.stderr, flush=True)
        progress("done" if summary["valid"] else status, 100)
        if summary["valid"]:
            return EXIT_VALID
        if status == "cancelled":
            return EXIT_CANCELLED
        return EXIT_INVALID if status == "invalid" else EXIT_ERROR


class _Signals:
    """SIGTERM/SIGINT: raise Cancelled while the job measures (so teardown and a verdict
    follow at once), otherwise only remember it: the summary and status being written
    must not be cut in half."""

    armed = False
    received: int | None = None

    @classmethod
    def handle(cls, signum: int, _frame: Any) -> None:
        if cls.received is None:
            cls.received = signum
        if cls.armed:
            cls.armed = False  # only the first signal interrupts
            raise Cancelled(f"cancelled by signal {signal.Signals(signum).name}")

    @classmethod
    def arm(cls) -> None:
        if cls.received is not None:  # it came while we were starting
            raise Cancelled(f"cancelled by signal {signal.Signals(cls.received).name}")
        cls.armed = True

    @classmethod
    def disarm(cls) -> None:
        cls.armed = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osmi-run",
        description="Run one experiment from its config.yaml: servers, HAProxy, clients, teardown, summary.")
    parser.add_argument("--config", default="config.yaml", help="the experiment's generated config.yaml")
    parser.add_argument("server_command", nargs="*",
                        help="after `--`: how to start a model-server shard (default: decided here)")
    args = parser.parse_args(argv)
    # At once: a cancel that arrives while we start is still answered with a verdict.
    signal.signal(signal.SIGTERM, _Signals.handle)
    signal.signal(signal.SIGINT, _Signals.handle)
    try:
        run = ExperimentRun(Path(args.config), args.server_command)
    except GridError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    return run.execute()


if __name__ == "__main__":
    sys.exit(main())
