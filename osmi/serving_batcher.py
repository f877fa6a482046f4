"""osmi-model-server's batching queue (`--enable_batching`), after TF-Serving's
BasicBatchScheduler: concurrent Predict calls for the same model, version,
signature, output filter and per-sample shapes are merged along the batch
dimension and run as one call; each caller gets its own rows back.

Rules (TF-Serving's, kept simple):
- A batch closes when the next request would not fit in `max_batch_size`, or
  when it is full; an open batch is run once `batch_timeout_us` has passed since
  its first request, or at once when a thread is free and the timeout is 0
  (requests that arrive while every thread is busy then join the open batch).
- `num_batch_threads` threads run batches; at most `max_enqueued_batches`
  batches (the open one included) wait per queue: over that, UNAVAILABLE.
- A request larger than `max_batch_size` is refused with INVALID_ARGUMENT (no
  splitting: TF-Serving's default, enable_large_batch_splitting off).
- Every batch run is counted by size (`BatchSizes`), for the Prometheus page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np

from osmi_ee.osmi.batching import QueueSettings
from osmi_ee.osmi.server_metrics import PROCESSED_BATCH_SIZE_METRIC, format_histogram
from osmi_ee.osmi.serving_models import ServingError

log = logging.getLogger("osmi-model-server")

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[Arrays], Arrays]  # merged inputs -> merged outputs (numpy, batch-major)


class BatchSizes:
    """How many batches of each size ran (thread-safe), as TF-Serving's histogram."""

    def __init__(self, max_batch_size: int) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}
        self.bounds = list(range(1, max_batch_size + 1))  # a bucket per size: exact

    def record(self, size: int) -> None:
        with self._lock:
            self._counts[size] = self._counts.get(size, 0) + 1

    def snapshot(self) -> dict[int, int]:
        with self._lock:
            return dict(self._counts)

    def prometheus_page(self) -> str:
        return format_histogram(PROCESSED_BATCH_SIZE_METRIC, self.snapshot(), self.bounds)


@dataclass
class _Task:
    arrays: Arrays
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: ServingError | None = None


@dataclass
class _Batch:
    run: RunBatch
    opened: float  # time.monotonic() of its first request
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


class Batcher:
    """The queues (one per kind of request) and the threads that run their batches."""

    def __init__(self, settings: QueueSettings, sizes: BatchSizes | None = None) -> None:
        self.settings = settings
        self.sizes = sizes if sizes is not None else BatchSizes(settings.max_batch_size)
        self._timeout_s = settings.batch_timeout_us / 1e6
        self._cond = threading.Condition()
        self._queues: dict[Hashable, deque[_Batch]] = {}
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{k}", daemon=True)
                         for k in range(settings.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key: Hashable, arrays: Mapping[str, np.ndarray], run: RunBatch) -> Arrays:
        """Queue one request (every input batch-major); blocks until its batch ran.
        `key` names what may be merged; `run` computes a merged batch."""
        sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
        if len(sizes) != 1 or None in sizes:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "batching needs every input to have the same 0th-dimension (batch) size, "
                               f"got shapes {[list(a.shape) for a in arrays.values()]}")
        size = sizes.pop()
        limit = self.settings.max_batch_size
        if size > limit:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"batch {size} is larger than the batching queue's max_batch_size {limit}")
        task = _Task(dict(arrays), size)
        with self._cond:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.setdefault(key, deque())
            if not queue or queue[-1].closed or queue[-1].size + size > limit:
                if queue:
                    queue[-1].closed = True
                if len(queue) >= self.settings.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                       f"the batching queue is full ({len(queue)} batches waiting, "
                                       f"max_enqueued_batches {self.settings.max_enqueued_batches})")
                queue.append(_Batch(run, time.monotonic()))
            batch = queue[-1]
            batch.tasks.append(task)
            batch.size += size
            batch.closed = batch.size >= limit
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def stop(self) -> None:
        """Stop the threads; requests still queued are answered UNAVAILABLE."""
        with self._cond:
            self._stopping = True
            left = [t for queue in self._queues.values() for b in queue for t in b.tasks]
            self._queues.clear()
            self._cond.notify_all()
        for task in left:
            task.error = ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            task.done.set()
        for thread in self._threads:
            thread.join(timeout=5)

    # ------------------------------------------------------------ the threads

    def _next(self) -> _Batch | None:
        """The next batch due, taken off its queue (None when stopping); waits for one."""
        with self._cond:
            while not self._stopping:
                now, wait = time.monotonic(), None
                for queue in self._queues.values():
                    if not queue:
                        continue
                    first = queue[0]
                    due = first.opened + self._timeout_s
                    if first.closed or len(queue) > 1 or now >= due:
                        return queue.popleft()
                    wait = due - now if wait is None else min(wait, due - now)
                self._cond.wait(wait)
            return None

    def _work(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            self._execute(batch)

    def _execute(self, batch: _Batch) -> None:
        tasks = batch.tasks
        try:
            if len(tasks) == 1:
                merged = tasks[0].arrays
            else:
                merged = {key: np.concatenate([t.arrays[key] for t in tasks]) for key in tasks[0].arrays}
            outputs = batch.run(merged)
            self.sizes.record(batch.size)
            start = 0
            for task in tasks:
                task.outputs = {key: value[start:start + task.size] for key, value in outputs.items()}
                start += task.size
        except ServingError as exc:
            for task in tasks:
                task.error = exc
        except Exception as exc:  # a bug must still answer every caller of the batch
            log.exception("batch of %d failed", batch.size)
            for task in tasks:
                task.error = ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            for task in tasks:
                task.done.set()
