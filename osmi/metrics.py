"""The one definition of every reported figure, and the validity verdict.

Throughput = successful samples / measured window, all clients together,
where the window runs from the first measured request's start to the last
measured request's end (wall clock, so clients on other nodes count too).
Requests per second use the same window. Warm-up requests are never in it.

A run is VALID only if every rule holds (README, "Validity rules"): every
request accounted for at both ends (clients, balancer, and each shard where
it can count), none failed, enough measured requests over a long enough
window, stable windows, and, with several servers, each backend got its
share. An invalid run gets no speed. No figure is reported without enough
samples behind it: a quantile q needs n * (1 - q) >= MIN_TAIL requests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from osmi_ee.osmi.schema import MEASURED
from osmi_ee.osmi.stats import batch_means_ci

PERCENTILES = (50, 90, 99)
MIN_TAIL = 10  # requests that must lie beyond a reported quantile
CI_BATCHES = 10  # sub-windows (batch means) behind one run's throughput interval
MIN_WINDOW_REQUESTS = 20  # a measurement window holds at least this many (rates to ~5%)
MIN_WINDOW_S = 1.0  # ... and lasts at least this long (the live loop polls every 20 ms)
NOT_ENOUGH = "not enough samples"
# A client process is one Python thread issuing and checking requests (grpcio's C
# threads add a little): past 0.9 of one core over the window it is the bottleneck
# and the figure measures the harness, not the server. Measured on a busy 2-core box:
# 0.08 for the demo's busiest point (2 shards, 4 streams in one process, batch 16),
# 0.09-0.12 for 16 streams at batch 1 against one shard (make bench, cpu part).
CLIENT_SATURATION_SHARE = 0.9


def min_samples(percentile: float) -> int:
    """Requests needed to report a percentile: p50 20, p90 100, p99 1,000."""
    return math.ceil(MIN_TAIL / (1 - percentile / 100) - 1e-9)


def latency_stats_ms(latency_ns: np.ndarray) -> dict[str, Any]:
    """Mean, p50/p90/p99 and max in ms; a figure without enough samples is None,
    and `missing` says which and why."""
    n = int(latency_ns.size)
    ms = latency_ns / 1e6
    stats: dict[str, Any] = {"n": n, "mean": float(ms.mean()) if n >= min_samples(50) else None}
    missing = [] if stats["mean"] is not None else ["mean"]
    for p in PERCENTILES:
        enough = n >= min_samples(p)
        stats[f"p{p}"] = float(np.percentile(ms, p)) if enough else None
        if not enough:
            missing.append(f"p{p}")
    stats["max"] = float(ms.max()) if n else None
    stats["missing"] = {name: f"{NOT_ENOUGH} ({n} < {min_samples(50 if name == 'mean' else int(name[1:]))})"
                        for name in missing}
    return stats


def window_s(start_ns: np.ndarray, latency_ns: np.ndarray) -> float:
    """From the first start to the last end of the given requests, in seconds."""
    if start_ns.size == 0:
        return 0.0
    return float((start_ns + latency_ns).max() - start_ns.min()) / 1e9


def backend_shares(counts: dict[str, int]) -> dict[str, dict[str, float]]:
    total = sum(counts.values())
    return {name: {"requests": n, "share": (n / total) if total else 0.0} for name, n in counts.items()}


def share_problems(counts: dict[str, int], min_share_of_fair: float) -> list[str]:
    """Reasons for backends that got less than `min_share_of_fair` x 1/N of the calls."""
    total = sum(counts.values())
    if len(counts) < 2 or min_share_of_fair <= 0:
        return []
    if total == 0:
        return ["the balancer forwarded no measured request"]
    floor = min_share_of_fair / len(counts)
    return [f"backend {name} got {n / total:.1%} of the requests; the minimum is {floor:.1%} "
            f"({min_share_of_fair:g} x its fair share)"
            for name, n in sorted(counts.items()) if n / total < floor]


def window_figures(start_ns: np.ndarray, end_ns: np.ndarray, ok: np.ndarray, latency_ns: np.ndarray,
                   batch: int, k: int, edges_ns: list[int] | None = None) -> list[dict[str, float | None]]:
    """The measured window cut into parts: samples/s and latency of each.

    The parts are the runner's own measurement windows when `edges_ns` (wall
    clock, first = the window's opening) is given, else k equal parts from the
    first start to the last end. A request belongs to the part in which it
    ended (that is when its samples were delivered); with the runner's edges,
    requests still in flight at the last edge (ended after it) are in no part.
    """
    if start_ns.size == 0 or k < 1:
        return []
    if edges_ns is not None and len(edges_ns) >= 2:
        edges = np.asarray(edges_ns, dtype=np.float64)
        inside = end_ns <= edges[-1]
    else:
        edges = np.linspace(start_ns.min(), end_ns.max(), k + 1)
        inside = np.ones(end_ns.size, bool)
    parts = len(edges) - 1
    part = np.clip(np.searchsorted(edges, end_ns, side="right") - 1, 0, parts - 1)
    windows = []
    for j in range(parts):
        length_s = (edges[j + 1] - edges[j]) / 1e9
        mask = (part == j) & ok & inside
        lat = latency_ns[mask] / 1e6
        windows.append({"samples_per_s": float(mask.sum() * batch / length_s) if length_s > 0 else None,
                        "requests": int(mask.sum()),
                        "p50_ms": float(np.percentile(lat, 50)) if lat.size >= min_samples(50) else None,
                        "p99_ms": float(np.percentile(lat, 99)) if lat.size >= min_samples(99) else None})
    return windows


def spread(rates: list[float]) -> float:
    """max / min - 1 of the rates (inf when one is zero): how far windows disagree."""
    low, high = min(rates), max(rates)
    return (high / low - 1) if low > 0 else math.inf


def stability_problem(windows: list[dict[str, float | None]], tolerance: float,
                      last: int | None = None) -> str | None:
    """Do the last `last` windows (default: all) agree within `tolerance`?
    The one stability rule: the runner's live loop and the verdict both use it."""
    rates = [w["samples_per_s"] or 0.0 for w in windows][-(last or len(windows)):]
    if len(rates) < 2:
        return None
    if spread(rates) <= tolerance:
        return None
    return (f"unstable: throughput of the last {len(rates)} measurement windows varies by "
            f"{spread(rates):.0%} (> {tolerance:.0%}): {', '.join(f'{r:.1f}' for r in rates)} samples/s")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def saturation_problems(client: dict[str, Any], limit: float) -> list[str]:
    """The load generator must not be the bottleneck: a client process that used more
    than `limit` of a core over the window (its summary's cpu_share) invalidates the run."""
    share = client.get("cpu_share")
    if share is None or share <= limit:
        return []
    return [f"load generator saturated: client process {client['client']} used {share:.0%} of a core over "
            f"the window (limit {limit:.0%}); the figure would measure the harness: spread the streams over "
            "more processes or nodes"]


