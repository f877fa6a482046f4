"""The configuration recommender: per model, the fastest (and cheapest)
configuration meeting a p99 objective, with the configurations it cannot be
told apart from listed as ties.

Input: the per-configuration table of `aggregate.aggregate` (computed once per
analysis); output: plain dicts the report renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from osmi_ee.osmi.stats import intervals_overlap

from .aggregate import key_columns, speed_interval
from .dataset import missing

NO_MODEL = "all"  # the key when the sweep has no `model` axis


def _pick(row: pd.Series, cols: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in cols:
        v = row[c]
        if missing(v):
            out[c] = None
        elif isinstance(v, np.integer):
            out[c] = int(v)
        elif isinstance(v, np.floating):
            out[c] = float(v)
        else:
            out[c] = v
    return out


def _choice(row: pd.Series, cols: Sequence[str]) -> dict[str, Any]:
    def f(col: str) -> float | None:
        v = row.get(col)
        return None if missing(v) else float(v)

    return {
        "config": _pick(row, cols),
        "samples_per_s": f("samples_per_s_mean"),
        "samples_per_s_ci95": (f("samples_per_s_ci95_low"), f("samples_per_s_ci95_high")),
        "latency_p50_ms": f("latency_p50_ms_mean"),
        "latency_p99_ms": f("latency_p99_ms_mean"),
        "latency_p99_ms_max": f("latency_p99_ms_max"),
        "cost_per_million_samples": f("cost_per_million_samples"),
        "n": int(row["n"]),
    }


def tied_with(best: pd.Series, others: pd.DataFrame) -> list[int] | None:
    """Positions in `others` whose interval overlaps `best`'s: not measurably slower,
    so a tie. None when `best` has no interval (nothing can be told apart)."""
    own = speed_interval(best)
    if own is None:
        return None
    return [i for i, (_, row) in enumerate(others.iterrows())
            if (iv := speed_interval(row)) is None or intervals_overlap(own, iv)]


def _entry(group: pd.DataFrame, cols: Sequence[str], slo_p99_ms: float | None) -> dict[str, Any]:
    eligible = group[group["all_valid"].astype(bool) & group["samples_per_s_mean"].notna()]
    meeting = eligible if slo_p99_ms is None else eligible[eligible["latency_p99_ms_max"] <= float(slo_p99_ms)]
    entry: dict[str, Any] = {
        "slo_p99_ms": None if slo_p99_ms is None else float(slo_p99_ms),
        "slo_source": "given" if slo_p99_ms is not None else "none: no objective was set",
        "configurations": int(len(group)),
        "eligible": int(len(eligible)),
        "meeting_slo": int(len(meeting)),
        "fastest": None,
        "tied": [],
        "cheapest": None,
        "priced": bool(meeting["cost_per_million_samples"].notna().any()) if len(meeting) else False,
    }
    if not len(meeting):
        return entry
    ranked = meeting.sort_values(["samples_per_s_mean", "latency_p99_ms_max"],
                                 ascending=[False, True], kind="stable")
    fastest, rest = ranked.iloc[0], ranked.iloc[1:]
    entry["fastest"] = _choice(fastest, cols)
    ties = tied_with(fastest, rest)
    entry["fastest"]["separable"] = ties is not None
    entry["tied"] = [_choice(rest.iloc[i], cols) for i in (ties or [])]
    priced = meeting[meeting["cost_per_million_samples"].notna()]
    if len(priced):
        cheapest = priced.sort_values(["cost_per_million_samples", "samples_per_s_mean"],
                                      ascending=[True, False], kind="stable").iloc[0]
        entry["cheapest"] = _choice(cheapest, cols)
    return entry


def recommend(table: pd.DataFrame, slo_p99_ms: float | None = None) -> dict[Any, dict[str, Any]]:
    """Per model (in grid order), the configuration to run, under a p99 objective
    when one is given.

    A configuration is a candidate when every one of its repeats is valid
    (`all_valid`); with an objective it must also keep its worst p99 over the
    repeats <= `slo_p99_ms` (a configuration whose p99 has too few samples behind
    it cannot show that it meets one). Without an objective, the fastest valid
    configuration is named and the entry says that no objective was set.
    `fastest` is the candidate with the highest mean samples/s; every other
    candidate whose 95% interval overlaps the fastest's is `tied` with it (listed,
    never called slower). `cheapest` is the lowest cost per million samples among
    priced candidates. Each choice is a dict with `config`, `samples_per_s`, its
    95% CI, latencies, cost and `n` (valid repeats).
    """
    if table.empty:
        return {}
    cols = key_columns(table)
    if "model" not in table.columns:
        return {NO_MODEL: _entry(table, cols, slo_p99_ms)}
    return {model: _entry(group, cols, slo_p99_ms)
            for model, group in table.groupby("model", sort=False, dropna=False)}
