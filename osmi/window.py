"""The measurement window loop: how long the clients run, and when the runner stops them.

The runner measures window after window until the last k agree and there are
enough requests, or a cap (windows, seconds) is reached; then it tells the
clients to stop. The verdict recomputes each window's rate from the clients'
own records, cut at the same edges, with the same rule (metrics.stability_problem,
the rule's one home).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from osmi_ee.ee.config import Measure
from osmi_ee.ee.paths import write_atomic
from osmi_ee.osmi import metrics


def client_limits(measure: Measure, scenario: str) -> tuple[int | None, float | None]:
    """The clients' own bound, (requests, duration_s): enough for the longest
    measurement the loop may ask for; the loop ends them earlier through the stop file."""
    m = measure
    if m.duration_s:
        per_window = m.duration_s / m.stability_windows
        return None, min(per_window * m.stability_max_windows, m.stability_max_s)
    if scenario == "offline":  # all requests at once: one batch, no windows to add
        return m.requests, None
    return math.ceil(m.requests * m.stability_max_windows / m.stability_windows), None


def settled(rates: list[float], counts: list[int], measure: Measure) -> bool:
    """Do the last k windows agree within the tolerance, with room for counting error?

    The live counts (the balancer's) and the verdict's (the clients' records cut at
    the same edges) may differ by a request or so at each edge, about 2/n of a
    window's rate with n requests in it; so the loop stops only when the windows
    agree within the tolerance less that error (at most a quarter of it), and the
    verdict then agrees too.
    """
    k = measure.stability_windows
    if len(rates) < k:
        return False
    # Capped at a quarter of the tolerance, so tiny windows make the loop stricter, not endless.
    counting_error = min(2 / max(1, min(counts[-k:])), measure.stability_tolerance / 4)
    windows = [{"samples_per_s": r} for r in rates]
    return metrics.stability_problem(windows, measure.stability_tolerance - counting_error, k) is None


@dataclass
class Windows:
    """What the live loop measured: its window edges (epoch ns) and how many windows."""

    edges_ns: list[int] = field(default_factory=list)
    count: int = 0

    def cut(self, measure: Measure) -> tuple[int, list[int] | None]:
        """How the verdict cuts the records: (windows, edges) at the live loop's edges,
        else (k equal parts, None) when the loop measured fewer than k."""
        parts = max(measure.stability_windows, self.count)
        return parts, (self.edges_ns if self.count >= measure.stability_windows else None)


def measure_windows(measure: Measure, clients: int, go: float, total: Callable[[], int | None],
                    clients_alive: Callable[[], bool], stop_file: Path) -> Windows:
    """Runs the loop from `go` (epoch s) and then writes `stop_file`.

    A window lasts duration_s / k (count mode: holds requests x clients / k
    requests), and at least MIN_WINDOW_S with MIN_WINDOW_REQUESTS in it, so no
    rate rests on a handful of requests or a few polls. `total()` is the live
    count of requests (HAProxy's), None once it cannot be read.
    """
    m = measure
    k = m.stability_windows
    per_window = (m.requests or 1) * clients / k if not m.duration_s else 0
    min_len = m.duration_s / k if m.duration_s else metrics.MIN_WINDOW_S
    min_count = max(per_window, metrics.MIN_WINDOW_REQUESTS)
    end = go + m.stability_max_s

    start_total = total()
    if start_total is None:
        return Windows()  # the balancer is gone; the summary says so
    time.sleep(max(0.0, go - time.time()))
    edges, counts = [go], [start_total]
    rates: list[float] = []
    window_counts: list[int] = []
    closed = True
    while len(rates) < m.stability_max_windows and closed:
        closed = False
        time.sleep(max(0.0, min(edges[-1] + min_len, end) - time.time()))
        while clients_alive():  # wait for this window to close
            now, n_now = time.time(), total()
            if n_now is None:
                break
            if n_now - counts[-1] >= min_count or now >= end:
                closed = True
                break
            time.sleep(0.02)
        if not closed:
            break  # the clients ended (their own bound) or the balancer went away
        edges.append(now)
        counts.append(n_now)
        rates.append((n_now - counts[-2]) / (now - edges[-2]))
        window_counts.append(n_now - counts[-2])
        if (settled(rates, window_counts, m) and n_now - start_total >= m.min_requests and now - go >= m.min_duration_s) \
                or now >= end:
            break
    write_atomic(stop_file, repr(time.time()))
    return Windows([int(t * 1e9) for t in edges], len(rates))
