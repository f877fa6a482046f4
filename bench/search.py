"""Bench part `search`: does `osmi-ee search` find the peak an exhaustive sweep finds, in fewer runs?

1. The exhaustive sweep: one configuration (small_lstm, batch 1, one osmi-model-server) at
   every load of a ladder, run with `osmi-ee generate` + `run` as a user would. The ladder
   is the doubling one, 1, 2, 4, ..., 64 (7 runs), not every count 1..64: 64 real runs on
   2 cores take tens of minutes. So "the exhaustive peak" is the highest ladder load that
   passes, and the search's peak agrees "within one step" when it lies between that load
   and the next ladder load (exclusive) - where a dense sweep's peak must lie too, if
   the system is monotone.
2. The objective: p99 (or, below 1,000 requests, the slowest request: search_policy.judge)
   halfway (geometric mean) between the ladder's middle loads, so the peak is inside the
   range instead of at its end. Set from the exhaustive runs' own latencies.
3. The search, in a sweep of its own (nothing reused), under that objective.

4. The dense check: every count between the ladder's peak and the next ladder load, run as
   a sweep of its own. If the system is monotone, the peak of a dense 1..64 sweep lies
   there, so ladder + bracket give the dense sweep's answer for a handful of runs instead
   of 64; the dense peak is the highest count that passed, and the search agrees when its
   peak is within one step (1 client, its resolution) of it.

Reported: the peaks, the search's runs vs the ladder's runs and vs the 64 runs of a
dense 1..64 sweep (the target: at most half of those).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

SEARCH_MAX = 64
AXES = {"model": ["small_lstm"], "servers": [1], "batch": [1]}


def _grid(models_dir: Path, name: str, duration_s: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "experiment": dict(AXES), **extra,
            # many client processes on 2 cores: 2 s windows move by 10%+ from scheduling alone
            "measure": {"warmup_requests": 3, "duration_s": duration_s, "stability_max_s": 4 * duration_s,
                        "stability_tolerance": 0.3, "min_requests": 50, "timeout_s": 30},
            "serve": {"server": "osmi", "models_dir": str(models_dir), "intra_op_threads": 1,
                      "startup_timeout_s": 300}}


def _effective_ms(summary: dict[str, Any]) -> float | None:
    """What the objective is checked against: p99, else the slowest request (an upper bound)."""
    latency = summary.get("latency_ms") or {}
    return latency.get("p99") if latency.get("p99") is not None else latency.get("max")


def highest_passing(passes: dict[int, bool]) -> int | None:
    """The dense sweep's peak: the highest load that passed (None: none did)."""
    return max((n for n, ok in passes.items() if ok), default=None)


def agrees(peak: int | None, dense_peak: int | None, step: int = 1) -> bool:
    """The search's peak within one step (its resolution) of the dense sweep's; both None agree."""
    if peak is None or dense_peak is None:
        return peak == dense_peak
    return abs(peak - dense_peak) <= step


def _sweep(grid: Path, out: Path) -> dict[int, tuple[str, dict[str, Any] | None]]:
    """Generate and run a grid as a user would; clients -> (state, summary) of each run."""
    from osmi_ee.ee import cli
    from osmi_ee.ee.outcome import recorded_state
    from osmi_ee.ee.paths import SweepPaths

    shutil.rmtree(out, ignore_errors=True)
    if cli.main(["generate", "--grid", str(grid), "--out", str(out)]) != 0:
        raise RuntimeError(f"generate failed for {grid}")
    cli.main(["run", "--grid", str(grid), "--out", str(out)])
    sweep = SweepPaths(out)
    params = json.loads(sweep.sweep.read_text())["params"]
    by_load: dict[int, tuple[str, dict[str, Any] | None]] = {}
    for experiment_id in sweep.experiment_ids():
        exp = sweep.experiment(experiment_id)
        state, _ = recorded_state(exp, held=False)
        by_load[params[experiment_id]["clients"]] = (state or "failed", exp.read_summary())
    return by_load


