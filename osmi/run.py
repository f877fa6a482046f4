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
from osmi_ee.osmi import haproxy, metrics, protos
from osmi_ee.osmi.client import build_requests
from osmi_ee.osmi.env import manifest
from osmi_ee.osmi.export import exported_models
from osmi_ee.osmi.model_config import render_model_config
from osmi_ee.osmi.procs import Child, ProcessGroup, free_port
from osmi_ee.osmi.telemetry import Telemetry

EXIT_VALID, EXIT_ERROR, EXIT_INVALID = 0, 1, 3
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
        self.backend_counts: dict[str, int] = {}
        self.server_kind = ""
        self.server_argv: list[str] = []
        self.given_server_command = list(server_argv or [])
        self.shards: list[dict[str, Any]] = []  # name, port, GPU: proof of one shard per GPU
        self.telemetry: Telemetry | None = None
        self.server_children: list[Child] = []

    # ------------------------------------------------------------ stages

    def write_model_config(self) -> None:
        model = self.params["model"]
        base = Path(self.grid.serve.models_dir) / model
        if model not in exported_models(self.grid.serve.models_dir):
            raise SetupError(f"no exported model at {base}/<version>/saved_model.pb; "
                             f"run `make models` (osmi-export --models {model})")
        write_atomic(self.paths.model_config, render_model_config({model: base}))

    def start_servers(self) -> list[haproxy.Backend]:
        serve = self.grid.serve
        self.server_kind, prefix = server_command(serve.server, self.given_server_command)
        backends, children = [], []
        for k in range(self.params["servers"]):
            port = free_port()
            argv = [*prefix, f"--port={port}", "--rest_api_port=0",
                    f"--model_config_file={self.paths.model_config}"]
            if serve.intra_op_threads:
                argv.append(f"--tensorflow_intra_op_parallelism={serve.intra_op_threads}")
            env = dict(os.environ)
            gpu = gpu_for_shard(k)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu  # one shard per GPU
            children.append(self.group.start(f"server {k}", argv, self.paths.server_log(k), env))
            self.shards.append({"name": f"s{k}", "port": port, "gpu": gpu, "pid": children[-1].process.pid})
            backends.append(haproxy.Backend(f"s{k}", "127.0.0.1", port))
            self.server_argv = argv
        self.wait_servers_ready(backends, children)
        self.server_children = children
        return backends

    def wait_servers_ready(self, backends: list[haproxy.Backend], children: list[Child]) -> None:
        request = build_requests(self.params["model"], 1, seed=0, count=1)[0]
        deadline = time.monotonic() + self.grid.serve.startup_timeout_s
        pending = dict(zip([b.name for b in backends], zip(backends, children)))
        last_error: dict[str, str] = {}
        while pending:
            for name, (backend, child) in list(pending.items()):
                if not child.alive():
                    raise SetupError(child.describe_exit())
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
        port, stats_port = free_port(), free_port()
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
        try:
            haproxy.wait_all_up(stats_port, [b.name for b in backends], timeout_s=30, alive=child.alive)
        except RuntimeError:
            raise SetupError(child.describe_exit()) from None
        return port, stats_port

    def run_clients(self, port: int, stats_port: int) -> None:
        measure = self.grid.measure
        barrier = self.paths.barrier
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir(parents=True)
        m = self.params["clients"]
        job = self.grid.job
        use_srun = job.clients_launcher == "srun" or (job.clients_launcher == "auto" and job.nodes > 1)
        host = socket.gethostname() if job.nodes > 1 else "127.0.0.1"
        duration = self.measured_duration_s
        common = [sys.executable, "-m", "osmi_ee.osmi.client", f"--target={host}:{port}",
                  f"--model={self.params['model']}", f"--batch={self.params['batch']}",
                  f"--scenario={self.params['scenario']}", f"--streams={measure.streams}",
                  f"--warmup={measure.warmup_requests}", f"--warmup-s={measure.warmup_s}",
                  f"--timeout-s={measure.timeout_s}", f"--seed={measure.seed}", f"--barrier={barrier}",
                  f"--duration-s={duration}" if duration else f"--requests={measure.requests}",
                  f"--stop-file={barrier / 'stop'}"]
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
        before = haproxy.request_counts(stats_port)
        self.telemetry = Telemetry({s["name"]: s["pid"] for s in self.shards})
        self.telemetry.start()
        go = time.time() + 0.05
        write_atomic(barrier / "go", repr(go))
        progress("running", 50)
        if self.adaptive_windows:
            self.watch_stability(go, stats_port, children)

        if measure.duration_s:
            limit = self.measured_duration_s + measure.timeout_s + 60
        else:
            limit = measure.requests * measure.timeout_s + 60
        deadline = time.monotonic() + limit
        for child in children:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.problems.append(f"{child.name} still running after {limit:.0f} s; stopped")
        # A shard that died mid-window invalidates the run even when HAProxy hid it
        # by retrying its requests elsewhere: the load was not on N servers.
        for shard, child in zip(self.shards, self.server_children):
            if not child.alive():
                self.problems.append(f"server {shard['name']} exited during the measured window "
                                     f"(code {child.process.returncode}); log {child.log}")
        self.group.stop(children, grace_s=5)
        self.telemetry.stop()
        after = haproxy.request_counts(stats_port)
        self.backend_counts = {name: after.get(name, 0) - before.get(name, 0) for name in after}
        write_json(self.paths.backends, {"before": before, "after": after, "measured": self.backend_counts})
        for k in range(m):
            child = children[0] if use_srun else children[k]
            entry: dict[str, Any] = {"client": k, "exit_code": child.process.returncode}
            try:
                entry.update(json.loads(self.paths.client_summary(k).read_text()))
            except (OSError, ValueError):
                entry["sent"] = None
            self.clients.append(entry)

    @property
    def adaptive_windows(self) -> bool:
        m = self.grid.measure
        return bool(m.duration_s and m.stability_max_windows > m.stability_windows > 1)

    @property
    def window_len_s(self) -> float:
        m = self.grid.measure
        return (m.duration_s or 0) / m.stability_windows

    @property
    def measured_duration_s(self) -> float | None:
        """The clients' time limit: up to max windows when the runner may extend."""
        m = self.grid.measure
        if self.adaptive_windows:
            return self.window_len_s * m.stability_max_windows
        return m.duration_s

    def stability_parts(self) -> int:
        """Windows to cut the measured interval into: k, or as many as were measured."""
        m = self.grid.measure
        if not self.adaptive_windows:
            return m.stability_windows
        measured = self.last_window_s or 0.0
        return max(m.stability_windows, round(measured / self.window_len_s))

    def watch_stability(self, go: float, stats_port: int, children: list[Child]) -> None:
        """Measure window after window until the last k agree (or max windows), then
        tell the clients to stop. Live rates come from HAProxy's request counters;
        the verdict in the summary is recomputed from the clients' own records."""
        m = self.grid.measure
        totals = [sum(haproxy.request_counts(stats_port).values())]
        rates: list[float] = []
        for w in range(1, m.stability_max_windows + 1):
            time.sleep(max(0.0, go + w * self.window_len_s - time.time()))
            if not all(c.alive() for c in children):
                break
            totals.append(sum(haproxy.request_counts(stats_port).values()))
            rates.append((totals[-1] - totals[-2]) / self.window_len_s)
            last = rates[-m.stability_windows:]
            if len(rates) >= m.stability_windows and min(last) > 0 \
                    and max(last) / min(last) - 1 <= m.stability_tolerance:
                break
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
        measured = records["phase"] == metrics.MEASURED
        self.last_window_s = metrics.window_s(records["start_ns"][measured], records["latency_ns"][measured])
        figures = metrics.summarize(
            records, batch=self.params["batch"], clients=self.clients,
            backend_counts=self.backend_counts, min_backend_share=measure.min_backend_share,
            problems=self.problems, stability_windows=self.stability_parts(),
            stability_tolerance=measure.stability_tolerance, min_duration_s=measure.min_duration_s,
            target_rate=self.params["rate"], mode="duration" if measure.duration_s else "count",
            stability_last=measure.stability_windows)
        if self.telemetry is not None:
            figures["telemetry"] = self.telemetry.summary(figures["samples_ok"])
            self.telemetry.write_parquet(self.paths.telemetry)
        return {
            "schema": SCHEMA,
            "experiment_id": self.raw.get("sweep", {}).get("experiment_id", self.paths.root.name),
            "params": self.params,
            **figures,
            "clients": self.clients,
            "server_kind": self.server_kind,
            "started_at": started,
            "finished_at": now_iso(),
        }

    # ------------------------------------------------------------ main

    def execute(self) -> int:
        started = now_iso()
        write_atomic(self.paths.status, "running\n")
        for stale in (self.paths.summary, self.paths.status.with_name("status.reason")):
            stale.unlink(missing_ok=True)
        progress("running", 5)
        try:
            self.write_model_config()
            backends = self.start_servers()
            progress("running", 30)
            port, stats_port = self.start_balancer(backends)
            progress("running", 40)
            self.run_clients(port, stats_port)
            progress("running", 90)
        except (SetupError, Cancelled) as exc:
            self.problems.append(str(exc))
        except Exception as exc:  # a bug must still end in teardown and a summary
            traceback.print_exc()
            self.problems.append(f"internal error: {exc!r}")
        finally:
            if self.telemetry is not None:
                self.telemetry.stop()
            self.group.stop()
        write_json(self.paths.env, {**manifest(self.grid.profile.haproxy, self.server_argv),
                                    "shards": self.shards, "config": self.raw,
                                    "started_at": started, "finished_at": now_iso()})
        summary = self.summary(started)
        write_json(self.paths.summary, summary)
        status = "valid" if summary["valid"] else ("invalid" if self.clients else "failed")
        write_atomic(self.paths.status, status + "\n")
        for reason in summary["reasons"]:
            print(f"INVALID: {reason}", file=sys.stderr, flush=True)
        progress("done" if summary["valid"] else "failed", 100)
        if summary["valid"]:
            return EXIT_VALID
        return EXIT_INVALID if status == "invalid" else EXIT_ERROR


def _raise_cancelled(signum: int, _frame: Any) -> None:
    # Only the first signal interrupts; teardown must not be interrupted again.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Cancelled(f"cancelled by signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osmi-run",
        description="Run one experiment from its config.yaml: servers, HAProxy, clients, teardown, summary.")
    parser.add_argument("--config", default="config.yaml", help="the experiment's generated config.yaml")
    parser.add_argument("server_command", nargs="*",
                        help="after `--`: how to start a model-server shard (default: decided here)")
    args = parser.parse_args(argv)
    try:
        run = ExperimentRun(Path(args.config), args.server_command)
    except GridError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    signal.signal(signal.SIGTERM, _raise_cancelled)
    signal.signal(signal.SIGINT, _raise_cancelled)
    return run.execute()


if __name__ == "__main__":
    sys.exit(main())