def accounting_problems(sent: int, backend_counts: dict[str, int] | None,
                        server_counts: dict[str, int | None] | None, balancer: str = "haproxy") -> list[str]:
    """Every request seen at both ends: the balancer forwarded exactly what the clients
    sent in the window, and each shard served exactly what the balancer gave it. With
    `balancer: none`, backend_counts are the clients' own per-shard counts, so each
    shard's count is held against what the clients sent it."""
    if backend_counts is None:
        return ["the balancer's request counts could not be read, so the requests are not accounted for"]
    problems = []
    forwarded = sum(backend_counts.values())
    sender = "the clients sent it" if balancer == "none" else "the balancer sent it"
    if forwarded != sent and balancer == "none":
        problems.append(f"the clients' per-shard counts add up to {forwarded} request(s) but their records "
                        f"hold {sent}")
    elif forwarded != sent:
        problems.append(f"the balancer forwarded {forwarded} request(s) in the window but the clients "
                        f"sent {sent}: traffic went elsewhere (another listener on the port?) or was retried")
    for name, served in sorted((server_counts or {}).items()):
        if served is not None and served != backend_counts.get(name, 0):
            problems.append(f"shard {name} served {served} request(s) but {sender} "
                            f"{backend_counts.get(name, 0)}")
    return problems


def throughput_interval(start_ns: np.ndarray, end_ns: np.ndarray, ok: np.ndarray,
                        batch: int) -> tuple[float, float] | None:
    """95% interval of the run's samples/s from CI_BATCHES equal sub-windows (batch means)."""
    if int(ok.sum()) < CI_BATCHES * 2:
        return None
    rates = [w["samples_per_s"] for w in window_figures(start_ns, end_ns, ok, end_ns - start_ns,
                                                         batch, CI_BATCHES)]
    return batch_means_ci([r for r in rates if r is not None])


def arrival_figures(start_ns: np.ndarray, delay_ns: np.ndarray, target_rate: float) -> dict[str, Any]:
    """Open loop: did the load generator send on schedule?

    The schedule for n requests at rate r spans n / r seconds; the achieved rate
    counts the requests actually sent inside that span.
    """
    n = int(start_ns.size)
    if n == 0:
        return {"target_rate": target_rate, "achieved_rate": None, "late": 0, "send_delay_p99_ms": None}
    span_ns = n / target_rate * 1e9
    sent_at = start_ns + delay_ns - start_ns.min()
    return {"target_rate": target_rate,
            "achieved_rate": float((sent_at <= span_ns).sum() / (span_ns / 1e9)),
            "late": int((delay_ns > 1_000_000).sum()),  # sent more than 1 ms behind schedule
            "send_delay_p99_ms": float(np.percentile(delay_ns, 99) / 1e6)}


