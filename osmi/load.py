"""Load scenarios: when each request is sent. They record; they never judge.

- closed  (OSMI's): `streams` requests always in flight; each answer releases the next.
- poisson (MLPerf Server / InferBench): open loop, arrivals at a target rate whatever
  the server does; latency counts from the *scheduled* send time, so a slow server
  cannot hide its queueing (no coordinated omission).
- offline: every request issued at once; maximum throughput.

All use gRPC futures on one channel, so one process drives many request streams
(osmi.streams: which streams a process carries); every request keeps its stream id.
Measured side by side (loopback echo server, one process, CPU per checked request):
futures cost no more than grpc.aio at 1-16 streams and about the same at 64, and
need no event loop beside the Poisson scheduler, so futures it is (README).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    scenario: str = "closed"
    streams: int = 1  # closed loop: requests in flight per stream (measure.streams)
    requests: int | None = None  # per stream: count-bounded ...
    duration_s: float | None = None  # ... or time-bounded
    rate: float | None = None  # poisson: requests per second from this process (all its streams)
    seed: int = 0
    stop_file: str | None = None  # the runner ends a time-bounded run early by creating it
    stream_ids: tuple[int, ...] = (0,)  # the streams this process carries

    @property
    def total_requests(self) -> int | None:
        """The count bound of the whole process: `requests` per stream."""
        return self.requests * len(self.stream_ids) if self.requests else self.requests


class StopSignal:
    """Has the runner asked us to stop? A file check at most every 5 ms."""

    def __init__(self, path: str | None):
        self.path, self.stopped, self._next = path, False, 0

    def __call__(self) -> bool:
        if self.path and not self.stopped:
            now = time.perf_counter_ns()
            if now >= self._next:
                self._next = now + 5_000_000
                self.stopped = os.path.exists(self.path)
        return self.stopped


def poisson_schedule(rate: float, *, requests: int | None, duration_s: float | None,
                     seed: int) -> np.ndarray:
    """Send offsets (s) of a Poisson process conditioned on its expected count.

    Given N arrivals in [0, D), a Poisson process's arrival times are N sorted
    uniform draws. Fixing N = rate x D keeps exponential gaps while the offered
    rate over the window is exactly the target (no luck of the draw in a test).
    """
    if requests is None:
        requests = max(1, round(rate * duration_s))
    span = requests / rate
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.0, span, size=requests))


class Issuer:
    """Issues calls through `send(i, scheduled_perf_ns, done, stream)` and tracks what is in flight."""

    def __init__(self, send: Callable[[int, int, Callable[[], None], int], None]):
        self._send = send
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Event()
        self._idle.set()
        self.issued = 0

    def issue(self, scheduled_ns: int, on_done: Callable[[], None] | None = None, stream: int = 0) -> None:
        with self._lock:
            i = self.issued
            self.issued += 1
            self._in_flight += 1
            self._idle.clear()

        def done() -> None:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()
            if on_done:
                on_done()

        self._send(i, scheduled_ns, done, stream)

    def wait_idle(self, timeout_s: float) -> bool:
        return self._idle.wait(timeout_s)


def run_closed(issuer: Issuer, plan: Plan, start_ns: int) -> None:
    end_ns = start_ns + int(plan.duration_s * 1e9) if plan.duration_s else None
    lock = threading.Lock()
    budget = plan.total_requests or 0
    stop = threading.Event()
    asked_to_stop = StopSignal(plan.stop_file)

    def take() -> bool:
        """May one more request go out? (checked and counted atomically)"""
        nonlocal budget
        if end_ns is not None:
            return time.perf_counter_ns() < end_ns and not asked_to_stop()
        if asked_to_stop():  # the runner's window loop has measured enough
            return False
        with lock:
            if budget > 0:
                budget -= 1
                return True
            return False

    def next_of(stream: int) -> Callable[[], None]:
        def next_one() -> None:
            # Runs on gRPC's completion thread: an answer releases the stream's next request.
            if not stop.is_set() and take():
                issuer.issue(time.perf_counter_ns(), next_one, stream)
            else:
                stop.set()
        return next_one

    for _ in range(plan.streams):
        for stream in plan.stream_ids:
            if take():
                issuer.issue(time.perf_counter_ns(), next_of(stream), stream)
    if issuer.issued:
        stop.wait()


def run_poisson(issuer: Issuer, plan: Plan, start_ns: int) -> None:
    offsets = poisson_schedule(plan.rate, requests=plan.total_requests, duration_s=plan.duration_s,
                               seed=plan.seed)
    asked_to_stop = StopSignal(plan.stop_file)
    ids = plan.stream_ids
    for i, offset in enumerate(offsets):  # open loop: arrivals dealt to the streams in turn
        if asked_to_stop():
            break
        scheduled = start_ns + int(offset * 1e9)
        delay = (scheduled - time.perf_counter_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        issuer.issue(scheduled, stream=ids[i % len(ids)])


OFFLINE_DEPTH = 64  # requests kept in flight per stream by a time-bounded offline run


def run_offline(issuer: Issuer, plan: Plan, start_ns: int) -> None:
    if plan.duration_s:  # "all at once" for a time: a deep closed loop
        run_closed(issuer, Plan("closed", OFFLINE_DEPTH, None, plan.duration_s, stop_file=plan.stop_file,
                                stream_ids=plan.stream_ids), start_ns)
        return
    for _ in range(plan.requests):
        for stream in plan.stream_ids:
            issuer.issue(start_ns, stream=stream)


RUNNERS = {"closed": run_closed, "poisson": run_poisson, "offline": run_offline}  # keys: schema.SCENARIOS
