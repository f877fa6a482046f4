"""The one definition of every reported figure, and the validity verdict.

Throughput = successful samples / measured window, all clients together,
where the window runs from the first measured request's start to the last
measured request's end (wall clock, so clients on other nodes count too).
Requests per second use the same window. Warm-up requests are never in it.
A run is VALID only if every request is accounted for and none failed (and,
with several servers, each got its share); an invalid run gets no speed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MEASURED = 1
PERCENTILES = (50, 90, 99)


def latency_stats_ms(latency_ns: np.ndarray) -> dict[str, float | None]:
    if latency_ns.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    ms = latency_ns / 1e6
    stats = {"mean": float(ms.mean())}
    for p, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES)):
        stats[f"p{p}"] = float(value)
    stats["max"] = float(ms.max())
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


def summarize(records: dict[str, np.ndarray], *, batch: int, clients: list[dict[str, Any]],
              backend_counts: dict[str, int], min_backend_share: float,
              problems: list[str] | None = None) -> dict[str, Any]:
    """Figures and verdict from all clients' records (columns as written by the client).

    `clients` holds each client's own summary (or None if it wrote none) and
    exit code; `problems` are reasons found by the runner (start-up etc.).
    """
    reasons = list(problems or [])
    measured = records["phase"] == MEASURED
    code = records["code"][measured]
    start = records["start_ns"][measured]
    latency = records["latency_ns"][measured]
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
    if failed and not any("request(s) failed" in r for r in reasons):
        reasons.append(f"{failed} request(s) failed")
    if sent == 0:
        reasons.append("no measured request")
    reasons += share_problems(backend_counts, min_backend_share)

    valid = not reasons
    win = window_s(start, latency)
    samples_ok = ok * batch
    speed = valid and win > 0
    return {
        "valid": valid,
        "reasons": reasons,
        "requests": {"sent": sent, "ok": ok, "failed": failed},
        "samples_ok": samples_ok,
        "window_s": win,
        "throughput": {
            "samples_per_s": samples_ok / win if speed else None,
            "requests_per_s": ok / win if speed else None,
        },
        "latency_ms": latency_stats_ms(latency[ok_mask]),
        "backends": backend_shares(backend_counts),
    }