def summarize(records: dict[str, np.ndarray], *, batch: int, clients: list[dict[str, Any]],
              backend_counts: dict[str, int] | None, min_backend_share: float,
              server_counts: dict[str, int | None] | None = None,
              problems: list[str] | None = None, stability_windows: int = 1,
              stability_tolerance: float = 0.1, min_duration_s: float = 0.0, min_requests: int = 0,
              target_rate: float | None = None, mode: str = "count",
              stability_last: int | None = None, window_edges_ns: list[int] | None = None,
              saturation_share: float = CLIENT_SATURATION_SHARE, balancer: str = "haproxy") -> dict[str, Any]:
    """Figures and verdict from all clients' records (columns as written by the client).

    `clients` holds each client's own summary (or None if it wrote none) and
    exit code; `backend_counts` the balancer's per-backend count over the window
    (None: not read); `server_counts` each shard's own count where it has one;
    `problems` are reasons found by the runner (start-up etc.).
    """
    reasons = list(problems or [])
    measured = records["phase"] == MEASURED
    code = records["code"][measured]
    start = records["start_ns"][measured]
    latency = records["latency_ns"][measured]
    delay = records["delay_ns"][measured] if "delay_ns" in records else np.zeros_like(start)
    ok_mask = code == 0
    sent, ok = int(code.size), int(ok_mask.sum())
    failed = sent - ok

    for c in clients:
        if c.get("exit_code") != 0:
            reasons.append(f"client {c['client']} exited with code {c.get('exit_code')}")
        if c.get("sent") is None:
            reasons.append(f"client {c['client']} wrote no summary")
            continue
        own = int(((records["client"] == c["client"]) & measured).sum())
        if own != c["sent"] or c["sent"] != c["ok"] + c["failed"]:
            reasons.append(f"client {c['client']}: requests not accounted for "
                           f"(records {own}, sent {c['sent']}, ok {c['ok']}, failed {c['failed']})")
        for error_code, err in sorted(c.get("errors", {}).items()):
            reasons.append(f"client {c['client']}: {err['count']} request(s) failed, first: {err['first']}")
        reasons += saturation_problems(c, saturation_share)
    if failed and not any("request(s) failed" in r for r in reasons):
        reasons.append(f"{failed} request(s) failed")
    if sent == 0:
        reasons.append("no measured request")
    elif sent < min_requests:
        reasons.append(f"{NOT_ENOUGH}: {sent} measured request(s), the minimum is {min_requests} "
                       "(measure.min_requests)")
    if sent:
        reasons += accounting_problems(sent, backend_counts, server_counts, balancer)
    reasons += share_problems(backend_counts or {}, min_backend_share)
    win = window_s(start, latency)
    if sent and win < min_duration_s:
        reasons.append(f"measured window {win:.2f} s is shorter than the minimum {min_duration_s:g} s")
    windows = window_figures(start, start + latency, ok_mask, latency, batch, stability_windows,
                             window_edges_ns)
    checked = len(windows) > 1 and stability_windows > 1 and sent > 0
    unstable = stability_problem(windows, stability_tolerance, stability_last) if checked else None
    if unstable:
        reasons.append(unstable)
    last_rates = [w["samples_per_s"] or 0.0 for w in windows][-(stability_last or len(windows)):]

    valid = not reasons
    samples_ok = ok * batch
    speed = valid and win > 0
    interval = throughput_interval(start, start + latency, ok_mask, batch) if speed else None
    return {
        "valid": valid,
        "reasons": reasons,
        "requests": {"sent": sent, "ok": ok, "failed": failed},
        "samples_ok": samples_ok,
        "window_s": win,
        "throughput": {
            "samples_per_s": samples_ok / win if speed else None,
            "samples_per_s_ci95": list(interval) if interval else None,
            "requests_per_s": ok / win if speed else None,
        },
        "latency_ms": latency_stats_ms(latency[ok_mask]),
        "backends": backend_shares(backend_counts or {}),
        "accounting": {"clients_sent": sent, "balancer": balancer,
                       "balancer_forwarded": sum(backend_counts.values()) if backend_counts is not None else None,
                       "balancer_per_backend": backend_counts,
                       "server_served": server_counts},
        "measurement": {"mode": mode, "windows": windows if checked else [],
                        "stable": (unstable is None) if checked else None,
                        "spread": _finite(spread(last_rates)) if checked and len(last_rates) > 1 else None,
                        "tolerance": stability_tolerance, "min_requests": min_requests},
        **({"arrival": arrival_figures(start, delay, target_rate)} if target_rate else {}),
    }
