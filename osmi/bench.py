"""`make bench`: measures the tool itself, side by side, in one run.

    client   our osmi-client (closed loop, batch 1, small_lstm) against one
             real osmi-model-server: process CPU per request (its summary's
             cpu_s_measured / sent), start-up time and peak RSS;
    raw      a bare grpcio loop in its own process (one channel, the same
             prebuilt request bytes, synchronous unary calls): the floor;
    anchor   an OSMI-style client in its own process (per request a fresh numpy
             array -> tf.make_tensor_proto -> predict_pb2 -> stub.Predict, every
             response kept): what the original tooling costs;
    lb       HAProxy (mode http, proto h2) to 2 servers vs the same clients
             split over the 2 servers directly, plus the backends' shares;
    generate expanding and writing a 10,000-experiment sweep;
    analyze  recomputing per-run counts and latency percentiles from ~63M raw
             request records (3,840 runs x 16,384 records, synthetic, made once
             under build/bench-data).

Every figure goes to build/bench.json (atomically); the last stdout line is
the same object as one JSON line; progress goes to stderr. Figures named
`cpu` are process CPU time (time.process_time), never wall time. Every
process started here (servers, HAProxy, clients, workers) is stopped on the
way out, error or not, and dies with us anyway (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "small_lstm"
SYNTH_VERSION = 1  # bump when the synthetic data's layout changes: old data is rebuilt
SYNTH_AXES = {  # 3 x 4 x 8 x 8 x 5 = 3,840 runs
    "model": ["small_lstm", "medium_cnn", "large_tcnn"],
    "servers": [1, 2, 4, 8],
    "clients": [1, 2, 4, 8, 16, 32, 64, 128],
    "batch": [1, 2, 4, 8, 16, 32, 64, 128],
    "repeat": [1, 2, 3, 4, 5],
}
GEN_AXES = {  # 2 x 5 x 10 x 10 x 10 = 10,000 experiments
    "model": ["small_lstm", "medium_cnn"],
    "servers": [1, 2, 3, 4, 5],
    "clients": list(range(1, 11)),
    "batch": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    "repeat": list(range(1, 11)),
}
QUICK_GEN_AXES = {"model": ["small_lstm", "medium_cnn"], "servers": [1, 2], "clients": [1, 2, 3, 4, 5],
                  "batch": [1, 2, 4, 8, 16], "repeat": [1, 2]}  # 200 experiments


@dataclass(frozen=True)
class Sizes:
    """How much of everything one bench run does."""

    client_requests: int = 2000
    raw_requests: int = 2000
    anchor_requests: int = 2000
    warmup: int = 50
    cpu_rounds: int = 5  # client and raw alternate; the least disturbed run counts
    anchor_runs: int = 2
    startup_runs: int = 5
    lb_clients: int = 4  # closed-loop client processes (direct: half per server)
    lb_duration_s: float = 3.0
    lb_rounds: int = 5  # direct and balanced alternate; the median round counts
    gen_axes: dict[str, list[Any]] | None = None
    synth_runs: int | None = None  # None: the full product of SYNTH_AXES
    synth_records: int = 16_384


FULL = Sizes(gen_axes=GEN_AXES)
QUICK = Sizes(client_requests=200, raw_requests=200, anchor_requests=50, warmup=5, cpu_rounds=1, anchor_runs=1,
              startup_runs=1, lb_clients=2, lb_duration_s=1.0, lb_rounds=1,
              gen_axes=QUICK_GEN_AXES, synth_runs=8, synth_records=2048)

PARTS = ("analyze", "generate", "startup", "cpu", "lb", "load", "repro")
PAYLOAD_BATCH = 64  # the second client-CPU comparison: an OSMI-sized request
TARGETS = {  # the bounds targets_met checks
    "client_vs_raw": 1.3,  # client CPU/request <= 1.3 x raw
    "client_vs_anchor": 1 / 3,  # client CPU/request <= 1/3 x anchor
    "lb_efficiency": 0.95,
    "generate_10k_s": 5.0,
    "analyze_s": 30.0,
    "startup_s": 0.5,
    "rss_mb": 150.0,
}


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _python() -> list[str]:
    return [sys.executable]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# ============================================================== workers
# Each runs in its own fresh process (`python -m osmi_ee.osmi.bench --worker ...`)
# and prints one JSON object; nothing of this module's parent state leaks in.


def _channel_options() -> list[tuple[str, int]]:
    from osmi_ee.osmi.client import MAX_MESSAGE_BYTES

    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def worker_raw(target: str, requests: int, warmup: int, batch: int = 1) -> dict[str, Any]:
    """The floor: bare grpcio, one channel, the same prebuilt bytes, synchronous."""
    import grpc

    from osmi_ee.osmi import protos
    from osmi_ee.osmi.client import build_requests

    payloads = build_requests(MODEL, batch, seed=0)
    channel = grpc.insecure_channel(target, options=_channel_options())
    call = channel.unary_unary(protos.PREDICT_METHOD)
    n = len(payloads)
    for i in range(warmup):
        call(payloads[i % n], timeout=60)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(requests):
        call(payloads[i % n], timeout=60)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    channel.close()
    return {"requests": requests, "cpu_s": cpu, "wall_s": wall}


def worker_anchor(target: str, requests: int, warmup: int, batch: int = 1) -> dict[str, Any]:
    """The original OSMI client's way: TensorFlow builds every request."""
    t0 = time.perf_counter()
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from osmi_ee.osmi.specs import INPUT_NAME, SIGNATURE_NAME, get_spec

    import_s = time.perf_counter() - t0
    shape = (batch, *get_spec(MODEL).input_shape)
    channel = grpc.insecure_channel(target, options=_channel_options())
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    results = []

    def one() -> None:
        data = np.array(np.random.random(shape), dtype=np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = SIGNATURE_NAME
        request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(data, shape=data.shape))
        results.append(stub.Predict(request, 60))

    for _ in range(warmup):
        one()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(requests):
        one()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    kept = len(results)
    channel.close()
    return {"requests": requests, "cpu_s": cpu, "wall_s": wall, "tf_import_s": import_s, "kept": kept}


