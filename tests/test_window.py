"""The live window loop's stopping rule (osmi.window.settled)."""

from __future__ import annotations

from osmi_ee.ee.config import Measure
from osmi_ee.osmi import metrics
from osmi_ee.osmi.window import settled

DEMO = Measure(duration_s=6, requests=None, stability_tolerance=0.15)


def test_windows_just_inside_the_tolerance_with_few_requests_are_not_yet_settled():
    # A demo run (1 client, ~100 requests per 2 s window) stopped on live counts that agreed within
    # 15%, and the verdict, cut from the clients' records, found 16%: one request more or less at
    # a window's edge moves its rate by ~1%. The loop must keep measuring until the agreement
    # holds with that counting error to spare.
    rates, counts = [751.1, 808.0, 862.0], [94, 101, 108]
    assert metrics.stability_problem([{"samples_per_s": r} for r in rates], 0.15) is None  # inside 15% ...
    assert not settled(rates, counts, DEMO)  # ... but not by the counting error of ~100 requests


def test_windows_with_many_requests_settle_at_the_tolerance():
    rates = [751.1, 808.0, 862.0]
    assert settled(rates, [100_000] * 3, DEMO)
    assert not settled([700.0, 808.0, 862.0], [100_000] * 3, DEMO)  # 23%: outside whatever the counts


def test_fewer_windows_than_k_never_settle():
    assert not settled([800.0, 800.0], [10_000, 10_000], DEMO)
