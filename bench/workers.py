"""The bench's comparison points, each run in its own fresh process (common.run_worker)
that prints one JSON object: a bare grpcio loop, the OSMI-style TensorFlow client,
and the timed raw-record aggregation."""

from __future__ import annotations

import time
from typing import Any

from osmi_ee.bench.common import MODEL


def _channel_options() -> list[tuple[str, int]]:
    from osmi_ee.osmi.schema import MAX_MESSAGE_BYTES

    return [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def _warm_channel(target: str, batch: int, warmup: int) -> tuple[Any, Any, list[bytes]]:
    """One channel to `target`, its Predict callable (prebuilt bytes in and out) and the
    prebuilt requests, after `warmup` synchronous calls."""
    import grpc

    from osmi_ee.osmi import protos
    from osmi_ee.osmi.client import build_requests

    payloads = build_requests(MODEL, batch, seed=0)
    channel = grpc.insecure_channel(target, options=_channel_options())
    call = channel.unary_unary(protos.PREDICT_METHOD)
    for i in range(warmup):
        call(payloads[i % len(payloads)], timeout=60)
    return channel, call, payloads


def worker_raw(target: str, requests: int, warmup: int, batch: int = 1) -> dict[str, Any]:
    """The floor: bare grpcio, one channel, the same prebuilt bytes, synchronous."""
    channel, call, payloads = _warm_channel(target, batch, warmup)
    n = len(payloads)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(requests):
        call(payloads[i % n], timeout=60)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    channel.close()
    return {"requests": requests, "cpu_s": cpu, "wall_s": wall}


def worker_raw_mux(target: str, requests: int, warmup: int, batch: int = 1, in_flight: int = 16) -> dict[str, Any]:
    """The floor of a multiplexed client: bare grpcio futures on one channel, `in_flight`
    calls kept in flight (each answer sends the next from gRPC's completion thread, as
    osmi.load does), the same prebuilt bytes; nothing checked, nothing recorded."""
    import threading

    import grpc

    channel, call, payloads = _warm_channel(target, batch, warmup)
    n = len(payloads)
    lock, finished = threading.Lock(), threading.Event()
    state = {"sent": 0, "done": 0, "failed": 0}

    def on_done(future: Any) -> None:
        if future.code() != grpc.StatusCode.OK:
            state["failed"] += 1
        with lock:
            state["done"] += 1
            more = state["sent"] < requests
            if more:
                state["sent"] += 1
            if state["done"] == requests:
                finished.set()
        if more:
            call.future(payloads[state["done"] % n], timeout=60).add_done_callback(on_done)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(min(in_flight, requests)):
        with lock:
            state["sent"] += 1
        call.future(payloads[0], timeout=60).add_done_callback(on_done)
    finished.wait(600)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    channel.close()
    if state["failed"] or state["done"] != requests:
        raise RuntimeError(f"raw_mux: {state}")
    return {"requests": requests, "cpu_s": cpu, "wall_s": wall, "in_flight": in_flight}


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