def worker_aggregate(sweep_dir: str, workers: int) -> dict[str, Any]:
    """Times analysis.records.aggregate_records (imports excluded) and checks it."""
    import pandas as pd  # noqa: F401  (imported before the clock starts)

    from osmi_ee.analysis.records import aggregate_records

    t0 = time.perf_counter()
    frame = aggregate_records(sweep_dir, workers=workers)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "runs": len(frame), "records": int(frame["records"].sum()),
            "sent": int(frame["sent"].sum()), "ok": int(frame["ok"].sum()),
            "p99_nan": int(frame["latency_p99_ms"].isna().sum())}


def run_worker(argv: list[str], timeout_s: float) -> dict[str, Any]:
    out = subprocess.run([*_python(), "-m", "osmi_ee.osmi.bench", *argv], env=_env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout_s,
                         preexec_fn=_die_with_parent)
    if out.returncode != 0:
        raise RuntimeError(f"bench worker {argv[:2]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _die_with_parent() -> None:
    from osmi_ee.osmi.procs import _die_with_parent as die

    die()


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    total = sum(values)
    idle = values[3] + values[4]  # idle + iowait
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")


# ============================================================== synthetic sweep


def _synth_ids(runs: int | None) -> list[tuple[str, dict[str, Any]]]:
    import itertools

    keys = list(SYNTH_AXES)
    out = []
    for values in itertools.product(*SYNTH_AXES.values()):
        params = dict(zip(keys, values))
        params.update(gpu="cpu", scenario="closed", rate=None)
        eid = (f"{params['model']}-s{params['servers']}-c{params['clients']}-b{params['batch']}"
               f"-cpu-r{params['repeat']}-synth")
        out.append((eid, params))
    return out if runs is None else out[:runs]


def _synth_write(root: str, chunk: list[tuple[int, str, dict[str, Any]]], records: int) -> int:
    """Writes the record file and summary of some synthetic runs, as osmi-client and
    the runner would (Records.write_parquet: the client's own columns and types)."""
    import numpy as np

    from osmi_ee.osmi.client import MEASURED, WARMUP, Records

    for index, eid, params in chunk:
        rng = np.random.default_rng(index)
        results = Path(root) / eid / "results"
        results.mkdir(parents=True, exist_ok=True)
        warm = min(64, records // 8)
        rec = Records(capacity=records)
        rec.size = records
        rec.phase[:] = MEASURED
        rec.phase[:warm] = WARMUP
        rec.latency_ns[:] = (rng.lognormal(np.log(2e6), 0.35, records)).astype(np.int64)
        rec.start_ns[:] = 1_700_000_000_000_000_000 + index * 10**12 + np.cumsum(rec.latency_ns)
        failed = rng.random(records) < 0.001
        rec.code[failed] = 14  # UNAVAILABLE, now and then
        rec.write_parquet(results / "requests-client0.parquet", 0)
        measured = rec.phase == MEASURED
        summary = {"schema": "osmi-ee/summary/1", "experiment_id": eid, "params": params,
                   "valid": not bool((failed & measured).any()),
                   "requests": {"sent": int(measured.sum()), "ok": int((measured & ~failed).sum()),
                                "failed": int((measured & failed).sum())}}
        (results / "summary.json").write_text(json.dumps(summary) + "\n")
    return len(chunk)


def synthetic_sweep(root: Path, runs: int | None, records: int) -> tuple[Path, bool]:
    """The synthetic sweep under `root`, made once (reused while its marker matches).
    Returns (sweep dir, reused)."""
    from concurrent.futures import ProcessPoolExecutor

    from osmi_ee.ee.paths import write_json

    entries = _synth_ids(runs)
    marker = root / "bench-data.json"
    spec = {"version": SYNTH_VERSION, "runs": len(entries), "records_per_run": records}
    try:
        if json.loads(marker.read_text()) == spec and (root / "sweep.json").is_file():
            return root, True
    except (OSError, ValueError):
        pass
    if root.exists():
        if not marker.exists() and any(root.iterdir()):
            raise RuntimeError(f"{root} holds something other than the bench's synthetic data; "
                               "pass another --data-dir")
        shutil.rmtree(root)  # ours, made with other sizes (or half made): make it again
    root.mkdir(parents=True)
    write_json(marker, {**spec, "complete": False})  # ours from now on, even if cut short
    say(f"making the synthetic sweep: {len(entries):,} runs x {records:,} records in {root} (once)")
    t0 = time.perf_counter()
    indexed = [(i, eid, params) for i, (eid, params) in enumerate(entries)]
    step = max(1, min(64, len(indexed) // 4))
    chunks = [indexed[i:i + step] for i in range(0, len(indexed), step)]
    workers = min(2, os.cpu_count() or 1)
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = 0
            for n in pool.map(_synth_write, [str(root)] * len(chunks), chunks, [records] * len(chunks)):
                done += n
                if done % 640 < step:
                    say(f"  {done:,}/{len(indexed):,} runs written")
    else:
        for chunk in chunks:
            _synth_write(str(root), chunk, records)
    write_json(root / "sweep.json", {"name": "bench-synthetic", "axes": [*SYNTH_AXES, "gpu", "scenario", "rate"],
                                     "experiments": [eid for eid, _ in entries],
                                     "params": {eid: params for eid, params in entries}})
    write_json(marker, spec)
    say(f"synthetic sweep ready in {time.perf_counter() - t0:.0f} s")
    return root, False


# ============================================================== generate


def bench_generate(axes: dict[str, list[Any]], work: Path, runs: int = 2) -> dict[str, Any]:
    """generate() of the grid `axes`, `runs` times into fresh folders on this disk
    (the best wall time counts: others share the box), plus once on tmpfs.

    The disk runs keep their files until the bench ends: ext4 skips inodes freed
    in the last 60-300 s when it allocates (fs/ext4/ialloc.c recently_deleted), so
    creating 50,000 inodes right after deleting as many scans inode tables and
    costs many times more kernel CPU (seen here: 2.7 s -> 14 s per 10,000). The
    tmpfs run shows the code's own speed, free of the disk and of what other
    users deleted lately."""
    import yaml

    from osmi_ee.ee.config import load_grid

    t0 = time.perf_counter()
    import cloudmesh.ee.experimentexecutor  # noqa: F401  (module import: once per CLI call, reported apart)

    from osmi_ee.ee.generate import generate

    import_s = time.perf_counter() - t0
    grid_path = work / "gen-grid.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "bench-gen", "profile": "localhost", "experiment": axes},
                                        sort_keys=False))
    grid = load_grid(grid_path)

    def timed(sweep: Path) -> tuple[int, float, float, float]:
        t0, c0 = time.perf_counter(), os.times()
        experiments = generate(grid, sweep)
        wall, c1 = time.perf_counter() - t0, os.times()
        n = len(experiments)
        written = sum(1 for _ in sweep.glob("*/job.slurm"))
        if written != n:
            raise RuntimeError(f"generate wrote {written} job scripts for {n} experiments")
        return n, wall, c1.user - c0.user, c1.system - c0.system

    walls, user, system = [], [], []
    for r in range(runs):
        n, wall, u, k = timed(work / f"gen-sweep-{r}")
        walls.append(wall)
        user.append(u)
        system.append(k)
    result = {"generate_perms": n, "generate_s": min(walls), "generate_s_runs": walls,
              "generate_user_cpu_s": user, "generate_system_cpu_s": system,
              "generate_perms_per_s": n / min(walls), "generate_import_s": import_s}
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="osmi-bench-gen-", dir=shm))
        try:
            _, wall, _, _ = timed(folder / "sweep")
            result.update(generate_tmpfs_s=wall, generate_tmpfs_perms_per_s=n / wall)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return result


