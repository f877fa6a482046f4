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
    assert s["latency_ms"]["p99"] is None  # 400 requests: too few behind a p99
    assert s["requests"] == {"sent": 400, "ok": 400, "failed": 0}
    low, high = s["throughput"]["samples_per_s_ci95"]
    assert low <= s["throughput"]["samples_per_s"] <= high
    assert s["backends"]["s0"]["share"] == pytest.approx(0.5)


def test_any_failed_request_makes_the_run_invalid_and_speedless():
    s = summarize(records(100, 2, fail=1), batch=1, clients=client_summaries(100, 2, fail=1),
                  backend_counts={"s0": 200}, min_backend_share=0.5)
    assert not s["valid"]
    assert s["throughput"] == {"samples_per_s": None, "samples_per_s_ci95": None, "requests_per_s": None}
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


def test_stability_windows_flag_a_drifting_run():
    from osmi_ee.osmi.metrics import stability_problem, window_figures

    # 300 requests of 10 ms back to back, then 100 of 30 ms: throughput drops by 3x.
    lat = np.array([10e6] * 300 + [30e6] * 100, np.int64)
    start = np.concatenate([[0], np.cumsum(lat)[:-1]]).astype(np.int64)
    ok = np.ones(lat.size, bool)
    windows = window_figures(start, start + lat, ok, lat, batch=1, k=3)
    assert len(windows) == 3
    problem = stability_problem(windows, 0.1)
    assert problem and problem.startswith("unstable")
    steady = window_figures(start[:300], start[:300] + lat[:300], ok[:300], lat[:300], 1, 3)
    assert stability_problem(steady, 0.1) is None
    s = summarize({"client": np.zeros(400, np.int64), "phase": np.ones(400, np.int64), "start_ns": start,
                   "latency_ns": lat, "code": np.zeros(400, np.int64)}, batch=1,
                  clients=[{"client": 0, "exit_code": 0, "sent": 400, "ok": 400, "failed": 0, "errors": {}}],
                  backend_counts={}, min_backend_share=0.5, stability_windows=3)
    assert not s["valid"] and s["measurement"]["stable"] is False


def test_arrival_rate_counts_sends_inside_the_schedule():
    from osmi_ee.osmi.metrics import arrival_figures

    start = (np.arange(100) * 1e7).astype(np.int64)  # 100 requests scheduled over 1 s
    on_time = arrival_figures(start, np.zeros(100, np.int64), 100.0)
    assert on_time["achieved_rate"] == pytest.approx(100.0) and on_time["late"] == 0
    lagging = arrival_figures(start, (np.arange(100) * 5e6).astype(np.int64), 100.0)  # falls behind
    assert lagging["achieved_rate"] < 70 and lagging["late"] > 50


def test_min_duration_rule():
    s = summarize(records(10, 1), batch=1, clients=client_summaries(10, 1), backend_counts={},
                  min_backend_share=0.5, min_duration_s=5.0)
    assert not s["valid"] and any("shorter than the minimum" in r for r in s["reasons"])


def test_quantiles_need_ten_requests_beyond_them():
    from osmi_ee.osmi.metrics import latency_stats_ms, min_samples

    assert (min_samples(50), min_samples(90), min_samples(99)) == (20, 100, 1000)
    few = latency_stats_ms(np.full(999, 5e6))
    assert few["p99"] is None and "not enough samples" in few["missing"]["p99"]
    assert few["p90"] == pytest.approx(5.0) and few["p50"] == pytest.approx(5.0)
    enough = latency_stats_ms(np.full(1000, 5e6))
    assert enough["p99"] == pytest.approx(5.0) and "p99" not in enough["missing"]
    tiny = latency_stats_ms(np.full(19, 5e6))
    assert tiny["p50"] is None and tiny["mean"] is None


def test_a_p99_from_fewer_than_1000_requests_is_null_in_the_summary():
    s = summarize(records(450, 2), batch=1, clients=client_summaries(450, 2),
                  backend_counts={"s0": 900}, min_backend_share=0.5)
    assert s["valid"] and s["latency_ms"]["n"] == 900
    assert s["latency_ms"]["p99"] is None and s["latency_ms"]["p90"] is not None


def test_too_few_measured_requests_make_the_run_invalid():
    s = summarize(records(40, 2), batch=1, clients=client_summaries(40, 2), backend_counts={"s0": 80},
                  min_backend_share=0.5, min_requests=100)
    assert not s["valid"] and s["throughput"]["samples_per_s"] is None
    assert any("80 measured request(s), the minimum is 100" in r for r in s["reasons"])


def test_balancer_count_must_equal_clients_count():
    # The clients sent 400 but only 300 went through this run's balancer: a foreign
    # listener on the same port took the rest.
    s = summarize(records(100, 4), batch=1, clients=client_summaries(100, 4),
                  backend_counts={"s0": 150, "s1": 150}, min_backend_share=0.5)
    assert not s["valid"] and s["throughput"]["samples_per_s"] is None
    assert any("forwarded 300" in r and "sent 400" in r for r in s["reasons"])
    unread = summarize(records(100, 1), batch=1, clients=client_summaries(100, 1), backend_counts=None,
                       min_backend_share=0.5)
    assert not unread["valid"] and any("could not be read" in r for r in unread["reasons"])


def test_each_shard_must_have_served_what_the_balancer_sent_it():
    s = summarize(records(100, 2), batch=1, clients=client_summaries(100, 2),
                  backend_counts={"s0": 100, "s1": 100}, server_counts={"s0": 100, "s1": 97},
                  min_backend_share=0.5)
    assert not s["valid"] and any("shard s1 served 97" in r for r in s["reasons"])
    unknown = summarize(records(100, 2), batch=1, clients=client_summaries(100, 2),
                        backend_counts={"s0": 100, "s1": 100}, server_counts={"s0": 100, "s1": None},
                        min_backend_share=0.5)
    assert unknown["valid"]  # a shard that cannot count is not held against the run


def test_an_unstable_run_carries_no_speed():
    lat = np.array([10e6] * 300 + [30e6] * 100, np.int64)
    start = np.concatenate([[0], np.cumsum(lat)[:-1]]).astype(np.int64)
    s = summarize({"client": np.zeros(400, np.int64), "phase": np.ones(400, np.int64), "start_ns": start,
                   "latency_ns": lat, "code": np.zeros(400, np.int64)}, batch=1,
                  clients=[{"client": 0, "exit_code": 0, "sent": 400, "ok": 400, "failed": 0, "errors": {}}],
                  backend_counts={"s0": 400}, min_backend_share=0.5, stability_windows=3)
    assert not s["valid"]
    assert s["throughput"] == {"samples_per_s": None, "samples_per_s_ci95": None, "requests_per_s": None}
    assert s["measurement"]["stable"] is False and s["measurement"]["spread"] > 0.1
    assert any(r.startswith("unstable") for r in s["reasons"])


def test_throughput_interval_reflects_the_spread_of_sub_windows():
    from osmi_ee.osmi.metrics import throughput_interval

    rng = np.random.default_rng(0)
    steady = np.full(2000, 1e6, np.int64)
    noisy = (rng.uniform(0.2, 1.8, 2000) * 1e6).astype(np.int64)
    widths = []
    for lat in (steady, noisy):
        start = np.concatenate([[0], np.cumsum(lat)[:-1]]).astype(np.int64)
        low, high = throughput_interval(start, start + lat, np.ones(lat.size, bool), batch=4)
        mean = 4 * lat.size / ((start[-1] + lat[-1]) / 1e9)
        assert low <= mean <= high
        widths.append(high - low)
    assert widths[0] < widths[1]