def bench_search(models_dir: Path, work: Path, *, max_load: int = SEARCH_MAX, duration_s: float = 3.0,
                 say=print) -> dict[str, Any]:
    from osmi_ee.ee import cli
    from osmi_ee.ee.paths import SweepPaths
    from osmi_ee.ee.search_policy import SearchSpace, judge_summary

    work.mkdir(parents=True, exist_ok=True)
    ladder = SearchSpace(start=1, max=max_load).doubling()

    # 1. the exhaustive ladder
    exhaustive_dir = work / "search-exhaustive"
    path = work / "search-exhaustive.yaml"
    path.write_text(yaml.safe_dump(_grid(models_dir, "bench-search-exhaustive", duration_s,
                                         experiment={**AXES, "clients": ladder}), sort_keys=False))
    started = time.perf_counter()
    by_load = _sweep(path, exhaustive_dir)
    exhaustive_s = time.perf_counter() - started

    # 2. the objective, between the middle ladder loads' latencies
    middle = len(ladder) // 2
    lower, upper = (_effective_ms(by_load[n][1] or {}) for n in ladder[middle - 1:middle + 1])
    objective = round(math.sqrt(lower * upper), 3) if lower and upper else None
    passes = {n: judge_summary(summary, state, objective).passed for n, (state, summary) in by_load.items()}
    exhaustive_peak = highest_passing(passes)  # passes: the ladder's loads

    # 3. the search, under that objective, from scratch
    search_dir = work / "search-search"
    shutil.rmtree(search_dir, ignore_errors=True)
    path = work / "search-search.yaml"
    path.write_text(yaml.safe_dump(_grid(models_dir, "bench-search", duration_s,
                                         search={"axis": "clients", "start": 1, "max": max_load},
                                         objective={"p99_ms": objective}), sort_keys=False))
    started = time.perf_counter()
    rc = cli.main(["search", "--grid", str(path), "--out", str(search_dir)])
    search_s = time.perf_counter() - started
    record = json.loads(SweepPaths(search_dir).search_record.read_text())
    (entry,) = record["configurations"]
    peak = entry["peak"]
    after = next((n for n in ladder if exhaustive_peak is not None and n > exhaustive_peak), None)
    within_one_step = (peak == exhaustive_peak if exhaustive_peak is None or after is None
                       else peak is not None and exhaustive_peak <= peak < after)
    runs = len(entry["steps"])
    say(f"search: peak clients={peak} in {runs} runs ({search_s:.0f} s); exhaustive ladder {ladder}: "
        f"peak {exhaustive_peak} in {len(ladder)} runs ({exhaustive_s:.0f} s); objective p99 <= {objective} ms")

    # 4. the dense check: every count inside the ladder's bracket
    bracket = list(range(exhaustive_peak + 1, after)) if exhaustive_peak is not None and after else []
    dense: dict[int, tuple[str, dict[str, Any] | None]] = {}
    if bracket:
        path = work / "search-dense.yaml"
        path.write_text(yaml.safe_dump(_grid(models_dir, "bench-search-dense", duration_s,
                                             experiment={**AXES, "clients": bracket}), sort_keys=False))
        dense = _sweep(path, work / "search-dense")
    dense_passes = {**passes, **{n: judge_summary(summary, state, objective).passed
                                 for n, (state, summary) in dense.items()}}
    dense_peak = highest_passing(dense_passes)
    dense_within_one_step = agrees(peak, dense_peak)
    say(f"dense check: counts {bracket or 'none'} between the ladder's peak and the next ladder load; "
        f"dense peak {dense_peak} (search {peak}: {'within' if dense_within_one_step else 'NOT within'} one step)")
    return {"search_peak": peak, "search_exhaustive_peak": exhaustive_peak,
            # the target: the dense sweep's peak (ladder + every count in its bracket), within one step
            "search_within_one_step": dense_within_one_step, "search_within_ladder_step": within_one_step,
            "search_dense_peak": dense_peak, "search_dense_bracket": bracket,
            "search_dense": [{"load": n, "state": dense[n][0], "passed": dense_passes[n],
                              "effective_latency_ms": _effective_ms(dense[n][1] or {})} for n in bracket],
            "search_runs": runs, "search_exhaustive_runs": len(ladder), "search_exhaustive_loads": ladder,
            "search_dense_runs": max_load, "search_objective_p99_ms": objective, "search_exit_code": rc,
            "search_s": search_s, "search_exhaustive_s": exhaustive_s,
            "search_steps": [{k: s[k] for k in ("load", "state", "passed", "samples_per_s", "latency_p99_ms",
                                                "latency_max_ms", "reasons")} for s in entry["steps"]],
            "search_exhaustive": [{"load": n, "state": by_load[n][0], "passed": passes[n],
                                   "effective_latency_ms": _effective_ms(by_load[n][1] or {})} for n in ladder]}