# ============================================================== servers, balancer, clients


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes):
        from osmi_ee.osmi.procs import ProcessGroup

        self.args = args
        self.sizes = sizes
        self.group = ProcessGroup()
        self.work = Path(tempfile.mkdtemp(prefix="osmi-bench-"))
        self.logs = Path(args.logs_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {}
        self._servers: list[tuple[Any, Path]] = []  # (child, its port file)
        self._stats_port: int | None = None  # HAProxy's, while a balanced round runs
        self._before: dict[str, int] = {}

    # ---------------------------------------------------------- processes

    def start_server(self, k: int, model_config: Path) -> None:
        port_file = self.work / f"server-{k}.port"
        argv = [*_python(), "-m", "osmi_ee.osmi.model_server", "--port=0", "--rest_api_port=0",
                f"--model_config_file={model_config}", f"--port_file={port_file}",
                "--tensorflow_intra_op_parallelism=1", "--grpc_bind_host=127.0.0.1"]
        child = self.group.start(f"server {k}", argv, self.logs / f"server-{k}.log", _env())
        self._servers.append((child, port_file))

    def wait_servers(self, timeout_s: float = 300) -> list[int]:
        import grpc

        from osmi_ee.osmi import protos
        from osmi_ee.osmi.client import build_requests

        request = build_requests(MODEL, 1, seed=0, count=1)[0]
        ports: list[int] = []
        deadline = time.monotonic() + timeout_s
        for child, port_file in self._servers:
            while True:
                if not child.alive():
                    raise RuntimeError(child.describe_exit())
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{child.name} not ready after {timeout_s:.0f} s; log {child.log}")
                if port_file.exists():
                    port = int(port_file.read_text())
                    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                        try:
                            channel.unary_unary(protos.PREDICT_METHOD)(request, timeout=30)
                            ports.append(port)
                            break
                        except grpc.RpcError:
                            pass
                time.sleep(0.25)
        return ports

    def client_argv(self, target: str, tag: str, *, requests: int | None = None, duration_s: float | None = None,
                    warmup: int = 5, warmup_s: float = 0.0, client_id: int = 0,
                    barrier: Path | None = None, batch: int = 1) -> list[str]:
        argv = [*_python(), "-m", "osmi_ee.osmi.client", f"--target={target}", f"--model={MODEL}",
                f"--batch={batch}", f"--warmup={warmup}", f"--warmup-s={warmup_s}", f"--client-id={client_id}",
                f"--records={self.work / f'{tag}.parquet'}", f"--summary={self.work / f'{tag}.json'}"]
        argv.append(f"--requests={requests}" if requests else f"--duration-s={duration_s}")
        if barrier is not None:
            argv.append(f"--barrier={barrier}")
        return argv

    def run_client(self, target: str, tag: str, timeout_s: float = 300, *, small_parent: bool = False,
                   **kw: Any) -> dict[str, Any]:
        argv = self.client_argv(target, tag, **kw)
        if small_parent:
            # The client's max_rss_mb is getrusage's ru_maxrss, which Linux carries over
            # fork + exec from the parent's memory (a 100 MB parent: >= 100 MB, whatever
            # the client uses). Spawned by a bash that forks it, the parent is bash.
            argv = ["bash", "-c", '"$@"; exit $?', "osmi-client", *argv]
        # Own process group, killed on the way out whatever happens (the bash in
        # between means PR_SET_PDEATHSIG would reach bash only).
        process = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        finally:
            if process.returncode is None:  # not reaped yet: the group id is still ours
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"osmi-client {tag} failed ({process.returncode}):\n{stderr[-3000:]}")
        summary = json.loads((self.work / f"{tag}.json").read_text())
        if summary["failed"]:
            raise RuntimeError(f"osmi-client {tag}: {summary['failed']} requests failed: {summary['errors']}")
        return summary

    # ---------------------------------------------------------- client CPU

    def measured(self, fn: Any) -> tuple[Any, float]:
        """fn()'s result and the cores other users' jobs took meanwhile: machine-wide busy
        CPU less ours (the servers, this process and every child it reaped)."""
        import resource

        pids = [child.process.pid for child, _ in self._servers]

        def snap() -> tuple[float, float, float]:
            mine = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                       for f in ("ru_utime", "ru_stime"))
            return time.time(), _machine_cpu_s()[0], mine + sum(_proc_cpu_s(p) for p in pids)

        t0, busy0, ours0 = snap()
        out = fn()
        t1, busy1, ours1 = snap()
        return out, max(0.0, (busy1 - busy0 - (ours1 - ours0)) / max(t1 - t0, 1e-9))

    def bench_cpu(self, target: str) -> None:
        """Client and raw loop alternate (ABBA order) for several rounds; the anchor runs
        twice. CPU time of a fixed piece of work only grows when other jobs share the
        cores (caches, hyper-threads), so each figure is its least disturbed run (the
        minimum, as timeit advises); medians and the other users' load during every run
        are reported beside it."""
        s = self.sizes
        runs: dict[str, list[float]] = {"client": [], "raw": [], "anchor": []}
        others: dict[str, list[float]] = {"client": [], "raw": [], "anchor": []}
        rss: list[float] = []

        def client(r: int) -> float:
            summary = self.run_client(target, f"cpu-client-{r}", requests=s.client_requests, warmup=s.warmup,
                                      small_parent=True)
            rss.append(summary["max_rss_mb"])
            return summary["cpu_s_measured"] / summary["sent"] * 1e6

        def worker(kind: str, requests: int) -> dict[str, Any]:
            return run_worker(["--worker", kind, "--target", target, "--requests", str(requests),
                               "--warmup", str(s.warmup)], timeout_s=300)

        def raw(_r: int) -> float:
            out = worker("raw", s.raw_requests)
            return out["cpu_s"] / out["requests"] * 1e6

        for r in range(s.cpu_rounds):
            for name, fn in ((("client", client), ("raw", raw)) if r % 2 == 0 else (("raw", raw), ("client", client))):
                us, load = self.measured(lambda: fn(r))
                runs[name].append(us)
                others[name].append(load)
            say(f"cpu round {r + 1}/{s.cpu_rounds}: client {runs['client'][-1]:.0f} us/req, raw "
                f"{runs['raw'][-1]:.0f} us/req; other users' load {others['client'][-1]:.2f}/"
                f"{others['raw'][-1]:.2f} cores")
        anchor_import = []
        for _ in range(s.anchor_runs):
            out, load = self.measured(lambda: worker("anchor", s.anchor_requests))
            runs["anchor"].append(out["cpu_s"] / out["requests"] * 1e6)
            others["anchor"].append(load)
            anchor_import.append(out["tf_import_s"])
            kept = out["kept"]
            say(f"anchor (TF-built requests): {runs['anchor'][-1]:.0f} us/req (TF import "
                f"{out['tf_import_s']:.1f} s, excluded); other users' load {load:.2f} cores")
        best = {name: min(values) for name, values in runs.items()}
        client_us, raw_us, anchor_us = best["client"], best["raw"], best["anchor"]
        self.result.update({
            "client_cpu_us_per_req": client_us,
            "client_cpu_us_per_req_runs": runs["client"],
            "client_cpu_us_per_req_median": statistics.median(runs["client"]),
            "client_requests": s.client_requests,
            "raw_cpu_us_per_req": raw_us,
            "raw_cpu_us_per_req_runs": runs["raw"],
            "raw_cpu_us_per_req_median": statistics.median(runs["raw"]),
            "raw_requests": s.raw_requests,
            "anchor_cpu_us_per_req": anchor_us,
            "anchor_cpu_us_per_req_runs": runs["anchor"],
            "anchor_requests": s.anchor_requests,
            "anchor_responses_kept": kept,
            "anchor_tf_import_s": statistics.median(anchor_import),
            "raw_vs_client_ratio": client_us / raw_us,
            "raw_vs_client_ratio_median": statistics.median(runs["client"]) / statistics.median(runs["raw"]),
            "anchor_vs_client_ratio": client_us / anchor_us,
            "anchor_speedup": anchor_us / client_us,
            # the best any client sending through grpcio could reach against the anchor
            "raw_vs_anchor_ratio": raw_us / anchor_us,
            "cpu_others_cores": others,
            "client_rss_mb": max(rss),
        })

    def bench_cpu_payload(self, target: str) -> None:
        """The same comparison at an OSMI-sized payload (batch 64: 98 KB per request),
        where building each request with TensorFlow from fresh random data costs the
        anchor style far more than batch 1 shows."""
        s = self.sizes
        batch, requests = PAYLOAD_BATCH, max(20, s.anchor_requests // 4)
        summary = self.run_client(target, "cpu-client-payload", requests=requests, warmup=s.warmup // 5 + 1,
                                  small_parent=True, batch=batch)
        client_us = summary["cpu_s_measured"] / summary["sent"] * 1e6
        out = run_worker(["--worker", "anchor", "--target", target, "--requests", str(requests),
                          "--warmup", str(s.warmup // 5 + 1), "--batch", str(batch)], timeout_s=300)
        anchor_us = out["cpu_s"] / out["requests"] * 1e6
        raw = run_worker(["--worker", "raw", "--target", target, "--requests", str(requests),
                          "--warmup", str(s.warmup // 5 + 1), "--batch", str(batch)], timeout_s=300)
        raw_us = raw["cpu_s"] / raw["requests"] * 1e6
        say(f"batch {batch}: client {client_us:.0f} us/req, raw {raw_us:.0f}, anchor {anchor_us:.0f} "
            f"(client/anchor {client_us / anchor_us:.2f})")
        self.result.update({
            "payload_batch": batch,
            "payload_requests": requests,
            "client_cpu_us_per_req_payload": client_us,
            "raw_cpu_us_per_req_payload": raw_us,
            "anchor_cpu_us_per_req_payload": anchor_us,
            "anchor_vs_client_ratio_payload": client_us / anchor_us,
        })

    def bench_startup(self, target: str) -> None:
        """Interpreter start to first request, timed from outside: the wall clock just
        before the client is spawned to the start of its first request (its first
        record). The client's own `startup_s` is kept beside it: it dates the
        process start with psutil's create_time, which adds /proc/stat's btime, a
        whole second rounded down, so it can read up to 1 s high on a given boot."""
        import pyarrow.parquet as pq

        runs, reported = [], []
        for r in range(self.sizes.startup_runs):
            tag = f"startup-{r}"
            spawned = time.time()
            summary = self.run_client(target, tag, requests=1, warmup=1)
            first_ns = pq.read_table(self.work / f"{tag}.parquet", columns=["start_ns"]).column(0).to_numpy().min()
            runs.append(float(first_ns) / 1e9 - spawned)
            reported.append(summary["startup_s"])
        self.result.update({"client_startup_s": statistics.median(runs), "client_startup_runs": runs,
                            "client_startup_s_reported": statistics.median(reported),
                            "client_startup_reported_runs": reported})
        say(f"client start-up (spawn to first request): median {statistics.median(runs):.3f} s "
            f"(the client's own startup_s: {statistics.median(reported):.3f} s)")

    # ---------------------------------------------------------- balancer

    def clients_at_once(self, targets: list[str], tag: str, watch: dict[str, int]) -> dict[str, Any]:
        """Closed-loop clients, one per target entry, released together through
        osmi-client's barrier. Returns their throughput (ok requests / window,
        all together), the CPU each watched process (name -> pid) and the clients
        spent per request, and how busy the whole machine was meanwhile."""
        import pyarrow.parquet as pq

        from osmi_ee.osmi.client import MEASURED

        s = self.sizes
        barrier = self.work / f"barrier-{tag}"
        shutil.rmtree(barrier, ignore_errors=True)
        barrier.mkdir()
        children = []
        for k, target in enumerate(targets):
            argv = self.client_argv(target, f"{tag}-{k}", duration_s=s.lb_duration_s, warmup=5, warmup_s=0.5,
                                    client_id=k, barrier=barrier)
            children.append(self.group.start(f"client {tag}-{k}", argv, self.logs / f"client-{tag}-{k}.log", _env()))
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("ready-*"))) < len(children):
            dead = [c for c in children if not c.alive()]
            if dead:
                raise RuntimeError(dead[0].describe_exit())
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tag}: clients not warmed up after 120 s")
            time.sleep(0.01)
        if self._stats_port is not None:
            self._before = self._counts()
        watch = {**watch, **{f"client{k}": c.process.pid for k, c in enumerate(children)}}
        go = time.time() + 0.05
        tmp = barrier / ".go.tmp"
        tmp.write_text(repr(go))
        tmp.replace(barrier / "go")
        # CPU is sampled over the steady middle of the window (not the clients'
        # start or their exit, when they write records), for all our processes
        # and for the whole machine: the rest is other users' load.
        margin = min(0.25, s.lb_duration_s / 10)
        time.sleep(max(0.0, go + margin - time.time()))
        t_a, cpu_a, busy_a = time.time(), {n: _proc_cpu_s(p) for n, p in watch.items()}, _machine_cpu_s()
        time.sleep(max(0.0, go + s.lb_duration_s - margin - time.time()))
        t_b, cpu_b, busy_b = time.time(), {n: _proc_cpu_s(p) for n, p in watch.items()}, _machine_cpu_s()
        for child in children:
            child.process.wait(timeout=s.lb_duration_s + 120)
            if child.process.returncode != 0:
                raise RuntimeError(child.describe_exit())
        ok, first, last, ended_in_sample = 0, None, None, 0
        for k in range(len(children)):
            table = pq.read_table(self.work / f"{tag}-{k}.parquet", columns=["phase", "start_ns", "latency_ns", "code"])
            phase, start, lat, code = (table.column(c).to_numpy() for c in ("phase", "start_ns", "latency_ns", "code"))
            m = phase == MEASURED
            if (code[m] != 0).any():
                raise RuntimeError(f"{tag}: client {k} had failed requests")
            ok += int(m.sum())
            first = int(start[m].min()) if first is None else min(first, int(start[m].min()))
            end = start[m] + lat[m]
            last = int(end.max()) if last is None else max(last, int(end.max()))
            ended_in_sample += int(((end >= t_a * 1e9) & (end < t_b * 1e9)).sum())
        window = (last - first) / 1e9
        n = max(1, ended_in_sample)
        cpu = {name: cpu_b[name] - cpu_a[name] for name in watch}
        per_req = {f"{name}_cpu_us_per_req": v / n * 1e6 for name, v in cpu.items() if not name.startswith("client")}
        clients_cpu = sum(v for name, v in cpu.items() if name.startswith("client"))
        per_req["clients_cpu_us_per_req"] = clients_cpu / n * 1e6
        ours = sum(cpu.values())
        busy, elapsed = busy_b[0] - busy_a[0], t_b - t_a
        return {"rps": ok / window, "ok": ok, "window_s": window, **per_req,
                "ours_cpu_us_per_req": ours / n * 1e6,
                "sample_s": elapsed, "sample_requests": ended_in_sample,
                "ours_cores": ours / elapsed,
                "machine_busy_cores": busy / elapsed,
                # CPU of everything else on this shared box meanwhile (other users' jobs)
                "others_cores": max(0.0, (busy - ours) / elapsed)}

    def _counts(self) -> dict[str, int]:
        from osmi_ee.osmi import haproxy

        return haproxy.request_counts(self._stats_port)

    def bench_lb(self, ports: list[int]) -> None:
        from osmi_ee.osmi import haproxy
        from osmi_ee.osmi.procs import free_port

        s = self.sizes
        backends = [haproxy.Backend(f"s{k}", "127.0.0.1", p) for k, p in enumerate(ports)]
        port, stats_port = free_port(), free_port()
        cfg = self.work / "haproxy.cfg"
        cfg.write_text(haproxy.render_config(port, stats_port, backends, timeout_s=30))
        proxy = self.group.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], self.logs / "haproxy.log")
        haproxy.wait_all_up(stats_port, [b.name for b in backends], timeout_s=30, alive=proxy.alive)
        m = s.lb_clients
        # The direct case runs the same M clients at the same time, half on each
        # server, rather than each server alone with M/2 clients and the two
        # throughputs summed: on this 2-core box every client and both servers
        # share the same cores, so measuring the servers one after the other
        # would give each the whole machine and overstate the sum (a "direct"
        # figure that no real deployment gets). Side by side, both cases carry
        # the same client and server processes on the same cores; what differs
        # is only the balancer hop (and HAProxy's own CPU, which is the cost
        # being measured). Rounds alternate direct and balanced, and each
        # round's ratio compares two neighbours in time (the box is shared:
        # background load drifts); the median round counts.
        direct_targets = [f"127.0.0.1:{ports[k % len(ports)]}" for k in range(m)]
        lb_targets = [f"127.0.0.1:{port}"] * m
        servers = {f"server{k}": child.process.pid for k, (child, _) in enumerate(self._servers)}
        rounds = []
        for r in range(s.lb_rounds):
            self._stats_port = None
            direct = self.clients_at_once(direct_targets, f"direct-{r}", servers)
            self._stats_port = stats_port
            balanced = self.clients_at_once(lb_targets, f"lb-{r}", {**servers, "haproxy": proxy.process.pid})
            after = self._counts()
            counts = {name: after.get(name, 0) - self._before.get(name, 0) for name in after}
            total = sum(counts.values())
            share = min(counts.values()) / total if total else 0.0
            rounds.append({"direct": direct, "balanced": balanced, "efficiency": balanced["rps"] / direct["rps"],
                           "cpu_efficiency": direct["ours_cpu_us_per_req"] / balanced["ours_cpu_us_per_req"],
                           "backend_counts": counts, "backend_share_min": share})
            say(f"lb round {r + 1}/{s.lb_rounds}: direct {direct['rps']:.0f} req/s, via HAProxy "
                f"{balanced['rps']:.0f} req/s ({rounds[-1]['efficiency']:.2f}); our CPU/req "
                f"{direct['ours_cpu_us_per_req']:.0f} vs {balanced['ours_cpu_us_per_req']:.0f} us "
                f"(HAProxy {balanced['haproxy_cpu_us_per_req']:.0f}); other users' load "
                f"{direct['others_cores']:.2f}/{balanced['others_cores']:.2f} cores; backends {counts}")
        self.group.stop([proxy], grace_s=5)
        efficiencies = [x["efficiency"] for x in rounds]
        self.result.update({
            "lb_efficiency": statistics.median(efficiencies),
            "lb_efficiency_runs": efficiencies,
            # What the balancer costs when the box is CPU-bound and all ours: our processes'
            # CPU per request, direct / balanced (immune to other users' load).
            "lb_efficiency_cpu": statistics.median(x["cpu_efficiency"] for x in rounds),
            "haproxy_cpu_us_per_req": statistics.median(x["balanced"]["haproxy_cpu_us_per_req"] for x in rounds),
            # where the CPU per request goes, medians over rounds: the balancer's cost itemised
            "lb_cpu_us_per_req": {case: {key: statistics.median(x[case][key] for x in rounds)
                                         for key in rounds[0][case] if key.endswith("_cpu_us_per_req")}
                                  for case in ("direct", "balanced")},
            "lb_others_cores_max": max(max(x["direct"]["others_cores"], x["balanced"]["others_cores"])
                                       for x in rounds),
            "lb_throughput_rps": statistics.median(x["balanced"]["rps"] for x in rounds),
            "direct_throughput_rps": statistics.median(x["direct"]["rps"] for x in rounds),
            "backend_share_min": min(x["backend_share_min"] for x in rounds),
            "lb_clients": m,
            "lb_duration_s": s.lb_duration_s,
            "lb_rounds": rounds,
        })

    # ---------------------------------------------------------- main

    def run(self) -> dict[str, Any]:
        args, s = self.args, self.sizes
        parts = set(args.parts)
        started = time.perf_counter()
        self.result.update({"quick": bool(args.quick), "machine": {
            "nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_1m_at_start": os.getloadavg()[0]}})

        # Nothing of ours runs beside analyze and generate: no server is up then.
        if "analyze" in parts:
            self.bench_analyze()

        if parts & {"startup", "cpu", "lb"}:
            ports = self.servers_up()
            target = f"127.0.0.1:{ports[0]}"
            if "startup" in parts:
                self.bench_startup(target)
            if "cpu" in parts:
                self.bench_cpu(target)
                self.bench_cpu_payload(target)
            if "lb" in parts:
                self.bench_lb(ports)
            self.group.stop(grace_s=10)

        # Whole experiments through the real runner: accounting under load, reproducibility.
        if parts & {"load", "repro"}:
            from osmi_ee.osmi.bench_sweeps import bench_load, bench_repro

            models = self.ensure_model()
            if "load" in parts:
                load = bench_load(models, self.work / "sweeps", clients=8 if args.quick else 64,
                                  seconds=5.0 if args.quick else 60.0)
                self.result.update(load)
                say(f"load: {load['load_clients']} clients x {load['load_servers']} shards, "
                    f"{load['load_sent']:,} requests in {load['load_window_s']:.1f} s; accounted at "
                    f"clients, balancer and shards: {load['load_every_request_accounted']}")
            if "repro" in parts:
                repro = bench_repro(models, self.work / "sweeps", duration_s=2.0 if args.quick else 6.0)
                self.result.update(repro)
                say(f"repro: {repro['repro_counts']}")

        # Last, so that the sweeps a previous bench deleted on its way out are minutes
        # old: ext4 is slow to create inodes right after many were deleted (bench_generate).
        if "generate" in parts:
            gen = bench_generate(s.gen_axes or GEN_AXES, self.work)
            self.result.update(gen)
            tmpfs = f"; on tmpfs {gen['generate_tmpfs_s']:.2f} s" if "generate_tmpfs_s" in gen else ""
            say(f"generate: {gen['generate_perms']:,} experiments in {gen['generate_s']:.2f} s "
                f"({gen['generate_perms_per_s']:,.0f}/s; runs {', '.join(f'{x:.2f}' for x in gen['generate_s_runs'])} s, "
                f"kernel CPU {', '.join(f'{x:.1f}' for x in gen['generate_system_cpu_s'])} s{tmpfs})")

        r = self.result
        checks = {  # name -> (figures it needs, test)
            "client_le_1.3x_raw": (("client_cpu_us_per_req", "raw_cpu_us_per_req"),
                                   lambda: r["client_cpu_us_per_req"] <= TARGETS["client_vs_raw"] * r["raw_cpu_us_per_req"]),
            "client_le_third_of_anchor": (("client_cpu_us_per_req", "anchor_cpu_us_per_req"),
                                          lambda: r["client_cpu_us_per_req"]
                                          <= TARGETS["client_vs_anchor"] * r["anchor_cpu_us_per_req"]),
            "client_le_third_of_anchor_at_payload": (
                ("client_cpu_us_per_req_payload", "anchor_cpu_us_per_req_payload"),
                lambda: r["client_cpu_us_per_req_payload"]
                <= TARGETS["client_vs_anchor"] * r["anchor_cpu_us_per_req_payload"]),
            "lb_efficiency_ge_0.95": (("lb_efficiency",), lambda: r["lb_efficiency"] >= TARGETS["lb_efficiency"]),
            "generate_10k_lt_5s": (("generate_perms_per_s",),
                                   lambda: 10_000 / r["generate_perms_per_s"] < TARGETS["generate_10k_s"]),
            "analyze_lt_30s": (("analyze_s_63M",), lambda: r["analyze_s_63M"] < TARGETS["analyze_s"]),
            "startup_lt_0.5s": (("client_startup_s",), lambda: r["client_startup_s"] < TARGETS["startup_s"]),
            "rss_lt_150mb": (("client_rss_mb",), lambda: r["client_rss_mb"] < TARGETS["rss_mb"]),
            "load_every_request_accounted": (("load_every_request_accounted",),
                                             lambda: r["load_every_request_accounted"]),
            "repro_no_disagreement": (("repro_counts",), lambda: r["repro_counts"]["DISAGREE"] == 0),
        }
        # bool(): numpy comparisons give numpy bools, which JSON cannot write
        r["targets_met"] = {name: bool(test()) for name, (needs, test) in checks.items() if all(k in r for k in needs)}
        r["notes"] = {
            "cpu": "client, raw and anchor CPU per request are each the least disturbed (minimum) of "
                   "their runs (client and raw alternate over cpu_rounds): CPU time of fixed work only grows "
                   "when other jobs share the cores; *_runs and *_median have every run, cpu_others_cores "
                   "the other users' load during each",
            "raw_vs_client_ratio": "client CPU per request / raw grpcio loop CPU per request",
            "anchor_vs_client_ratio": "client CPU per request / anchor CPU per request (target <= 1/3)",
            "generate_10k_lt_5s": "10,000 / generate_perms_per_s, the faster of 2 runs on disk (generate_s_runs); "
                                  "quick mode runs a 200-experiment grid. On ext4, creating inodes soon after "
                                  "many were deleted (by anyone on the box) costs far more kernel CPU "
                                  "(recently_deleted() in the inode allocator): see generate_system_cpu_s; "
                                  "generate_tmpfs_s is the same work on tmpfs",
            "client_rss_mb": "the client summary's max_rss_mb (ru_maxrss), the client spawned through a "
                             "forking bash: ru_maxrss inherits the spawning process's RSS across fork+exec",
            "client_startup_s": "spawn to first request, timed from outside (wall clock before Popen to "
                                "the first record's start); client_startup_s_reported is the client's own "
                                "startup_s, which dates its start with psutil create_time (btime in whole "
                                "seconds, so up to 1 s high)",
            "lb_efficiency": "median over rounds of (HAProxy throughput / direct throughput, same clients "
                             "split over both servers at the same time); lb_rounds has each round's CPU "
                             "per request of servers, HAProxy and clients and the machine's busy cores",
        }
        if "analyze_records" in r:
            r["notes"]["analyze_s_63M"] = f"{r['analyze_records']:,} records of {r['analyze_runs']:,} runs"
        r["bench_wall_s"] = time.perf_counter() - started
        return r

    def bench_analyze(self) -> None:
        s, args = self.sizes, self.args
        sweep, reused = synthetic_sweep(Path(args.data_dir), s.synth_runs, s.synth_records)
        workers = min(2, os.cpu_count() or 1)
        agg = run_worker(["--worker", "aggregate", "--sweep", str(sweep), "--workers", str(workers)],
                         timeout_s=600)
        expected_runs = len(_synth_ids(s.synth_runs))
        if agg["runs"] != expected_runs or agg["records"] != expected_runs * s.synth_records or agg["p99_nan"]:
            raise RuntimeError(f"aggregate_records gave {agg}; expected {expected_runs} runs")
        self.result.update({"analyze_s_63M": agg["seconds"], "analyze_runs": agg["runs"],
                            "analyze_records": agg["records"], "analyze_workers": workers,
                            "analyze_data_reused": reused})
        say(f"analyze: {agg['records']:,} records of {agg['runs']:,} runs in {agg['seconds']:.1f} s")

    def ensure_model(self) -> Path:
        models = Path(self.args.models_dir).resolve()
        if not any((models / MODEL).glob("*/saved_model.pb")):
            say(f"exporting {MODEL} to {models}")
            from osmi_ee.osmi.export import export_models

            export_models([MODEL], models, samples=8, epochs=1)
        return models

    def servers_up(self) -> list[int]:
        models = self.ensure_model()
        from osmi_ee.osmi.model_config import render_model_config

        model_config = self.work / "models.config"
        model_config.write_text(render_model_config({MODEL: models / MODEL}))
        say("starting 2 model servers")
        self.start_server(0, model_config)
        self.start_server(1, model_config)
        return self.wait_servers()

    def close(self) -> None:
        self.group.stop(grace_s=10)
        shutil.rmtree(self.work, ignore_errors=True)


# ============================================================== CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="osmi-bench", description="Measure osmi-ee itself: client CPU vs a bare gRPC loop and "
        "the OSMI-style client, start-up, RSS, HAProxy efficiency, generation and analysis speed.")
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test, not a measurement)")
    parser.add_argument("--out", default="build/bench.json", help="where to write the figures (JSON)")
    parser.add_argument("--models-dir", default="build/models", help=f"exported models; {MODEL} is made if missing")
    parser.add_argument("--data-dir", default=None,
                        help="synthetic sweep for the analysis figure (default build/bench-data, "
                             "build/bench-data-quick with --quick)")
    parser.add_argument("--logs-dir", default="build/bench-logs", help="server, HAProxy and client logs")
    parser.add_argument("--parts", default=",".join(PARTS), type=lambda v: [p for p in v.split(",") if p],
                        help=f"what to measure, comma-separated (default: all of {','.join(PARTS)})")
    parser.add_argument("--worker", choices=("raw", "anchor", "aggregate"), help=argparse.SUPPRESS)
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


def _raise_exit(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "raw":
        print(json.dumps(worker_raw(args.target, args.requests, args.warmup, args.batch)))
        return 0
    if args.worker == "anchor":
        print(json.dumps(worker_anchor(args.target, args.requests, args.warmup, args.batch)))
        return 0
    if args.worker == "aggregate":
        print(json.dumps(worker_aggregate(args.sweep, args.workers)))
        return 0
    if not shutil.which("haproxy"):
        print("osmi-bench: haproxy is not installed (apt-get install haproxy)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    bench = Bench(args, QUICK if args.quick else FULL)
    try:
        result = bench.run()
    except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired) as exc:
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


if __name__ == "__main__":
    sys.exit(main())
