"""One OSMI client process: Predict calls (ModelInfer for Triton) on many request streams, every request recorded.

One process multiplexes a block of the experiment's request streams (osmi.streams)
on one gRPC channel per target: futures with callbacks, so completions batch up in
the process. With several targets (`balancer: none`: every shard's address) it
round-robins its requests over them and counts what it sent to each. It measures
its own CPU over the measured window (`cpu_share`: CPU seconds of all its threads /
wall seconds), so the runner can tell a saturated load generator from a slow server.

Lean by design: no TensorFlow import (TF-Serving's messages come from
osmi_ee.osmi.protos), inputs are made and serialized before the timed loop,
each response is checked (dtype, shape, size) and dropped at once, so memory
stays bounded at any batch size. The client records; it does not judge: the
job runner computes throughput and validity from all clients' records.

What a client does comes from one place, its experiment's config.yaml
(ClientSettings.from_experiment); the command line adds only what differs per
client or per launch: its id, the target, the runner's bound on the run, and
`--no-barrier` for a client started by hand.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

_IMPORTED_AT = time.time()
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from osmi_ee.ee.config import Grid, GridError, load_experiment_config
from osmi_ee.ee.paths import ExperimentPaths, atomic_write, write_atomic, write_json
from osmi_ee.osmi import protos
from osmi_ee.osmi.load import RUNNERS, Issuer, Plan
from osmi_ee.osmi.schema import BAD_RESPONSE, MAX_MESSAGE_BYTES, MEASURED, WARMUP
from osmi_ee.osmi.specs import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME, get_spec
from osmi_ee.osmi.streams import parse_streams, plan_processes

INPUT_POOL = 4  # distinct request payloads, cycled, so no layer can cache one answer
BARRIER_TIMEOUT_S = 600.0  # the runner's `go` comes once every client has warmed up


@dataclass(frozen=True)
class ClientSettings:
    """Everything one client does, the same for every client of an experiment. No
    defaults here: they are the grid's (ee.config.Measure), resolved in config.yaml."""

    model: str
    batch: int
    scenario: str  # schema.SCENARIOS
    streams: int  # closed loop: requests in flight per stream (measure.streams)
    rate: float | None  # poisson: requests/s of one stream (a process sends this x its streams)
    requests: int | None  # measured requests ...
    duration_s: float | None  # ... or measure for this long instead
    warmup: int  # requests before the measured window (never counted) ...
    warmup_s: float  # ... and warm up for at least this long
    timeout_s: float  # deadline of one request
    seed: int  # input data (client k adds its own offset)
    server: str = "auto"  # serve.server or the `server` axis: triton speaks KServe v2, the rest TF-Serving's API

    @classmethod
    def from_experiment(cls, grid: Grid, params: dict[str, Any]) -> ClientSettings:
        """From an experiment's config: its axis values and `measure` section."""
        m = grid.measure
        rate = params["rate"] / params["clients"] if params["rate"] else None  # the grid's is for all streams
        return cls(model=params["model"], batch=params["batch"], scenario=params["scenario"],
                   streams=m.streams, rate=rate, requests=m.requests, duration_s=m.duration_s,
                   warmup=m.warmup_requests, warmup_s=m.warmup_s, timeout_s=m.timeout_s, seed=m.seed,
                   server=params.get("server") or grid.serve.server)  # as server_kinds.experiment_server

    def bounded(self, requests: int | None = None, duration_s: float | None = None) -> ClientSettings:
        """The same with the runner's bound (a count or a time) in place of the config's."""
        if requests is None and duration_s is None:
            return self
        return replace(self, requests=requests, duration_s=duration_s)


