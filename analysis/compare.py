"""Two sweeps of the same grid side by side: do their verdicts and intervals agree?

A point is a configuration (every axis but `repeat`). Measured in two sweeps, it
should either be invalid in one (a verdict caught a problem) or give overlapping 95%
intervals in both: the configuration's interval, which is Student's t over its
repeats (independent launches) or, for a single run, that run's own interval. A
point VALID in both sweeps whose intervals do not overlap means an interval was too
narrow to be trusted: that should never happen, and `compare` lists each such point.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
import pandas as pd

from osmi_ee.osmi.stats import intervals_overlap

from .aggregate import aggregate, speed_interval
from .collect import collect
from .dataset import configuration_columns

AGREE, DISAGREE, ONE_VALID, BOTH_INVALID, UNMATCHED = (
    "agree", "DISAGREE", "valid in one only", "invalid in both", "in one sweep only")


@dataclass(frozen=True)
class PointComparison:
    point: str  # the parameters, e.g. "model=small_lstm servers=2 clients=4 batch=16 ..."
    verdict: str
    a_samples_per_s: float | None
    a_ci95: tuple[float, float] | None
    b_samples_per_s: float | None
    b_ci95: tuple[float, float] | None


def _speed(row: pd.Series | None) -> float | None:
    if row is None or pd.isna(row.get("samples_per_s_mean")):
        return None
    return float(row["samples_per_s_mean"])


def _valid(row: pd.Series) -> bool:
    """Every repeat valid, with a speed."""
    return bool(row["all_valid"]) and _speed(row) is not None


def _verdict(a: pd.Series | None, b: pd.Series | None) -> str:
    if a is None or b is None:
        return UNMATCHED
    va, vb = _valid(a), _valid(b)
    if va and vb:
        ia, ib = speed_interval(a), speed_interval(b)
        if ia is None or ib is None:  # no interval: nothing claims they differ
            return AGREE
        return AGREE if intervals_overlap(ia, ib) else DISAGREE
    return ONE_VALID if va or vb else BOTH_INVALID


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> list[PointComparison]:
    """Configurations matched by their parameters (every axis but repeat), from two datasets."""
    agg_a, agg_b = aggregate(a), aggregate(b)
    keys = [c for c in configuration_columns(a) if c in set(configuration_columns(b))]

    def key(row: pd.Series) -> str:
        return " ".join(f"{k}={row[k]}" for k in keys if not (isinstance(row[k], float) and math.isnan(row[k])))

    rows_a = {key(r): r for _, r in agg_a.iterrows()}
    rows_b = {key(r): r for _, r in agg_b.iterrows()}
    out = []
    for point in [*rows_a, *(k for k in rows_b if k not in rows_a)]:
        ra, rb = rows_a.get(point), rows_b.get(point)
        out.append(PointComparison(point, _verdict(ra, rb), _speed(ra) if ra is not None and _valid(ra) else None,
                                   speed_interval(ra), _speed(rb) if rb is not None and _valid(rb) else None,
                                   speed_interval(rb)))
    return out


def compare_sweeps(a: Path | str, b: Path | str) -> list[PointComparison]:
    return compare_frames(collect(a), collect(b))


def counts(points: list[PointComparison]) -> dict[str, int]:
    tally = {v: 0 for v in (AGREE, DISAGREE, ONE_VALID, BOTH_INVALID, UNMATCHED)}
    for p in points:
        tally[p.verdict] += 1
    return {"points": len(points), **tally}


def _fmt(speed: float | None, ci: tuple[float, float] | None) -> str:
    if speed is None:
        return "invalid"
    return f"{speed:,.1f}" + (f" [{ci[0]:,.1f}, {ci[1]:,.1f}]" if ci else "")


def report_text(points: list[PointComparison]) -> str:
    width = max((len(p.point) for p in points), default=5)
    lines = [f"{'point':<{width}}  {'verdict':<17} {'A samples/s [95% CI]':<30} B samples/s [95% CI]"]
    for p in points:
        lines.append(f"{p.point:<{width}}  {p.verdict:<17} {_fmt(p.a_samples_per_s, p.a_ci95):<30} "
                     f"{_fmt(p.b_samples_per_s, p.b_ci95)}")
    tally = counts(points)
    lines.append(" ".join(f"{k.replace(' ', '_')}={v}" for k, v in tally.items()))
    return "\n".join(lines)


def report_json(points: list[PointComparison]) -> str:
    return json.dumps({"counts": counts(points), "points": [asdict(p) for p in points]}, indent=2)


def main_compare(a: str, b: str, as_json: bool = False) -> int:
    """Prints the comparison; exit 1 when any point is VALID in both with disjoint intervals."""
    points = compare_sweeps(a, b)
    print(report_json(points) if as_json else report_text(points))
    return 1 if counts(points)[DISAGREE] else 0
