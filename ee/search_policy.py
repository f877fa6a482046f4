"""Which load to try next when searching for the peak: pure, no I/O.

The search steps the load up by doubling from `start` (capped at `max`) while
each step passes, then bisects between the last load that passed and the first
that failed, until the two are one step apart (1 client, or `resolution`
requests/s). The peak is the last load that passed on that path.

The decision is a function of the outcomes recorded so far only (load -> passed),
so a search that stopped half way resumes exactly where it was: the same
outcomes always ask for the same next load.

A step passes when its run is VALID, stable and meets the objective
(`judge`). With a non-monotone system (a lower load fails where a higher one
passed) bisection still ends on a boundary: a load that passed next to one
that failed, one step apart; it need not be the highest such boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

REAL_DIGITS = 6  # rate steps are rounded to this many significant digits: stable ids, readable records


@dataclass(frozen=True)
class SearchSpace:
    """Loads the search may try: from `start` up to `max`, `resolution` apart at the end."""

    start: float
    max: float
    integer: bool = True  # clients: whole numbers; rate: reals
    resolution: float = 1.0  # stop bisecting once the bracket is this narrow

    def __post_init__(self) -> None:
        if not (0 < self.start <= self.max) or self.resolution <= 0:
            raise ValueError(f"need 0 < start <= max and resolution > 0, got {self}")
        if self.integer and (self.start != int(self.start) or self.max != int(self.max)):
            raise ValueError(f"an integer search needs integer start and max, got {self}")

    def step(self) -> float:
        return max(1.0, self.resolution) if self.integer else self.resolution

    def norm(self, load: float) -> float:
        if self.integer:
            return int(load)
        return float(f"{load:.{REAL_DIGITS}g}")

    def doubling(self) -> list[float]:
        """start, 2·start, 4·start, ... up to max (max itself is the last step)."""
        loads, load = [], self.norm(self.start)
        while load < self.max:
            loads.append(load)
            load = self.norm(min(load * 2, self.max))
        loads.append(self.norm(self.max))
        return loads


@dataclass(frozen=True)
class Decision:
    next_load: float | None  # None: the search is over
    peak: float | None  # the highest load that passed on the search path so far (None: none passed)
    phase: str  # "doubling", "bisecting" or "done"
    failed_at: float | None = None  # the lowest load above the peak that failed (None: max passed, or none yet)


def decide(space: SearchSpace, passed: Mapping[float, bool]) -> Decision:
    """The next load to try given `passed` (load -> did that step pass), or done."""
    lo: float | None = None  # last load that passed
    hi: float | None = None  # first load that failed
    for load in space.doubling():
        if load not in passed:
            return Decision(load, lo, "doubling")
        if not passed[load]:
            hi = load
            break
        lo = load
    if hi is None:  # every doubling step passed, max included
        return Decision(None, lo, "done")
    if lo is None:  # the very first load failed: nothing below it to bisect to
        return Decision(None, None, "done", failed_at=hi)
    while hi - lo > space.step() * (1 + 1e-9):
        mid = space.norm((lo + hi) / 2 if not space.integer else (lo + hi) // 2)
        if mid <= lo or mid >= hi:  # the bracket cannot narrow further at this precision
            break
        if mid not in passed:
            return Decision(mid, lo, "bisecting", failed_at=hi)
        if passed[mid]:
            lo = mid
        else:
            hi = mid
    return Decision(None, lo, "done", failed_at=hi)


def max_steps(space: SearchSpace) -> int:
    """Most steps a search can take: every doubling step, then a full bisection of the widest bracket."""
    loads = space.doubling()
    widest = max((b - a for a, b in zip(loads, loads[1:])), default=0.0)
    bisections = math.ceil(math.log2(widest / space.step())) if widest > space.step() else 0
    return len(loads) + bisections


# ------------------------------------------------------------------ one step's verdict


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]  # why it did not pass (empty when it passed)


def judge(valid: bool, stable: bool | None, p99_ms: float | None, max_ms: float | None,
          objective_p99_ms: float | None, state: str = "valid") -> Verdict:
    """Does a step pass: VALID, not unstable, and p99 within the objective?

    Without enough requests for a p99 (osmi/metrics: 1,000), the slowest request
    stands in as an upper bound: if even it meets the objective, p99 does too; if
    not, the step cannot be shown to meet it and does not pass."""
    reasons: list[str] = []
    if not valid:
        reasons.append(f"not VALID ({state})")
    if stable is False:
        reasons.append("unstable: its windows never agreed")
    if objective_p99_ms is not None and valid:
        if p99_ms is not None:
            if p99_ms > objective_p99_ms:
                reasons.append(f"p99 {p99_ms:.2f} ms is over the objective {objective_p99_ms:g} ms")
        elif max_ms is None or max_ms > objective_p99_ms:
            reasons.append(f"p99 not measured (too few requests) and the slowest request "
                           f"({'–' if max_ms is None else f'{max_ms:.2f} ms'}) is over the objective "
                           f"{objective_p99_ms:g} ms: cannot show it meets it")
    return Verdict(not reasons, tuple(reasons))


def judge_summary(summary: dict[str, Any] | None, state: str, objective_p99_ms: float | None) -> Verdict:
    """`judge` on a run's summary.json (None: the run left no readable summary)."""
    if summary is None:
        return Verdict(False, (f"no readable summary ({state})",))
    latency = summary.get("latency_ms") or {}
    verdict = judge(valid=state == "valid" and summary.get("valid") is True,
                    stable=(summary.get("measurement") or {}).get("stable"),
                    p99_ms=latency.get("p99"), max_ms=latency.get("max"),
                    objective_p99_ms=objective_p99_ms, state=state)
    own = tuple(str(r) for r in summary.get("reasons") or [])
    return Verdict(verdict.passed, verdict.reasons + own)
