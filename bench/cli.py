"""`python -m osmi_ee.bench`: the parts in order, the figures, the targets."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from osmi_ee.bench.common import FULL, GEN_AXES, MODEL, PARTS, QUICK, Sizes, say


class Bench:
    """One bench run: its work folder, its processes (stopped on the way out), its figures."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes):
        from osmi_ee.bench.clients import Clients
        from osmi_ee.osmi.procs import ProcessGroup

        self.args, self.sizes = args, sizes
        self.group = ProcessGroup()
        self.work = Path(tempfile.mkdtemp(prefix="osmi-bench-"))
        logs = Path(args.logs_dir)
        logs.mkdir(parents=True, exist_ok=True)
        self.clients = Clients(self.group, self.work, logs)
        self.result: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        from osmi_ee.bench.targets import notes, targets_met

        args, s, r = self.args, self.sizes, self.result
        parts = set(args.parts)
        started = time.perf_counter()
        r.update({"quick": bool(args.quick), "machine": {
            "nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_1m_at_start": os.getloadavg()[0]}})

        # Nothing of ours runs beside analyze and generate: no server is up then.
        if "analyze" in parts:
            from osmi_ee.bench.synthetic import bench_analyze

            r.update(bench_analyze(s, Path(args.data_dir)))
        if parts & {"startup", "cpu", "lb"}:
            self.bare_servers(parts)
        if "stack" in parts:  # served vs in-process throughput of the same SavedModel, side by side
            from osmi_ee.bench.stack import STACK_MODELS, bench_stack

            r.update(bench_stack(self.clients, self.group, self.ensure_model(STACK_MODELS), s))
        # Whole experiments through the real runner: accounting under load, reproducibility.
        if parts & {"load", "repro"}:
            self.sweeps(parts)
        if "calibrate" in parts:  # our client vs perf_analyzer, on TF-Serving's API and on Triton
            self.calibrate()
        if "search" in parts:  # osmi-ee search vs an exhaustive sweep of the same configuration
            from osmi_ee.bench.search import bench_search

            r.update(bench_search(self.ensure_model(), self.work / "sweeps", max_load=s.search_max,
                                  duration_s=s.search_duration_s, say=say))
        # Last, so that the sweeps a previous bench deleted on its way out are minutes
        # old: ext4 is slow to create inodes right after many were deleted (bench_generate).
        if "generate" in parts:
            from osmi_ee.bench.generate import bench_generate

            gen = bench_generate(s.gen_axes or GEN_AXES, self.work)
            r.update(gen)
            tmpfs = f"; on tmpfs {gen['generate_tmpfs_s']:.2f} s" if "generate_tmpfs_s" in gen else ""
            say(f"generate: {gen['generate_perms']:,} experiments in {gen['generate_s']:.2f} s "
                f"({gen['generate_perms_per_s']:,.0f}/s; runs {', '.join(f'{x:.2f}' for x in gen['generate_s_runs'])} s, "
                f"kernel CPU {', '.join(f'{x:.1f}' for x in gen['generate_system_cpu_s'])} s{tmpfs})")
        r["targets_met"] = targets_met(r)
        r["notes"] = notes(r)
        r["bench_wall_s"] = time.perf_counter() - started
        return r

    def bare_servers(self, parts: set[str]) -> None:
        """The client's own costs and the balancer's, against 2 shards brought up as a job would."""
        from osmi_ee.bench.balancer import bench_lb
        from osmi_ee.bench.overheads import (bench_cpu, bench_cpu_mux, bench_cpu_payload, bench_perf_analyzer_cpu,
                                              bench_startup)
        from osmi_ee.osmi.fleet import Fleet, write_server_configs

        s, models = self.sizes, self.ensure_model()
        fleet = Fleet(self.group)
        model_config, monitoring = self.work / "models.config", self.work / "monitoring.config"
        write_server_configs(MODEL, models, model_config, monitoring)
        say("starting 2 model servers")
        fleet.start_shards(2, model=MODEL, server="osmi", given_command=[], model_config=model_config,
                           monitoring_config=monitoring, log=lambda k: self.clients.logs / f"server-{k}.log",
                           intra_op_threads=1, timeout_s=300)
        target = f"127.0.0.1:{fleet.shards[0].port}"
        if "startup" in parts:
            self.result.update(bench_startup(self.clients, target, s))
        if "cpu" in parts:
            pids = list(fleet.pids().values())
            self.result.update(bench_cpu(self.clients, target, s, pids))
            self.result.update(bench_cpu_mux(self.clients, target, s, pids))
            self.result.update(bench_perf_analyzer_cpu(target, lambda: fleet.served(MODEL)["s0"], s))
            self.result.update(bench_cpu_payload(self.clients, target, s))
        if "lb" in parts:
            self.result.update(bench_lb(self.clients, fleet, s))
        self.group.stop(grace_s=10)

    def sweeps(self, parts: set[str]) -> None:
        from osmi_ee.bench.sweeps import bench_load, bench_repro

        models, s = self.ensure_model(), self.sizes
        if "load" in parts:
            load = bench_load(models, self.work / "sweeps", clients=s.load_clients, seconds=s.load_s)
            self.result.update(load)
            say(f"load: {load['load_clients']} clients x {load['load_servers']} shards, "
                f"{load['load_sent']:,} requests in {load['load_window_s']:.1f} s; accounted at "
                f"clients, balancer and shards: {load['load_every_request_accounted']}")
        if "repro" in parts:
            repro = bench_repro(models, self.work / "sweeps", duration_s=s.repro_duration_s)
            self.result.update(repro)
            say(f"repro: {repro['repro_counts']}")

    def calibrate(self) -> None:
        from osmi_ee.bench.calibrate import DEFAULT_TOLERANCE, Load, agree, calibrate

        load = Load(duration_s=2.0, rounds=1) if self.args.quick else Load()
        rows = calibrate(["tfserving", "triton"], load, self.ensure_model(), say=say)
        self.result["calibrate"] = rows
        self.result["calibrate_tolerance"] = DEFAULT_TOLERANCE
        self.result["calibrate_agree"] = all(agree(r, DEFAULT_TOLERANCE) for r in rows)
        for r in rows:
            say(f"calibrate {r['mode']}: ours / perf_analyzer throughput {r['throughput_ratio']:.3f}, "
                f"p50 {r['p50_ratio']:.3f}")

    def ensure_model(self, names: tuple[str, ...] = (MODEL,)) -> Path:
        models = Path(self.args.models_dir).resolve()
        missing = [name for name in names if not any((models / name).glob("*/saved_model.pb"))]
        if missing:
            say(f"exporting {', '.join(missing)} to {models}")
            from osmi_ee.osmi.export import export_models

            export_models(missing, models, samples=8, epochs=1)
        return models

    def close(self) -> None:
        self.group.stop(grace_s=10)
        shutil.rmtree(self.work, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="osmi-bench", description="Measure osmi-ee itself: client CPU vs a bare gRPC loop and "
        "the OSMI-style client, start-up, RSS, HAProxy efficiency, served vs in-process throughput, accounting under load, "
        "reproducibility, generation and analysis speed.")
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test, not a measurement)")
    parser.add_argument("--out", default="build/bench.json", help="where to write the figures (JSON)")
    parser.add_argument("--models-dir", default="build/models", help=f"exported models; {MODEL} is made if missing")
    parser.add_argument("--data-dir", default=None,
                        help="synthetic sweep for the analysis figure (default build/bench-data, "
                             "build/bench-data-quick with --quick)")
    parser.add_argument("--logs-dir", default="build/bench-logs", help="server, HAProxy and client logs")
    parser.add_argument("--parts", default=",".join(PARTS), type=lambda v: [p for p in v.split(",") if p],
                        help=f"what to measure, comma-separated (default: all of {','.join(PARTS)})")
    # A worker: one comparison point in a fresh process (workers.py), one JSON line out.
    parser.add_argument("--worker", choices=("raw", "raw_mux", "anchor", "aggregate"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sweep", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if args.data_dir is None:
        args.data_dir = "build/bench-data-quick" if args.quick else "build/bench-data"
    return args


def run_worker_here(args: argparse.Namespace) -> dict[str, Any]:
    from osmi_ee.bench import workers

    if args.worker == "raw":
        return workers.worker_raw(args.target, args.requests, args.warmup, args.batch)
    if args.worker == "raw_mux":
        return workers.worker_raw_mux(args.target, args.requests, args.warmup, args.batch)
    if args.worker == "anchor":
        return workers.worker_anchor(args.target, args.requests, args.warmup, args.batch)
    return workers.worker_aggregate(args.sweep, args.workers)


def _raise_exit(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # for every server, client and worker we start
    if args.worker:
        print(json.dumps(run_worker_here(args)))
        return 0
    if not shutil.which("haproxy"):
        print("osmi-bench: haproxy is not installed (apt-get install haproxy)", file=sys.stderr)
        return 1
    from osmi_ee.osmi.fleet import SetupError

    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    bench = Bench(args, QUICK if args.quick else FULL)
    try:
        result = bench.run()
    except (SetupError, RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"osmi-bench: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.close()
    from osmi_ee.ee.paths import write_json

    write_json(Path(args.out), result)
    say(f"figures written to {args.out}")
    for name, met in result["targets_met"].items():
        say(f"  {'met   ' if met else 'MISSED'} {name}")
    print(json.dumps(result), flush=True)
    return 0
