"""Small statistics with no dependency beyond the standard library.

Shared by the job (a run's own throughput interval) and the analysis (intervals
over repeats), so both use the same Student t.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

CONFIDENCE = 0.95


def _t_abs_cdf(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with integer `dof` degrees of freedom
    (closed form, Abramowitz & Stegun 26.7.3/26.7.4; no SciPy needed)."""
    theta = math.atan(t / math.sqrt(dof))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    term = total = 1.0
    if dof % 2 == 1:
        for k in range(1, (dof - 3) // 2 + 1):
            term *= (2 * k) / (2 * k + 1) * cos2
            total += term
        tail = math.sin(theta) * math.cos(theta) * total if dof > 1 else 0.0
        return 2.0 / math.pi * (theta + tail)
    for k in range(1, (dof - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * cos2
        total += term
    return sin * total


_T_CACHE: dict[tuple[float, int], float] = {}


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student t critical value: P(|T| <= q) = confidence.

    t_quantile(0.95, 2) = 4.3027, (0.95, 10) = 2.2281; NaN for dof < 1.
    """
    if dof < 1 or not 0.0 < confidence < 1.0:
        return math.nan
    key = (confidence, dof)
    if key in _T_CACHE:
        return _T_CACHE[key]
    if dof > 2000:  # the t distribution is normal to < 1e-3 here; skip the long series
        from statistics import NormalDist

        q = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    else:
        lo, hi = 0.0, 1.0
        while _t_abs_cdf(hi, dof) < confidence:
            lo, hi = hi, hi * 2.0
        for _ in range(100):
            mid = (lo + hi) / 2.0
            if _t_abs_cdf(mid, dof) < confidence:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-12 * max(1.0, hi):
                break
        q = (lo + hi) / 2.0
    _T_CACHE[key] = q
    return q


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sample std, ci_low, ci_high) of the finite values, Student t.

    With one value the std and the interval are NaN (one run says nothing
    about its spread); with none everything is NaN.
    """
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(data)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = sum(data) / n
    if n == 1:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def batch_means_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """(low, high) interval of the mean of `values`, taken as batch means of one run
    (each value one sub-window's rate); None with fewer than two values."""
    mean, _, low, high = mean_ci(values, confidence)
    if math.isnan(low):
        return None
    return low, high


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Do two closed intervals share a point? Overlapping intervals are a tie."""
    return a[0] <= b[1] and b[0] <= a[1]
