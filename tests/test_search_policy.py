"""The peak-search policy (ee/search_policy.py) against fake systems: which loads it
tries, where it stops, how many runs it needs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osmi_ee.ee.search_policy import SearchSpace, decide, judge, judge_summary, max_steps


def run_search(space: SearchSpace, passes: Callable[[float], bool]) -> tuple[float | None, list[float]]:
    """Drives the policy like ee/search.py does; returns (peak, loads tried in order)."""
    outcomes: dict[float, bool] = {}
    tried = []
    for _ in range(200):
        decision = decide(space, outcomes)
        if decision.next_load is None:
            return decision.peak, tried
        assert decision.next_load not in outcomes, "a step is never run twice"
        tried.append(decision.next_load)
        outcomes[decision.next_load] = passes(decision.next_load)
    raise AssertionError("the search did not end")


def exhaustive_peak(loads: list[int], passes: Callable[[float], bool]) -> int | None:
    good = [n for n in loads if passes(n)]
    return max(good) if good else None


CLIENTS = SearchSpace(start=1, max=64)


def test_doubling_then_bisection_order():
    peak, tried = run_search(CLIENTS, lambda n: n <= 20)
    assert tried == [1, 2, 4, 8, 16, 32, 24, 20, 22, 21]
    assert peak == 20


def test_all_pass_stops_at_max_after_doubling_only():
    peak, tried = run_search(CLIENTS, lambda n: True)
    assert tried == [1, 2, 4, 8, 16, 32, 64]
    assert peak == 64


def test_max_that_is_not_a_power_of_two_is_tried_itself():
    peak, tried = run_search(SearchSpace(start=1, max=48), lambda n: True)
    assert tried == [1, 2, 4, 8, 16, 32, 48]
    assert peak == 48


def test_first_load_failing_ends_with_no_peak():
    peak, tried = run_search(CLIENTS, lambda n: False)
    assert (peak, tried) == (None, [1])
    assert decide(CLIENTS, {1: False}).failed_at == 1


def test_boundary_right_after_a_doubling_step_needs_no_extra_runs_below_it():
    peak, tried = run_search(CLIENTS, lambda n: n <= 1)
    assert (peak, tried) == (1, [1, 2])


def test_resume_from_recorded_outcomes_asks_for_the_same_next_load():
    first = decide(CLIENTS, {1: True, 2: True, 4: True, 8: False})
    assert (first.next_load, first.phase, first.peak, first.failed_at) == (6, "bisecting", 4, 8)
    # outcomes off the path (say, an older search with another start) change nothing
    assert decide(CLIENTS, {1: True, 2: True, 4: True, 8: False, 40: True}).next_load == 6


@settings(max_examples=300, deadline=None)
@given(boundary=st.integers(min_value=0, max_value=70))
def test_monotone_finds_the_exhaustive_peak_in_at_most_half_the_runs(boundary: int):
    passes = lambda n: n <= boundary  # noqa: E731
    peak, tried = run_search(CLIENTS, passes)
    assert peak == exhaustive_peak(list(range(1, 65)), passes)
    assert len(tried) <= 64 // 2
    assert len(tried) <= max_steps(CLIENTS) == 7 + 5
    assert len(set(tried)) == len(tried)


@settings(max_examples=300, deadline=None)
@given(verdicts=st.lists(st.booleans(), min_size=64, max_size=64))
def test_non_monotone_ends_on_a_boundary_one_step_wide(verdicts: list[bool]):
    passes = lambda n: verdicts[int(n) - 1]  # noqa: E731
    peak, tried = run_search(CLIENTS, passes)
    assert len(tried) <= max_steps(CLIENTS)
    if peak is None:
        assert tried == [1] and not passes(1)
        return
    assert passes(peak) and peak in tried
    # the peak is on a boundary: max itself, or the next load up was tried and failed
    assert peak == 64 or (peak + 1 in tried and not passes(peak + 1))
    assert peak <= exhaustive_peak(list(range(1, 65)), passes)


@settings(max_examples=200, deadline=None)
@given(boundary=st.floats(min_value=0.5, max_value=900.0), resolution=st.sampled_from([0.5, 1.0, 5.0]))
def test_rate_search_ends_within_one_resolution_of_the_boundary(boundary: float, resolution: float):
    space = SearchSpace(start=10.0, max=640.0, integer=False, resolution=resolution)
    peak, tried = run_search(space, lambda r: r <= boundary)
    if boundary < 10.0:
        assert peak is None and tried == [10.0]
    elif boundary >= 640.0:
        assert peak == 640.0
    else:
        assert peak <= boundary < peak + resolution * 1.01
    assert len(tried) <= max_steps(space)


@pytest.mark.parametrize("kwargs", [dict(start=0, max=4), dict(start=8, max=4), dict(start=1.5, max=4),
                                    dict(start=1, max=4, resolution=0)])
def test_bad_spaces_are_refused(kwargs):
    with pytest.raises(ValueError):
        SearchSpace(**kwargs)


def test_judge_needs_valid_stable_and_the_objective():
    assert judge(True, True, 9.0, 20.0, 10.0).passed
    assert judge(True, None, None, None, None).passed  # no objective, stability not judged
    assert not judge(False, True, 1.0, 2.0, None).passed
    assert "unstable" in judge(True, False, 1.0, 2.0, None).reasons[0]
    over = judge(True, True, 11.0, 20.0, 10.0)
    assert not over.passed and "over the objective" in over.reasons[0]


def test_judge_without_p99_uses_the_slowest_request_as_a_bound():
    assert judge(True, True, None, 9.5, 10.0).passed
    unknown = judge(True, True, None, 12.0, 10.0)
    assert not unknown.passed and "cannot show" in unknown.reasons[0]


def test_judge_summary_reads_a_summary_and_keeps_its_reasons():
    summary = {"valid": False, "reasons": ["3 request(s) failed"], "latency_ms": {"p99": None, "max": 5.0},
               "measurement": {"stable": True}}
    verdict = judge_summary(summary, "invalid", None)
    assert not verdict.passed and "3 request(s) failed" in verdict.reasons
    assert not judge_summary(None, "failed", None).passed
    ok = {"valid": True, "reasons": [], "latency_ms": {"p99": 4.0, "max": 5.0}, "measurement": {"stable": True}}
    assert judge_summary(ok, "valid", 5.0).passed
