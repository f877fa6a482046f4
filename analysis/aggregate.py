"""Statistics: runs -> one row per configuration, with means and 95% intervals.

`aggregate` is computed once per `osmi-analyze` and handed to everything that
needs per-configuration figures (dataset_summary.csv, perf_analyzer.csv, the
figures, the recommender, the report). A configuration is every parameter but
`repeat`: different scenarios, rates or GPU types are never averaged together.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from osmi_ee.ee.paths import SweepPaths, atomic_write
from osmi_ee.osmi.stats import CONFIDENCE, mean_ci

from .collect import STATUS_INVALID, STATUS_MISSING, STATUS_UNREADABLE
from .dataset import configuration_columns, cost_per_million_samples, missing

SUMMARY_FILE = SweepPaths(Path(".")).dataset_summary.name  # for links and messages

# Per-configuration columns after the configuration's own params, in order.
COUNT_COLUMNS: tuple[str, ...] = ("n_runs", "n", "n_invalid", "n_missing", "n_unstable")
AGGREGATE_COLUMNS: tuple[str, ...] = (
    *COUNT_COLUMNS, "all_valid", "concurrency",
    "samples_per_s_mean", "samples_per_s_std", "samples_per_s_ci95_low",
    "samples_per_s_ci95_high", "samples_per_s_ci95_half", "requests_per_s_mean",
    "latency_p50_ms_mean", "latency_p90_ms_mean", "latency_p99_ms_mean", "latency_p99_ms_max",
    "latency_mean_ms_mean", "achieved_rate_mean", "client_cpu_us_per_request_mean",
    "server_cpu_percent_mean", "server_rss_mib_max", "gpu_util_percent_mean", "gpu_power_w_mean",
    "energy_j_per_sample_mean", "min_backend_share", "price_per_gpu_hour", "cost_per_million_samples",
)
# dataset column -> (how over the valid repeats, its name here)
_OVER_VALID: tuple[tuple[str, str, str], ...] = (
    ("requests_per_s", "mean", "requests_per_s_mean"),
    ("latency_p50_ms", "mean", "latency_p50_ms_mean"),
    ("latency_p90_ms", "mean", "latency_p90_ms_mean"),
    ("latency_p99_ms", "mean", "latency_p99_ms_mean"),
    ("latency_p99_ms", "max", "latency_p99_ms_max"),
    ("latency_mean_ms", "mean", "latency_mean_ms_mean"),
    ("achieved_rate", "mean", "achieved_rate_mean"),
    ("client_cpu_us_per_request", "mean", "client_cpu_us_per_request_mean"),
    ("server_cpu_percent_mean", "mean", "server_cpu_percent_mean"),
    ("server_rss_mib_max", "max", "server_rss_mib_max"),
    ("gpu_util_percent_mean", "mean", "gpu_util_percent_mean"),
    ("gpu_power_w_mean", "mean", "gpu_power_w_mean"),
    ("energy_j_per_sample", "mean", "energy_j_per_sample_mean"),
)


def key_columns(table: pd.DataFrame) -> list[str]:
    """The configuration params of an aggregate table (its columns before the counts)."""
    return [c for c in table.columns if c not in AGGREGATE_COLUMNS]


def _group_ids(df: pd.DataFrame, keys: list[str]) -> np.ndarray:
    # Numbered in order of first appearance, i.e. sweep (grid) order.
    if not keys:
        return np.zeros(len(df), dtype=int)
    return df.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(math.nan, index=df.index, dtype="float64")
    return pd.to_numeric(df[col], errors="coerce").astype("float64")


def _speed_stats(speeds: np.ndarray, own_low: np.ndarray, own_high: np.ndarray, gid: np.ndarray,
                 groups: int, confidence: float) -> dict[str, np.ndarray]:
    """Mean, std and interval of samples/s per group, over its valid repeats (mean_ci).
    One valid run has no spread over repeats: its own interval (batch means of its
    window) stands in; several: Student t over the repeats, which also holds what
    changes between runs."""
    values: list[list[float]] = [[] for _ in range(groups)]
    own: list[tuple[float, float]] = [(math.nan, math.nan)] * groups
    for g, v, lo, hi in zip(gid, speeds, own_low, own_high):
        if not math.isnan(v):
            values[g].append(float(v))
            own[g] = (float(lo), float(hi))
    out = {name: np.full(groups, math.nan) for name in ("mean", "std", "low", "high")}
    for g, group in enumerate(values):
        mean, std, low, high = mean_ci(group, confidence)
        if len(group) == 1:
            low, high = own[g]
        out["mean"][g], out["std"][g], out["low"][g], out["high"][g] = mean, std, low, high
    return out


def aggregate(df: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per configuration, in sweep order.

    Only valid repeats with a speed enter the means (`n` of them); invalid or
    unreadable repeats are counted in `n_invalid`, unfinished ones in
    `n_missing`; `all_valid` is True only when every repeat is valid. Latency
    figures are means over the valid repeats, plus the worst p99
    (`latency_p99_ms_max`) for SLO checks. The cost is the price of the mean speed.
    """
    keys = configuration_columns(df)
    if df.empty:
        return pd.DataFrame(columns=[*keys, *AGGREGATE_COLUMNS])
    gid = _group_ids(df, keys)
    groups = int(gid.max()) + 1
    first = pd.Series(np.arange(len(df))).groupby(gid, sort=True).first().to_numpy()
    out = df.iloc[first][keys].reset_index(drop=True)  # keeps the params' dtypes

    status = df["status"].astype(str).to_numpy()
    ok = df["valid"].astype(bool).to_numpy() & df["samples_per_s"].notna().to_numpy()
    stable = df["stable"] if "stable" in df.columns else pd.Series(pd.NA, index=df.index)
    unstable = stable.astype("boolean").eq(False).fillna(False).to_numpy(bool) & ok

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(gid, weights=mask.astype(float), minlength=groups).astype("int64")

    def by_group(col: str, how: str, only_ok: bool = True) -> np.ndarray:
        values = _numeric(df, col)
        values = values.where(ok) if only_ok else values
        grouped = values.reset_index(drop=True).groupby(gid, sort=True)
        return getattr(grouped, how)().reindex(range(groups)).to_numpy(float)

    out["n_runs"] = np.bincount(gid, minlength=groups).astype("int64")
    out["n"] = count(ok)
    out["n_invalid"] = count(np.isin(status, [STATUS_INVALID, STATUS_UNREADABLE]))
    out["n_missing"] = count(status == STATUS_MISSING)
    out["n_unstable"] = count(unstable)
    out["all_valid"] = (out["n"] == out["n_runs"]).astype(bool)
    out["concurrency"] = pd.array(by_group("concurrency", "first", only_ok=False), dtype="Int64")
    speed = _speed_stats(_numeric(df, "samples_per_s").where(ok).to_numpy(float),
                         _numeric(df, "samples_per_s_ci95_low").to_numpy(float),
                         _numeric(df, "samples_per_s_ci95_high").to_numpy(float), gid, groups, confidence)
    out["samples_per_s_mean"] = speed["mean"]
    out["samples_per_s_std"] = speed["std"]
    out["samples_per_s_ci95_low"] = speed["low"]
    out["samples_per_s_ci95_high"] = speed["high"]
    out["samples_per_s_ci95_half"] = (speed["high"] - speed["low"]) / 2
    for col, how, name in _OVER_VALID:
        out[name] = by_group(col, how)
    out["min_backend_share"] = by_group("min_backend_share", "first", only_ok=False)
    price = by_group("price_per_gpu_hour", "mean", only_ok=False)
    out["price_per_gpu_hour"] = price
    servers = out["servers"].tolist() if "servers" in out.columns else [None] * groups
    out["cost_per_million_samples"] = [cost_per_million_samples(p, s, m)
                                       for p, s, m in zip(price, servers, speed["mean"])]
    return out[[*keys, *AGGREGATE_COLUMNS]]


def speed_interval(row: pd.Series | None) -> tuple[float, float] | None:
    """The 95% interval of a configuration's samples/s, or None where it has none."""
    if row is None:
        return None
    low, high = row.get("samples_per_s_ci95_low"), row.get("samples_per_s_ci95_high")
    return None if missing(low) or missing(high) else (float(low), float(high))


def write_summary(table: pd.DataFrame, sweep_dir: Path | str) -> Path:
    """Write `<sweep_dir>/dataset_summary.csv` (atomically); return its path."""
    path = SweepPaths(Path(sweep_dir)).dataset_summary
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    return path
