"""One experiment, inside its job: servers up, balancer, clients, teardown, verdict.

    config.yaml -> N model-server shards -> HAProxy (per-request h2) -> M clients
                -> results/{summary.json, requests-client<k>.parquet, env.json,
                   backends.json} + status + progress lines

This module orchestrates: the attempt, the phases in order, the records and the
verdict. Bringing the servers up is osmi.fleet's job, the measurement windows
osmi.window's, the figures and rules osmi.metrics'. Whatever happens (error,
SIGTERM from scancel, Ctrl-C), every child is stopped and a summary is written;
the exit status is 0 only for a VALID run.
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

import numpy as np

from osmi_ee.ee.config import GridError, load_experiment_config
from osmi_ee.ee.paths import ExperimentPaths, write_atomic, write_json
from osmi_ee.osmi import haproxy, metrics
from osmi_ee.osmi.client import client_argv
from osmi_ee.osmi.env import MachineLoad, busy_machine_note, manifest, server_version
from osmi_ee.osmi.fleet import Balancer, Fleet, SetupError, write_server_configs
from osmi_ee.osmi.procs import Child, ProcessGroup
from osmi_ee.osmi.schema import SUMMARY_SCHEMA
from osmi_ee.osmi.telemetry import Telemetry
from osmi_ee.osmi.window import Windows, client_limits, measure_windows

EXIT_VALID, EXIT_ERROR, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 3, 4


class Cancelled(Exception):
    pass


def progress(status: str, percent: int) -> None:
    # cloudmesh-ee's `cms ee list` reads these lines from the job output.
    pid = os.environ.get("SLURM_JOB_ID", str(os.getpid()))
    print(f"# cloudmesh status={status} progress={percent} pid={pid}", flush=True)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ExperimentRun:
    """One attempt at one experiment: the phases in order, then the verdict."""

    def __init__(self, config_path: Path, server_argv: list[str] | None = None):
        self.config_path = config_path.resolve()
        self.paths = ExperimentPaths(self.config_path.parent)
        self.grid, self.params, self.raw = load_experiment_config(self.config_path)
        self.group = ProcessGroup()
        self.problems: list[str] = []
        self.clients: list[dict[str, Any]] = []
        self.given_server_command = list(server_argv or [])
        self.fleet = Fleet(self.group)
        self.telemetry: Telemetry | None = None
        self.attempt = 0
        self.attempt_id = ""
        self.cancelled = False
        self.balancer_port: int | None = None  # None: a free one (tests set it to provoke a clash)
        self.backend_counts: dict[str, int] | None = None  # None: the balancer could not be read
        self.server_counts: dict[str, int | None] = {}
        self.windows = Windows()  # what the live window loop measured
        self.load: dict[str, Any] | None = None

    @property
    def experiment_id(self) -> str:
        return self.raw.get("sweep", {}).get("experiment_id", self.paths.root.name)

    # ------------------------------------------------------------ stages

    def start_fleet(self) -> Balancer:
        serve, paths = self.grid.serve, self.paths
        write_server_configs(self.params["model"], serve.models_dir, paths.model_config, paths.monitoring_config)
        self.fleet.start_shards(self.params["servers"], model=self.params["model"], server=serve.server,
                                given_command=self.given_server_command, model_config=paths.model_config,
                                monitoring_config=paths.monitoring_config, log=paths.server_log,
                                intra_op_threads=serve.intra_op_threads, timeout_s=serve.startup_timeout_s)
        progress("running", 30)
        # Clients on other nodes must reach the balancer; on one node keep it on loopback.
        return self.fleet.start_balancer(
            self.grid.profile.haproxy, config=paths.haproxy_config, log=paths.haproxy_log,
            request_timeout_s=self.grid.measure.timeout_s, threads=serve.balancer_threads,
            host="0.0.0.0" if self.grid.job.nodes > 1 else "127.0.0.1", port=self.balancer_port)

    def start_clients(self, port: int) -> list[Child]:
        """The M clients, told only their config, id, target and the window loop's bound."""
        m, job = self.params["clients"], self.grid.job
        requests, duration_s = client_limits(self.grid.measure, self.params["scenario"])
        host = socket.gethostname() if job.nodes > 1 else "127.0.0.1"
        target = f"{host}:{port}"
        if job.clients_launcher == "srun" or (job.clients_launcher == "auto" and job.nodes > 1):
            if not os.environ.get("SLURM_JOB_ID") or not shutil.which("srun"):
                raise SetupError("job.clients_launcher is srun but this is not a Slurm job")
            # One step of M tasks spread over the job's nodes; each task's client id is
            # its SLURM_PROCID. --overlap: the step shares CPUs with the batch step that
            # runs the shards.
            argv = ["srun", "--overlap", "--overcommit", f"--nodes={job.nodes}", f"--ntasks={m}",
                    "--kill-on-bad-exit=0",
                    *client_argv(self.config_path, target, requests=requests, duration_s=duration_s)]
            return [self.group.start("clients (srun)", argv, self.paths.logs / "clients-srun.log")]
        return [self.group.start(f"client {k}", client_argv(self.config_path, target, client_id=k,
                                                            requests=requests, duration_s=duration_s),
                                 self.paths.client_log(k)) for k in range(m)]

    def run_clients(self, balancer: Balancer) -> None:
        measure, barrier, m = self.grid.measure, self.paths.barrier, self.params["clients"]
        stats_port = balancer.stats_port
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir(parents=True)
        children = self.start_clients(balancer.port)
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
        served_before = self.fleet.served(self.params["model"])
        self.telemetry = Telemetry(self.fleet.pids())
        self.telemetry.start()
        machine = MachineLoad()
        go = time.time() + 0.05
        write_atomic(barrier / "go", repr(go))
        progress("running", 50)

        def total() -> int | None:
            try:
                return sum(haproxy.request_counts(stats_port).values())
            except OSError:
                return None

        self.windows = measure_windows(measure, m, go, total, lambda: all(c.alive() for c in children),
                                       barrier / "stop")
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
        self.problems.extend(self.fleet.exited_shards())
        self.group.stop(children, grace_s=5)
        self.telemetry.stop()
        served_after = self.fleet.served(self.params["model"])
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
            self.problems.append(self.fleet.balancer_gone(exc))
        write_json(self.paths.backends, {"before": before, "after": after, "measured": self.backend_counts,
                                         "served_by_shard": self.server_counts})
        for k in range(m):
            child = children[k] if len(children) == m else children[0]  # srun: one step for all
            entry: dict[str, Any] = {"client": k, "exit_code": child.process.returncode}
            try:
                entry.update(json.loads(self.paths.client_summary(k).read_text()))
            except (OSError, ValueError):
                entry["sent"] = None
            self.clients.append(entry)

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
        parts, edges = self.windows.cut(measure)
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
            "schema": SUMMARY_SCHEMA,
            "experiment_id": self.experiment_id,
            "attempt": {"number": self.attempt, "id": self.attempt_id},
            "params": self.params,
            **figures,
            "clients": self.clients,
            "server_kind": self.fleet.kind,
            "server_version": server_version(self.fleet.kind, self.fleet.argv),
            "started_at": started,
            "finished_at": now_iso(),
        }

    # ------------------------------------------------------------ main

    def write_cancelled(self, started: str) -> None:
        """The short verdict of a cancelled run, written before teardown; the full
        summary replaces it once everything is down."""
        write_json(self.paths.summary, {
            "schema": SUMMARY_SCHEMA, "experiment_id": self.experiment_id,
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
            balancer = self.start_fleet()
            progress("running", 40)
            self.run_clients(balancer)
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
        write_json(self.paths.env, {**manifest(self.grid.profile.haproxy, self.fleet.argv),
                                    "shards": self.fleet.manifest(), "config": self.raw,
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
