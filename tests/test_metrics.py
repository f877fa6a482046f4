"""The single throughput definition, latency percentiles and the validity verdict."""

from __future__ import annotations

import numpy as np
import pytest

from osmi_ee.osmi.metrics import share_problems, summarize, window_s


def records(n_per_client: int, clients: int, *, fail: int = 0, latency_ms: float = 10.0):
    """Back-to-back requests per client, all starting at t=0 (seconds -> ns)."""
    cols = {k: [] for k in ("client", "phase", "start_ns", "latency_ns", "code")}
    for c in range(clients):
        for i in range(n_per_client):
            cols["client"].append(c)
            cols["phase"].append(1)
            cols["start_ns"].append(int(i * latency_ms * 1e6))
            cols["latency_ns"].append(int(latency_ms * 1e6))
            cols["code"].append(14 if (c == 0 and i < fail) else 0)
    # one warm-up record that must not count anywhere
    for k, v in (("client", 0), ("phase", 0), ("start_ns", -10**9), ("latency_ns", 5 * 10**9), ("code", 4)):
        cols[k].append(v)
    return {k: np.array(v, np.int64) for k, v in cols.items()}


def client_summaries(n: int, clients: int, fail: int = 0):
    return [{"client": c, "exit_code": 0, "sent": n, "ok": n - (fail if c == 0 else 0),
             "failed": fail if c == 0 else 0,
             "errors": {"14": {"count": fail, "first": "UNAVAILABLE: x"}} if (fail and c == 0) else {}}
            for c in range(clients)]


def test_throughput_is_successful_samples_over_window_all_clients():
    s = summarize(records(100, 4), batch=16, clients=client_summaries(100, 4),
                  backend_counts={"s0": 200, "s1": 200}, min_backend_share=0.5)
    assert s["valid"] and s["reasons"] == []
    assert s["window_s"] == pytest.approx(1.0)  # 100 x 10 ms, clients in parallel
    assert s["throughput"]["samples_per_s"] == pytest.approx(4 * 100 * 16 / 1.0)
    assert s["throughput"]["requests_per_s"] == pytest.approx(400.0)
    assert s["latency_ms"]["p50"] == pytest.approx(10.0)
    assert s["requests"] == {"sent": 400, "ok": 400, "failed": 0}
    assert s["backends"]["s0"]["share"] == pytest.approx(0.5)


def test_any_failed_request_makes_the_run_invalid_and_speedless():
    s = summarize(records(100, 2, fail=1), batch=1, clients=client_summaries(100, 2, fail=1),
                  backend_counts={"s0": 200}, min_backend_share=0.5)
    assert not s["valid"]
    assert s["throughput"] == {"samples_per_s": None, "requests_per_s": None}
    assert s["requests"] == {"sent": 200, "ok": 199, "failed": 1}
    assert any("UNAVAILABLE" in r for r in s["reasons"])


def test_unaccounted_requests_and_crashed_client_are_reasons():
    clients = client_summaries(100, 2)
    clients[1]["sent"] = 101  # claims more than it recorded
    clients.append({"client": 2, "exit_code": -9, "sent": None})
    s = summarize(records(100, 2), batch=1, clients=clients, backend_counts={}, min_backend_share=0)
    assert not s["valid"]
    assert any("not accounted" in r for r in s["reasons"])
    assert any("client 2 exited with code -9" in r for r in s["reasons"])


def test_starved_backend_makes_the_run_invalid():
    assert share_problems({"s0": 90, "s1": 10}, 0.5)  # 10% < 25%
    assert not share_problems({"s0": 60, "s1": 40}, 0.5)
    assert not share_problems({"s0": 100}, 0.5)  # one server: nothing to balance
    s = summarize(records(50, 2), batch=1, clients=client_summaries(50, 2),
                  backend_counts={"s0": 100, "s1": 0}, min_backend_share=0.5)
    assert not s["valid"] and any("backend s1 got 0.0%" in r for r in s["reasons"])


def test_no_measured_request_is_invalid():
    empty = {k: np.zeros(0, np.int64) for k in ("client", "phase", "start_ns", "latency_ns", "code")}
    s = summarize(empty, batch=1, clients=[], backend_counts={}, min_backend_share=0.5)
    assert not s["valid"] and "no measured request" in s["reasons"]
    assert window_s(np.zeros(0), np.zeros(0)) == 0.0
