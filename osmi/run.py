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
from osmi_ee.osmi import batching, haproxy, metrics, server_metrics
from osmi_ee.osmi.client import client_argv
from osmi_ee.osmi.env import MachineLoad, busy_machine_note, manifest, server_version
from osmi_ee.osmi import node_fleet
from osmi_ee.osmi.fleet import Balancer, Fleet, NodeShare, SetupError, write_server_configs
from osmi_ee.osmi.job_nodes import this_node
from osmi_ee.osmi.procs import Child, ProcessGroup
from osmi_ee.osmi.schema import SUMMARY_SCHEMA
from osmi_ee.osmi.streams import ClientProcess, plan_processes
from osmi_ee.osmi.server_kinds import experiment_server, write_server_files
from osmi_ee.osmi.telemetry import Telemetry
from osmi_ee.osmi.window import Windows, client_limits, measure_windows

EXIT_VALID, EXIT_ERROR, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 3, 4


class Cancelled(Exception):
    pass


def progress(status: str, percent: int, msg: str) -> None:
    # cloudmesh-ee's `cms ee list` reads the last such line of the job output (the
    # experiment's latest.out): it needs msg=, and no value may hold a space or ':'.
    pid = os.environ.get("SLURM_JOB_ID", str(os.getpid()))
    print(f"# cloudmesh status={status} progress={percent} msg={msg} pid={pid}", flush=True)


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
        self.layout: node_fleet.Layout | None = None  # where each part runs, when the job has several nodes
        self.batch_sizes: dict[str, Any] | None = None  # server-side batches in the window, where reported
        # `balancer` axis: haproxy (default) | none (each client process round-robins over the shards)
        self.balancer_kind: str = self.params.get("balancer") or "haproxy"
        self.processes: list[ClientProcess] = []  # the client processes and the streams each carries

    @property
    def experiment_id(self) -> str:
        return self.raw.get("sweep", {}).get("experiment_id", self.paths.root.name)

    # ------------------------------------------------------------ stages

    def start_fleet(self) -> Balancer | None:
        serve, paths = self.grid.serve, self.paths
        self.layout = node_fleet.layout(self.grid, self.params)
        if self.layout is None:
            self.start_shards()
        else:  # each node's launcher runs start_shards for its share
            node_fleet.start_shards(self.fleet, self.group, self.layout, paths=paths, config=self.config_path,
                                    server_command=self.given_server_command, model=self.params["model"],
                                    timeout_s=serve.startup_timeout_s)
        progress("running", 30, "servers-up")
        if self.balancer_kind == "none":  # the clients dial every shard themselves
            return None
        # Clients on other nodes dial the balancer at its node's address; on one node keep it on loopback.
        return self.fleet.start_balancer(
            self.grid.profile.haproxy, config=paths.haproxy_config, log=paths.haproxy_log,
            request_timeout_s=self.grid.measure.timeout_s, threads=serve.balancer_threads,
            host=self.layout.here.address if self.layout else "127.0.0.1", port=self.balancer_port)

    def start_shards(self, on_node: NodeShare | None = None) -> None:
        """All shards on this machine, or (osmi.node_shards, on its node) that node's share."""
        serve, paths = self.grid.serve, self.paths
        write_server_configs(self.params["model"], serve.models_dir, paths.model_config, paths.monitoring_config)
        batching_file = batching.write_parameters_file(self.params.get("batching"), paths.batching_parameters)
        server = experiment_server(serve.server, self.params)  # the `server` axis, else serve.server
        triton_repository = write_server_files(  # Triton's model repository; None for the others
            server, self.given_server_command, model=self.params["model"], models_dir=serve.models_dir,
            paths=paths, batching=self.params.get("batching"), intra_op_threads=serve.intra_op_threads)
        self.fleet.start_shards(self.params["servers"], model=self.params["model"], server=server,
                                given_command=self.given_server_command,
                                model_config=triton_repository or paths.model_config,
                                monitoring_config=paths.monitoring_config, log=paths.server_log,
                                intra_op_threads=serve.intra_op_threads, timeout_s=serve.startup_timeout_s,
                                batching_file=batching_file, on_node=on_node)

    def client_target(self, balancer: Balancer | None) -> str:
        """Where the clients send: the balancer, or (balancer: none) every shard, comma-separated."""
        if balancer is None:
            return ",".join(f"{shard.host}:{shard.port}" for shard in self.fleet.shards)
        return f"{self.layout.here.address if self.layout else '127.0.0.1'}:{balancer.port}"

    def start_clients(self, target: str) -> list[Child]:
        """The client processes, told only their config, id, streams, target and the window
        loop's bound; one child per process (a node's or an srun step: repeated)."""
        m, job = self.params["clients"], self.grid.job
        requests, duration_s = client_limits(self.grid.measure, self.params["scenario"])
        if self.layout is not None:  # each node's streams on its processes, one step per node
            self.processes = node_fleet.client_processes(self.layout)
            return node_fleet.start_clients(self.group, self.layout, self.processes, paths=self.paths,
                                            config=self.config_path, target=target, requests=requests,
                                            duration_s=duration_s)
        self.processes = plan_processes([(0, m)])
        p = len(self.processes)
        if job.clients_launcher == "srun":
            if not os.environ.get("SLURM_JOB_ID") or not shutil.which("srun"):
                raise SetupError("job.clients_launcher is srun but this is not a Slurm job")
            # One step of P tasks on this node; each task's client id is its SLURM_PROCID, and
            # it takes that process's streams of the same split (osmi.client default_streams).
            # --overlap: the step shares CPUs with the batch step that runs the shards.
            argv = ["srun", "--overlap", "--overcommit", "--nodes=1", f"--ntasks={p}",
                    "--kill-on-bad-exit=0",
                    *client_argv(self.config_path, target, requests=requests, duration_s=duration_s)]
            return [self.group.start("clients (srun)", argv, self.paths.logs / "clients-srun.log")] * p
        return [self.group.start(f"client {c.id}", client_argv(self.config_path, target, client_id=c.id,
                                                               requests=requests, duration_s=duration_s,
                                                               streams=c.arg),
                                 self.paths.client_log(c.id)) for c in self.processes]

    def run_clients(self, balancer: Balancer | None) -> None:
        measure, barrier, m = self.grid.measure, self.paths.barrier, self.params["clients"]
        stats_port = balancer.stats_port if balancer else None
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir(parents=True)
        children = self.start_clients(self.client_target(balancer))
        p = len(self.processes)
        # Every process warmed up before the window opens, so the window holds all M streams;
        # the barrier counts processes, not streams.
        warm_deadline = time.monotonic() + measure.timeout_s * (measure.warmup_requests + 1) + 60
        while len(list(barrier.glob("ready-*"))) < p:
            dead = [c for c in children if not c.alive()]
            if dead:
                raise SetupError(dead[0].describe_exit())
            if time.monotonic() > warm_deadline:
                raise SetupError("clients did not finish warm-up in time")
            time.sleep(0.01)
        # Both ends counted over the same window: the balancer per backend (balancer: none,
        # the clients per shard), each shard itself.
        before = haproxy.request_counts(stats_port) if balancer else {}
        downs_before = haproxy.down_transitions(stats_port) if balancer else {}
        served_before = self.fleet.served(self.params["model"])
        batches_before = self.batch_size_histograms()
        self.telemetry = Telemetry(self.fleet.pids())
        self.telemetry.start()
        machine = MachineLoad()
        go = time.time() + 0.05
        write_atomic(barrier / "go", repr(go))
        progress("running", 50, "measuring")

        def total() -> int | None:
            """The live count of requests: the balancer's, else the shards' own."""
            if balancer is None:
                served = self.fleet.served(self.params["model"])
                return None if None in served.values() else sum(served.values())
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
        self.group.stop(list({id(c): c for c in children}.values()), grace_s=5)  # a node's step: once
        self.telemetry.stop()
        served_after = self.fleet.served(self.params["model"])
        self.batch_sizes = server_metrics.batch_size_summary(
            [server_metrics.histogram_difference(after, before)
             for after, before in zip(self.batch_size_histograms(), batches_before)])
        self.server_counts = {name: (served_after[name] - served_before[name])
                              if served_after.get(name) is not None and served_before.get(name) is not None
                              else None for name in served_before}
        for c in self.processes:  # each process's own summary, before the counts that need it
            child = children[c.id]
            entry: dict[str, Any] = {"client": c.id, "exit_code": child.process.returncode,
                                     "node": self.layout.node_of_client(c.first).name if self.layout
                                     else this_node()}
            try:
                entry.update(json.loads(self.paths.client_summary(c.id).read_text()))
            except (OSError, ValueError):
                entry["sent"] = None
            self.clients.append(entry)
        if balancer is None:
            self.backend_counts = self.clients_per_shard()
            write_json(self.paths.backends, {"balancer": "none", "measured": self.backend_counts,
                                             "served_by_shard": self.server_counts})
            return
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

    def clients_per_shard(self) -> dict[str, int] | None:
        """balancer: none: what the client processes say they sent each shard in the window
        (their sent_by_target, by address); None when a process wrote no summary."""
        names = {f"{shard.host}:{shard.port}": shard.name for shard in self.fleet.shards}
        counts = {name: 0 for name in names.values()}
        for entry in self.clients:
            if entry.get("sent") is None:
                return None
            for address, n in entry.get("sent_by_target", {}).items():
                counts[names.get(address, address)] = counts.get(names.get(address, address), 0) + n
        return counts

    def batch_size_histograms(self) -> list[dict[str, Any] | None]:
        """Each shard's server-side batch sizes so far (batching on only: else none to read)."""
        if not self.params.get("batching"):
            return [None] * len(self.fleet.shards)
        return [server_metrics.read_batch_sizes(shard.host, shard.rest_port) for shard in self.fleet.shards]

    # ------------------------------------------------------------ results

    def load_records(self) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(self.paths.client_records(c.id)) for c in self.processes
                  if self.paths.client_records(c.id).exists()]
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
            stability_last=measure.stability_windows, window_edges_ns=edges,
            saturation_share=saturation_share(), balancer=self.balancer_kind)
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
            "server_batching": {"settings": self.params.get("batching"), "batch_sizes": self.batch_sizes},
            "server_kind": self.fleet.kind,
            "server_version": self.fleet.version or server_version(self.fleet.kind, self.fleet.argv),
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
        if os.environ.get("SLURM_JOB_ID"):  # an array task's too: its own number, not the array's
            own_logs.add(self.paths.slurm_log(os.environ["SLURM_JOB_ID"]).name)
        self.attempt = self.paths.start_attempt(keep_logs=own_logs)
        for name in sorted(own_logs, reverse=True):  # slurm-<id>.out before job.out: where `cms ee list` looks
            if (self.paths.logs / name).exists():
                self.paths.link_latest_log(self.paths.logs / name)
                break
        self.attempt_id = f"{self.attempt}-{started}"
        self.paths.results.mkdir(parents=True, exist_ok=True)
        write_atomic(self.paths.status, "running\n")
        progress("running", 5, "starting")
        try:
            _Signals.arm()
            balancer = self.start_fleet()
            progress("running", 40, "balancer-up")
            self.run_clients(balancer)
            progress("running", 90, "measured")
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
            if self.layout is not None and not self.cancelled:  # other nodes' shards: their launchers stop them
                node_fleet.stop_shards(self.fleet, self.paths, grace_s=10.0)
            self.group.stop(grace_s=1.0 if self.cancelled else 10.0)
        write_json(self.paths.env, {**manifest(self.grid.profile.haproxy, self.fleet.argv),
                                    "shards": self.fleet.manifest(), "config": self.raw,
                                    "placement": self.layout.as_dict() if self.layout else None,
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
        progress("done" if summary["valid"] else status, 100, status)
        if summary["valid"]:
            return EXIT_VALID
        if status == "cancelled":
            return EXIT_CANCELLED
        return EXIT_INVALID if status == "invalid" else EXIT_ERROR


def saturation_share() -> float:
    """The client CPU share that makes a run INVALID (metrics.CLIENT_SATURATION_SHARE);
    tests set OSMI_EE_TEST_SATURATION_SHARE to provoke the verdict without loading the machine."""
    forced = os.environ.get("OSMI_EE_TEST_SATURATION_SHARE")
    return float(forced) if forced else metrics.CLIENT_SATURATION_SHARE


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