@dataclass
class Records:
    """Per-request columns in preallocated, growable numpy arrays."""

    capacity: int
    size: int = 0
    phase: np.ndarray = field(init=False)
    start_ns: np.ndarray = field(init=False)
    latency_ns: np.ndarray = field(init=False)
    code: np.ndarray = field(init=False)
    delay_ns: np.ndarray = field(init=False)  # open loop: actual send - scheduled send
    stream: np.ndarray = field(init=False)  # the request stream it belongs to (osmi.streams)

    def __post_init__(self) -> None:
        self.phase = np.zeros(self.capacity, np.int8)
        self.start_ns = np.zeros(self.capacity, np.int64)
        self.latency_ns = np.zeros(self.capacity, np.int64)
        self.code = np.zeros(self.capacity, np.int16)
        self.delay_ns = np.zeros(self.capacity, np.int64)
        self.stream = np.zeros(self.capacity, np.int32)

    COLUMNS = ("phase", "start_ns", "latency_ns", "code", "delay_ns", "stream")

    def add(self, phase: int, start_ns: int, latency_ns: int, code: int, delay_ns: int = 0,
            stream: int = 0) -> None:
        if self.size == self.capacity:
            self.capacity *= 2
            for name in self.COLUMNS:
                old = getattr(self, name)
                new = np.zeros(self.capacity, old.dtype)
                new[: self.size] = old
                setattr(self, name, new)
        i = self.size
        self.phase[i], self.start_ns[i], self.latency_ns[i], self.code[i] = phase, start_ns, latency_ns, code
        self.delay_ns[i], self.stream[i] = delay_ns, stream
        self.size += 1

    def write_parquet(self, path: Path, client: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = self.size
        table = pa.table({
            "client": pa.array(np.full(n, client, np.int32)),
            "seq": pa.array(np.arange(n, dtype=np.int32)),
            "phase": pa.array(self.phase[:n]),
            "start_ns": pa.array(self.start_ns[:n]),
            "latency_ns": pa.array(self.latency_ns[:n]),
            "code": pa.array(self.code[:n]),
            "delay_ns": pa.array(self.delay_ns[:n]),
            "stream": pa.array(self.stream[:n]),
        })
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def build_requests(model: str, batch: int, seed: int, count: int = INPUT_POOL) -> list[bytes]:
    """Serialized PredictRequests with random float32 inputs of the model's shape."""
    spec = get_spec(model)
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        data = rng.random((batch, *spec.input_shape), dtype=np.float32)
        request = protos.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = SIGNATURE_NAME
        tensor = request.inputs[INPUT_NAME]
        tensor.dtype = protos.DT_FLOAT
        for size in data.shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = data.tobytes()
        requests.append(request.SerializeToString())
    return requests


class ResponseChecker:
    """Checks an answer has the model's output tensor at the right dtype and shape."""

    def __init__(self, model: str, batch: int):
        spec = get_spec(model)
        self.dims = [batch, *spec.output_shape]
        self.nbytes = batch * spec.output_bytes_per_sample
        self.count = self.nbytes // 4

    def problem(self, payload: bytes) -> str | None:
        response = protos.PredictResponse.FromString(payload)
        if OUTPUT_NAME not in response.outputs:
            return f"no output {OUTPUT_NAME!r}; got {sorted(response.outputs)}"
        tensor = response.outputs[OUTPUT_NAME]
        dims = [d.size for d in tensor.tensor_shape.dim]
        if tensor.dtype != protos.DT_FLOAT or dims != self.dims:
            return f"output {OUTPUT_NAME!r} is dtype {tensor.dtype} shape {dims}; expected DT_FLOAT {self.dims}"
        if len(tensor.tensor_content) != self.nbytes and len(tensor.float_val) != self.count:
            return f"output {OUTPUT_NAME!r} holds the wrong number of values"
        return None


def wire_protocol(server: str) -> tuple[str, Callable[..., list[bytes]], Callable[[str, int], Any]]:
    """(gRPC method, request builder, response checker class) of a server's API: KServe
    v2 ModelInfer for Triton, TF-Serving's Predict for every other server."""
    if server == "triton":
        from osmi_ee.osmi import kserve
        from osmi_ee.osmi.kserve_client import InferResponseChecker, build_infer_requests

        return kserve.INFER_METHOD, build_infer_requests, InferResponseChecker
    return protos.PREDICT_METHOD, build_requests, ResponseChecker


def _process_start_s() -> float:
    """This process's start time (epoch s): includes interpreter start-up.

    From /proc/self/stat (clock ticks since boot) and /proc/uptime; psutil's
    create_time() rounds the boot time to whole seconds, which is too coarse.
    """
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). ru_maxrss would also count
    what the parent had when it forked us."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wait_for_go(barrier: Path, client: int, timeout_s: float) -> float:
    """Says ready, then waits for the runner's `go` file; returns the start time (epoch s)."""
    barrier.mkdir(parents=True, exist_ok=True)
    ready = barrier / f"ready-{client}"
    write_atomic(ready, str(time.time()))
    go = barrier / "go"
    deadline = time.monotonic() + timeout_s
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {go} after {timeout_s:.0f} s")
        time.sleep(0.005)
    start = float(go.read_text())
    delay = start - time.time()
    if delay > 0:
        time.sleep(delay)
    return start


