"""One OSMI client process: closed-loop Predict calls, every request recorded.

Lean by design: no TensorFlow import (TF-Serving's messages come from
osmi_ee.osmi.protos), inputs are made and serialized before the timed loop,
each response is checked (dtype, shape, size) and dropped at once, so memory
stays bounded at any batch size. The client records; it does not judge: the
job runner computes throughput and validity from all clients' records.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

_IMPORTED_AT = time.time()
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from osmi_ee.ee.paths import atomic_write, write_atomic
from osmi_ee.osmi import protos
from osmi_ee.osmi.load import RUNNERS, SCENARIOS, Issuer, Plan
from osmi_ee.osmi.specs import (INPUT_NAME, MAX_MESSAGE_BYTES, MODEL_NAMES, OUTPUT_NAME, SIGNATURE_NAME,
                                get_spec)

BAD_RESPONSE = 100  # our code for "answered OK but with the wrong tensor"
WARMUP, MEASURED = 0, 1
INPUT_POOL = 4  # distinct request payloads, cycled, so no layer can cache one answer


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

    def __post_init__(self) -> None:
        self.phase = np.zeros(self.capacity, np.int8)
        self.start_ns = np.zeros(self.capacity, np.int64)
        self.latency_ns = np.zeros(self.capacity, np.int64)
        self.code = np.zeros(self.capacity, np.int16)
        self.delay_ns = np.zeros(self.capacity, np.int64)

    COLUMNS = ("phase", "start_ns", "latency_ns", "code", "delay_ns")

    def add(self, phase: int, start_ns: int, latency_ns: int, code: int, delay_ns: int = 0) -> None:
        if self.size == self.capacity:
            self.capacity *= 2
            for name in self.COLUMNS:
                old = getattr(self, name)
                new = np.zeros(self.capacity, old.dtype)
                new[: self.size] = old
                setattr(self, name, new)
        i = self.size
        self.phase[i], self.start_ns[i], self.latency_ns[i], self.code[i] = phase, start_ns, latency_ns, code
        self.delay_ns[i] = delay_ns
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


def run_client(args: argparse.Namespace) -> dict:
    payloads = build_requests(args.model, args.batch, args.seed + 7919 * args.client_id)
    checker = ResponseChecker(args.model, args.batch)
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    channel = grpc.insecure_channel(args.target, options=options)
    # No (de)serializers: we send prebuilt bytes and parse the answer ourselves.
    predict = channel.unary_unary(protos.PREDICT_METHOD)
    records = Records(capacity=args.warmup + (args.requests or 1024))
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

    def record(phase: int, scheduled_ns: int, code: int, message: str, delay_ns: int = 0) -> None:
        nonlocal warmup_failed
        # From the scheduled send: an open-loop request queued behind a slow one pays for it.
        latency = time.perf_counter_ns() - scheduled_ns
        with lock:
            records.add(phase, wall0 + scheduled_ns - perf0, latency, code, delay_ns)
            if code and phase == MEASURED:
                entry = errors.setdefault(str(code), {"count": 0, "first": message})
                entry["count"] += 1
            elif code:
                warmup_failed += 1  # warm-up failures are reported, not judged

    def send(i: int, scheduled_ns: int, done) -> None:
        delay = time.perf_counter_ns() - scheduled_ns
        future = predict.future(payloads[i % len(payloads)], timeout=args.timeout_s)

        def finished(f) -> None:
            record(MEASURED, scheduled_ns, *outcome(f), delay)
            done()

        future.add_done_callback(finished)

    startup_s = time.time() - _process_start_s()  # interpreter start to first request
    try:
        warm_end = time.perf_counter_ns() + int(args.warmup_s * 1e9)
        i = 0
        while i < args.warmup or time.perf_counter_ns() < warm_end:
            t0 = time.perf_counter_ns()
            try:
                code, message = outcome(predict(payloads[i % len(payloads)], timeout=args.timeout_s))
            except grpc.RpcError as exc:
                code, message = exc.code().value[0], str(exc.code().name)
            record(WARMUP, t0, code, message)
            i += 1
        go = wait_for_go(Path(args.barrier), args.client_id, args.barrier_timeout_s) if args.barrier else time.time()
        start_ns = perf0 + int(go * 1e9) - wall0
        plan = Plan(args.scenario, args.streams, args.requests, args.duration_s, args.rate,
                    args.seed + args.client_id, stop_file=args.stop_file)
        issuer = Issuer(send)
        # Process CPU (all threads) spent generating load: the client's own cost per request.
        cpu0 = time.process_time()
        RUNNERS[args.scenario](issuer, plan, start_ns)
        if not issuer.wait_idle(args.timeout_s + 30):
            raise TimeoutError("requests still in flight after their deadline")
        cpu_s = time.process_time() - cpu0
    finally:
        channel.close()

    n = records.size
    measured = records.phase[:n] == MEASURED
    codes = records.code[:n][measured]
    summary = {
        "client": args.client_id,
        "target": args.target,
        "model": args.model,
        "batch": args.batch,
        "scenario": args.scenario,
        "streams": args.streams,
        "rate": args.rate,
        "warmup_sent": int((~measured).sum()),
        "warmup_failed": warmup_failed,
        "sent": int(measured.sum()),
        "ok": int((codes == 0).sum()),
        "failed": int((codes != 0).sum()),
        "errors": errors,
        "startup_s": startup_s,
        "cpu_s_measured": cpu_s,
        "max_rss_mb": _peak_rss_mb(),
    }
    order = np.argsort(records.start_ns[:n], kind="stable")  # callbacks finish out of order
    for name in Records.COLUMNS:
        getattr(records, name)[:n] = getattr(records, name)[:n][order]
    records.write_parquet(Path(args.records), args.client_id)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="osmi-client",
        description="OSMI load generator: closed-loop TF-Serving Predict calls with per-request records.")
    parser.add_argument("--target", required=True, help="host:port of the balancer or a model server")
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--batch", type=int, default=1, help="samples per request (default 1)")
    parser.add_argument("--scenario", choices=SCENARIOS, default="closed",
                        help="closed: --streams in flight; poisson: open loop at --rate; offline: all at once")
    parser.add_argument("--streams", type=int, default=1, help="closed loop: requests in flight (default 1)")
    parser.add_argument("--rate", type=float, help="poisson: requests per second sent by this client")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--requests", type=int, default=None, help="measured requests (default 100)")
    group.add_argument("--duration-s", type=float, default=None, help="measure for this many seconds instead")
    parser.add_argument("--warmup", type=int, default=5, help="requests before the measured window (not counted)")
    parser.add_argument("--warmup-s", type=float, default=0.0, help="... and warm up for at least this long")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="deadline of one request")
    parser.add_argument("--client-id", type=int, default=None,
                        help="this client's number (default: $SLURM_PROCID under srun, else 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", required=True, help="per-request records (Parquet) to write")
    parser.add_argument("--summary", help="client summary (JSON) to write; default: print it")
    parser.add_argument("--barrier", help="folder to report ready in and wait for a `go` file (job runner)")
    parser.add_argument("--barrier-timeout-s", type=float, default=600.0)
    parser.add_argument("--stop-file", help="end a --duration-s run early once this file exists")
    args = parser.parse_args(argv)
    if args.client_id is None:
        args.client_id = int(os.environ.get("SLURM_PROCID", "0"))
    # One command line for all srun tasks: {k} in a path is the client's number.
    args.records = args.records.replace("{k}", str(args.client_id))
    if args.summary:
        args.summary = args.summary.replace("{k}", str(args.client_id))
    if args.requests is None and args.duration_s is None:
        args.requests = 100
    if args.batch < 1 or (args.requests is not None and args.requests < 1) or args.warmup < 0:
        parser.error("--batch and --requests must be >= 1, --warmup >= 0")
    if args.streams < 1:
        parser.error("--streams must be >= 1")
    if args.scenario == "poisson" and not (args.rate and args.rate > 0):
        parser.error("--scenario poisson needs --rate > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run_client(args)
    except (TimeoutError, OSError) as exc:
        print(f"osmi-client {args.client_id}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(summary, indent=2) + "\n"
    if args.summary:
        write_atomic(Path(args.summary), text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
