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


def window_figures(start_ns: np.ndarray, end_ns: np.ndarray, ok: np.ndarray, latency_ns: np.ndarray,
                   batch: int, k: int) -> list[dict[str, float | None]]:
    """The measured window cut into k equal parts: samples/s and latency of each.

    A request belongs to the part in which it ended (that is when its samples
    were delivered).
    """
    if start_ns.size == 0 or k < 1:
        return []
    t0, t1 = start_ns.min(), end_ns.max()
    edges = np.linspace(t0, t1, k + 1)
    part = np.clip(np.searchsorted(edges, end_ns, side="right") - 1, 0, k - 1)
    length_s = (t1 - t0) / 1e9 / k
    windows = []
    for j in range(k):
        mask = (part == j) & ok
        lat = latency_ns[mask] / 1e6
        windows.append({"samples_per_s": float(mask.sum() * batch / length_s) if length_s > 0 else None,
                        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None})
    return windows


def stability_problem(windows: list[dict[str, float | None]], tolerance: float,
                      last: int | None = None) -> str | None:
    """Do the last `last` windows (default: all) agree within `tolerance`?"""
    rates = [w["samples_per_s"] or 0.0 for w in windows][-(last or len(windows)):]
    if len(rates) < 2:
        return None
    low, high = min(rates), max(rates)
    spread = (high / low - 1) if low > 0 else float("inf")
    if spread <= tolerance:
        return None
    return (f"unstable: throughput of the {len(rates)} measurement windows varies by "
            f"{spread:.0%} (> {tolerance:.0%}): {', '.join(f'{r:.1f}' for r in rates)} samples/s")


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
              backend_counts: dict[str, int], min_backend_share: float,
              problems: list[str] | None = None, stability_windows: int = 1,
              stability_tolerance: float = 0.1, min_duration_s: float = 0.0,
              target_rate: float | None = None, mode: str = "count",
              stability_last: int | None = None) -> dict[str, Any]:
    """Figures and verdict from all clients' records (columns as written by the client).

    `clients` holds each client's own summary (or None if it wrote none) and
    exit code; `problems` are reasons found by the runner (start-up etc.).
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
    if failed and not any("request(s) failed" in r for r in reasons):
        reasons.append(f"{failed} request(s) failed")
    if sent == 0:
        reasons.append("no measured request")
    reasons += share_problems(backend_counts, min_backend_share)
    win = window_s(start, latency)
    if sent and win < min_duration_s:
        reasons.append(f"measured window {win:.2f} s is shorter than the minimum {min_duration_s:g} s")
    windows = window_figures(start, start + latency, ok_mask, latency, batch, stability_windows)
    unstable = stability_problem(windows, stability_tolerance, stability_last) if stability_windows > 1 else None
    if unstable:
        reasons.append(unstable)

    valid = not reasons
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
        "measurement": {"mode": mode, "windows": windows if stability_windows > 1 else [],
                        "stable": (unstable is None) if stability_windows > 1 and sent else None,
                        "tolerance": stability_tolerance},
        **({"arrival": arrival_figures(start, delay, target_rate)} if target_rate else {}),
    }