def run_client(settings: ClientSettings, client_id: int, target: str | list[str], records_path: Path,
               barrier: Path | None, stream_ids: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Warm up, wait for the runner's `go` in `barrier` (None: start at once), load
    `stream_ids` (default: one stream, numbered as the client), write every request to
    `records_path`; returns this client process's summary. Several targets: round robin."""
    s = settings
    streams = tuple(stream_ids) if stream_ids is not None else (client_id,)
    targets = [target] if isinstance(target, str) else list(target)
    method, build, check = wire_protocol(s.server)
    payloads = build(s.model, s.batch, s.seed + 7919 * client_id, INPUT_POOL)
    checker = check(s.model, s.batch)
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    channels = [grpc.insecure_channel(t, options=options) for t in targets]
    # No (de)serializers: we send prebuilt bytes and parse the answer ourselves.
    calls = [channel.unary_unary(method) for channel in channels]
    total = s.warmup + (s.requests * len(streams) if s.requests else 1024)
    records = Records(capacity=total)
    lock = threading.Lock()
    errors: dict[str, dict] = {}
    warmup_failed = 0
    # Wall-clock start of each record = wall0 + (perf - perf0): precise and comparable across hosts.
    wall0, perf0 = time.time_ns(), time.perf_counter_ns()

    def outcome(future_or_payload) -> tuple[int, str]:
        try:
            payload = future_or_payload.result() if hasattr(future_or_payload, "result") else future_or_payload
            problem = checker.problem(payload)
            return (BAD_RESPONSE, problem) if problem else (0, "")
        except grpc.RpcError as exc:
            return exc.code().value[0], f"{exc.code().name}: {exc.details()}"

    def record(phase: int, scheduled_ns: int, code: int, message: str, delay_ns: int = 0, stream: int = 0) -> None:
        nonlocal warmup_failed
        # From the scheduled send: an open-loop request queued behind a slow one pays for it.
        latency = time.perf_counter_ns() - scheduled_ns
        with lock:
            records.add(phase, wall0 + scheduled_ns - perf0, latency, code, delay_ns, stream)
            if code and phase == MEASURED:
                entry = errors.setdefault(str(code), {"count": 0, "first": message})
                entry["count"] += 1
            elif code:
                warmup_failed += 1  # warm-up failures are reported, not judged

    def send(i: int, scheduled_ns: int, done, stream: int) -> None:
        delay = time.perf_counter_ns() - scheduled_ns
        # Round robin over the targets (processes start on different ones); request i of
        # this process goes to target (i + client) mod n, so the counts follow from `issued`.
        future = calls[(i + client_id) % len(calls)].future(payloads[i % len(payloads)], timeout=s.timeout_s)

        def finished(f) -> None:
            record(MEASURED, scheduled_ns, *outcome(f), delay, stream)
            done()

        future.add_done_callback(finished)

    startup_s = time.time() - _process_start_s()  # interpreter start to first request
    try:
        warm_end = time.perf_counter_ns() + int(s.warmup_s * 1e9)
        i = 0
        # At least one warm-up request per target, so every channel is connected before `go`.
        while i < max(s.warmup, len(calls) if s.warmup else 0) or time.perf_counter_ns() < warm_end:
            t0 = time.perf_counter_ns()
            try:
                code, message = outcome(calls[i % len(calls)](payloads[i % len(payloads)], timeout=s.timeout_s))
            except grpc.RpcError as exc:
                code, message = exc.code().value[0], str(exc.code().name)
            record(WARMUP, t0, code, message, 0, streams[i % len(streams)])
            i += 1
        go = wait_for_go(barrier, client_id, BARRIER_TIMEOUT_S) if barrier else time.time()
        start_ns = perf0 + int(go * 1e9) - wall0
        # The runner's window loop ends the run early through this file.
        rate = s.rate * len(streams) if s.rate else None
        plan = Plan(s.scenario, s.streams, s.requests, s.duration_s, rate, s.seed + client_id,
                    stop_file=str(barrier / "stop") if barrier else None, stream_ids=streams)
        issuer = Issuer(send)
        # Process CPU (all threads) spent generating load: the client's own cost per request,
        # and, over the wall time, how close it came to a saturated core.
        cpu0, wall_start = time.process_time(), time.perf_counter()
        RUNNERS[s.scenario](issuer, plan, start_ns)
        if not issuer.wait_idle(s.timeout_s + 30):
            raise TimeoutError("requests still in flight after their deadline")
        cpu_s, busy_s = time.process_time() - cpu0, time.perf_counter() - wall_start
        whole, rest = divmod(issuer.issued, len(calls))  # i -> target (i + client) mod n
        per_target = [whole + ((j - client_id) % len(calls) < rest) for j in range(len(calls))]
    finally:
        for channel in channels:
            channel.close()

    n = records.size
    measured = records.phase[:n] == MEASURED
    codes = records.code[:n][measured]
    summary = {
        "client": client_id,
        "target": targets[0] if len(targets) == 1 else ",".join(targets),
        "model": s.model,
        "batch": s.batch,
        "scenario": s.scenario,
        "streams": s.streams,
        "stream_first": streams[0],
        "stream_count": len(streams),
        "rate": rate,
        "warmup_sent": int((~measured).sum()),
        "warmup_failed": warmup_failed,
        "sent": int(measured.sum()),
        "ok": int((codes == 0).sum()),
        "failed": int((codes != 0).sum()),
        "errors": errors,
        "sent_by_target": dict(zip(targets, per_target)),
        "startup_s": startup_s,
        "cpu_s_measured": cpu_s,
        "wall_s_measured": busy_s,
        # CPU of all its threads / wall time over the measured window: 1.0 = one whole core
        "cpu_share": cpu_s / busy_s if busy_s > 0 else None,
        "max_rss_mb": _peak_rss_mb(),
    }
    order = np.argsort(records.start_ns[:n], kind="stable")  # callbacks finish out of order
    for name in Records.COLUMNS:
        getattr(records, name)[:n] = getattr(records, name)[:n][order]
    records.write_parquet(records_path, client_id)
    return summary


def client_argv(config: Path, target: str, *, client_id: int | None = None, requests: int | None = None,
                duration_s: float | None = None, barrier: bool = True, streams: str | None = None) -> list[str]:
    """The command line of one client process; without `client_id`, of every task of an
    srun step (each takes its SLURM_PROCID). `target`: one address, or several comma-separated
    (round robin); `streams`: its stream ids `a-b` (default: its block of the experiment's
    one-node split, osmi.streams)."""
    argv = [sys.executable, "-m", "osmi_ee.osmi.client", f"--config={config}"]
    if client_id is not None:
        argv.append(f"--client-id={client_id}")
    argv.append(f"--target={target}")
    if streams is not None:
        argv.append(f"--streams={streams}")
    if requests is not None:
        argv.append(f"--requests={requests}")
    if duration_s is not None:
        argv.append(f"--duration-s={duration_s}")
    if not barrier:
        argv.append("--no-barrier")
    return argv


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="osmi-client",
        description="OSMI load generator: TF-Serving Predict calls (KServe v2 ModelInfer for serve.server "
                    "triton) on several request streams, with per-request records. What it sends (model, "
                    "batch, scenario, streams, "
                    "rate, warm-up, deadline, seed, bound) comes from the experiment's config.yaml (its "
                    "experiment and measure sections); records go to results/requests-client<k>.parquet "
                    "and the summary to results/client-<k>.json beside it.")
    parser.add_argument("--config", required=True, type=Path, help="the experiment's generated config.yaml")
    parser.add_argument("--target", required=True,
                        help="host:port of the balancer or a model server; several, comma-separated: "
                             "round robin over them (balancer: none)")
    parser.add_argument("--client-id", type=int, default=None,
                        help="this client process's number (default: $SLURM_PROCID under srun, else 0)")
    parser.add_argument("--streams", default=None,
                        help="the request streams this process carries, `a-b` or `a` (default: process "
                             "k's block of the experiment's `clients` streams, split as osmi-run splits them)")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--requests", type=int, default=None,
                       help="measured requests, in place of the config's (the runner's bound)")
    bound.add_argument("--duration-s", type=float, default=None,
                       help="measure for this many seconds instead (the runner ends it earlier "
                            "through results/barrier/stop)")
    parser.add_argument("--no-barrier", action="store_true",
                        help="start at once instead of waiting for the runner's go file in results/barrier/")
    args = parser.parse_args(argv)
    if args.client_id is None:
        args.client_id = int(os.environ.get("SLURM_PROCID", "0"))
    if args.client_id < 0 or (args.requests is not None and args.requests < 1) \
            or (args.duration_s is not None and not args.duration_s > 0):
        parser.error("--client-id must be >= 0, --requests >= 1, --duration-s > 0")
    if args.streams is not None:
        try:
            args.streams = tuple(parse_streams(args.streams))
        except ValueError as exc:
            parser.error(f"--streams: {exc}")
    if any(not t.strip() for t in args.target.split(",")):
        parser.error(f"--target: host:port, or several comma-separated (got {args.target!r})")
    return args


def default_streams(client_id: int, clients: int) -> tuple[int, ...]:
    """Process k's streams when none are given: its block of the one-node split."""
    processes = plan_processes([(0, clients)])
    if client_id >= len(processes):
        raise ValueError(f"client {client_id}: the experiment's {clients} stream(s) make {len(processes)} "
                         "process(es); pass --streams")
    return tuple(processes[client_id].streams)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        grid, params, _ = load_experiment_config(args.config)
    except GridError as exc:
        print(f"osmi-client: {exc}", file=sys.stderr)
        return 2
    settings = ClientSettings.from_experiment(grid, params).bounded(args.requests, args.duration_s)
    paths = ExperimentPaths(args.config.resolve().parent)
    k = args.client_id
    try:
        streams = args.streams or default_streams(k, params["clients"])
        summary = run_client(settings, k, args.target.split(","), paths.client_records(k),
                             None if args.no_barrier else paths.barrier, streams)
    except (TimeoutError, OSError, ValueError) as exc:
        print(f"osmi-client {k}: {exc}", file=sys.stderr)
        return 1
    write_json(paths.client_summary(k), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
