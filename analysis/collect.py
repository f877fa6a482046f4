"""Sweep directory -> one table, one row per experiment.

The job runner leaves one folder per experiment (`<sweep>/<id>/`) holding the
resolved `config.yaml` and, once the job finished, `results/summary.json`.
`collect` turns those into a DataFrame; `write_dataset` stores it as
`dataset.csv` and `dataset.parquet` next to `sweep.json`.

Rules that keep the numbers honest:
  * every experiment listed in sweep.json gets a row, finished or not;
  * an invalid run never carries a throughput (nor a cost or energy per
    sample, which derive from it), even if its summary has one;
  * a figure that was not measured is NaN/NA, never 0 (older summaries have
    no `measurement`, `arrival` or `telemetry` block: those columns stay NA);
  * rows are built as plain dicts and turned into a frame once, so thousands
    of summaries read in well under a second.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osmi_ee.ee.paths import atomic_write
from osmi_ee.osmi.stats import CONFIDENCE, mean_ci, t_quantile  # noqa: F401  (re-exported)

SUMMARY_SCHEMA = "osmi-ee/summary/1"
MISSING_REASON = "no result (job did not finish)"

# Row status: why a row looks the way it does, beyond valid True/False.
STATUS_OK = "ok"
STATUS_INVALID = "invalid"
STATUS_MISSING = "missing"
STATUS_UNREADABLE = "unreadable"

# Metric columns with their kinds, in output order; the param axes go between
# the id and these. The per-kind tuples below are derived from this one list.
_METRICS: tuple[tuple[str, str], ...] = (
    ("valid", "bool"),
    ("status", "text"),
    ("reason", "text"),
    ("samples_per_s", "float"),
    ("samples_per_s_ci95_low", "float"),  # the run's own interval (batch means of its window)
    ("samples_per_s_ci95_high", "float"),
    ("requests_per_s", "float"),
    ("sent", "int"),
    ("ok", "int"),
    ("failed", "int"),
    ("samples_ok", "int"),
    ("window_s", "float"),
    ("latency_p50_ms", "float"),
    ("latency_p90_ms", "float"),
    ("latency_p99_ms", "float"),
    ("latency_mean_ms", "float"),
    ("latency_max_ms", "float"),
    ("backend_requests", "text"),
    ("backend_shares", "text"),
    ("backend_share_min", "float"),
    ("backend_share_max", "float"),
    ("server_kind", "text"),
    ("server_version", "text"),
    ("attempt", "int"),
    ("stability_spread", "float"),  # max/min - 1 of the last k windows' rates
    ("balancer_forwarded", "int"),
    ("started_at", "text"),
    ("finished_at", "text"),
    # Newer summaries (absent -> NA): measurement stability, open-loop arrival,
    # telemetry, and the price of the GPU type from the resolved profile.
    ("stable", "bool_na"),  # True / False / NA (not judged)
    ("target_rate", "float"),
    ("achieved_rate", "float"),
    ("server_cpu_percent_mean", "float"),
    ("server_rss_mb_max", "float"),
    ("gpu_util_percent_mean", "float"),
    ("gpu_power_w_mean", "float"),
    ("energy_j_per_sample", "float"),
    ("price_per_gpu_hour", "float"),
    ("cost_per_million_samples", "float"),
)


def _of_kind(kind: str) -> tuple[str, ...]:
    return tuple(name for name, k in _METRICS if k == kind)


METRIC_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _METRICS)
FLOAT_COLUMNS: tuple[str, ...] = _of_kind("float")
INT_COLUMNS: tuple[str, ...] = _of_kind("int")
TEXT_COLUMNS: tuple[str, ...] = _of_kind("text")
BOOL_NA_COLUMNS: tuple[str, ...] = _of_kind("bool_na")
FIXED_COLUMNS: frozenset[str] = frozenset(("experiment_id", *METRIC_COLUMNS))


class SweepError(Exception):
    """The sweep directory cannot be read (missing, no sweep.json, bad JSON)."""


# --------------------------------------------------------------------------
# sweep.json and per-experiment files


def load_sweep(sweep_dir: Path | str) -> dict[str, Any]:
    """sweep.json as a dict, with `experiments` normalised to a list of ids."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SweepError(f"{sweep_dir}: sweep directory does not exist")
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir}: not a directory")
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise SweepError(f"{path}: no sweep.json in the sweep directory")
    try:
        sweep = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: cannot read sweep.json: {exc}") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("experiments"), list):
        raise SweepError(f"{path}: sweep.json has no 'experiments' list")
    sweep["experiments"] = [_experiment_id(entry, path) for entry in sweep["experiments"]]
    sweep["axes"] = [str(axis) for axis in sweep.get("axes") or []]
    return sweep


def _experiment_id(entry: Any, path: Path) -> str:
    # Accept {"id": ...} entries too, so a richer sweep.json does not break us.
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping):
        for key in ("id", "experiment_id"):
            if isinstance(entry.get(key), str):
                return entry[key]
    raise SweepError(f"{path}: experiment entry {entry!r} is not an id")


def _read_summary(exp_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(summary, None), (None, None) when absent, (None, why) when unreadable."""
    path = exp_dir / "results" / "summary.json"
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"unreadable summary.json: {exc}"
    if not isinstance(data, dict):
        return None, "unreadable summary.json: not a JSON object"
    schema = data.get("schema")
    if schema is not None and schema != SUMMARY_SCHEMA:
        return None, f"summary.json has schema {schema!r}, expected {SUMMARY_SCHEMA!r}"
    return data, None


def _read_config(exp_dir: Path) -> dict[str, Any]:
    """config.yaml as a dict; {} when absent or unreadable."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(exp_dir / "config.yaml", "rb") as fh:
            config = yaml.load(fh, Loader=loader)
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _config_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `experiment:` mapping of a config; {} when absent."""
    experiment = config.get("experiment")
    return dict(experiment) if isinstance(experiment, Mapping) else {}


def _config_price(config: Mapping[str, Any], gpu: Any) -> float:
    """`profile.gpus.<gpu>.price_per_gpu_hour` of a resolved config; NaN when
    absent, null or not a non-negative number."""
    if gpu is None:
        gpu = _config_params(config).get("gpu")
    profile = config.get("profile")
    gpus = profile.get("gpus") if isinstance(profile, Mapping) else None
    entry = gpus.get(gpu) if isinstance(gpus, Mapping) and gpu is not None else None
    if not isinstance(entry, Mapping):
        return math.nan
    price = _finite(entry.get("price_per_gpu_hour"))
    return price if price >= 0 else math.nan


# --------------------------------------------------------------------------
# One summary -> one flat row


def _num(value: Any) -> float:
    """A finite-or-NaN float; None, strings and bools become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _finite(value: Any) -> float:
    """Like `_num`, but infinities are NaN too."""
    value = _num(value)
    return value if math.isfinite(value) else math.nan


def _mean(values: Iterable[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else math.nan


def _max(values: Iterable[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return max(known) if known else math.nan


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if float(value).is_integer() else None


def _natural_key(name: str) -> tuple[Any, ...]:
    # s2 before s10: backends are named s0..sN and must line up with servers.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _backend_columns(backends: Any) -> dict[str, Any]:
    empty = {"backend_requests": "", "backend_shares": "",
             "backend_share_min": math.nan, "backend_share_max": math.nan}
    if not isinstance(backends, Mapping) or not backends:
        return empty
    names = sorted(backends, key=lambda n: _natural_key(str(n)))
    counts = [_int((backends[n] or {}).get("requests")) or 0 for n in names]
    total = sum(counts)
    shares = []
    for name, count in zip(names, counts):
        share = _num((backends[name] or {}).get("share"))
        # Recompute a missing share from the counts rather than drop the backend.
        if math.isnan(share) and total:
            share = count / total
        shares.append(share)
    known = [s for s in shares if not math.isnan(s)]
    return {
        "backend_requests": "/".join(str(c) for c in counts),
        "backend_shares": "/".join("nan" if math.isnan(s) else f"{s:.2f}" for s in shares),
        "backend_share_min": min(known) if known else math.nan,
        "backend_share_max": max(known) if known else math.nan,
    }


def _empty_metrics(status: str, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {col: math.nan for col in FLOAT_COLUMNS}
    row.update({col: None for col in INT_COLUMNS})
    row.update({col: "" for col in TEXT_COLUMNS})
    row.update({col: None for col in BOOL_NA_COLUMNS})
    row.update(valid=False, status=status, reason=reason)
    return row


def _stable(measurement: Any) -> bool | None:
    if not isinstance(measurement, Mapping):
        return None
    stable = measurement.get("stable")
    return stable if isinstance(stable, bool) else None


def _arrival_columns(arrival: Any) -> dict[str, float]:
    arrival = arrival if isinstance(arrival, Mapping) else {}
    return {"target_rate": _finite(arrival.get("target_rate")),
            "achieved_rate": _finite(arrival.get("achieved_rate"))}


def _entries(block: Any) -> list[Mapping[str, Any]]:
    if not isinstance(block, Mapping):
        return []
    return [v for v in block.values() if isinstance(v, Mapping)]


def _telemetry_columns(telemetry: Any) -> dict[str, float]:
    """Server CPU (mean over servers), RSS (max), GPU utilisation and power
    (mean over GPUs) and energy per sample; NaN for whatever was not measured.

    A non-positive energy per sample is a meter that did not run, not a free
    lunch: it is NaN too.
    """
    telemetry = telemetry if isinstance(telemetry, Mapping) else {}
    servers = _entries(telemetry.get("servers"))
    gpus = _entries(telemetry.get("gpus"))
    energy = _finite(telemetry.get("energy_j_per_sample"))
    return {
        "server_cpu_percent_mean": _mean(_finite(s.get("cpu_percent_mean")) for s in servers),
        "server_rss_mb_max": _max(_finite(s.get("rss_mb_max")) for s in servers),
        "gpu_util_percent_mean": _mean(_finite(g.get("util_percent_mean")) for g in gpus),
        "gpu_power_w_mean": _mean(_finite(g.get("power_w_mean")) for g in gpus),
        "energy_j_per_sample": energy if energy > 0 else math.nan,
    }


def _summary_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    valid = summary.get("valid") is True
    reasons = [str(r) for r in summary.get("reasons") or []]
    reason = "" if valid else ("; ".join(reasons) or "invalid (no reason given)")
    row = _empty_metrics(STATUS_OK if valid else STATUS_INVALID, reason)
    row["valid"] = valid

    throughput = summary.get("throughput") or {}
    if valid:  # never report an invalid run as a speed
        row["samples_per_s"] = _num(throughput.get("samples_per_s"))
        row["requests_per_s"] = _num(throughput.get("requests_per_s"))
        interval = throughput.get("samples_per_s_ci95") or [None, None]
        row["samples_per_s_ci95_low"], row["samples_per_s_ci95_high"] = _num(interval[0]), _num(interval[1])

    requests = summary.get("requests") or {}
    for key in ("sent", "ok", "failed"):
        row[key] = _int(requests.get(key))
    row["samples_ok"] = _int(summary.get("samples_ok"))
    row["window_s"] = _num(summary.get("window_s"))

    latency = summary.get("latency_ms") or {}
    for key in ("p50", "p90", "p99", "mean", "max"):
        row[f"latency_{key}_ms"] = _num(latency.get(key))

    row.update(_backend_columns(summary.get("backends")))
    for key in ("server_kind", "server_version", "started_at", "finished_at"):
        value = summary.get(key)
        row[key] = "" if value is None else str(value)
    row["attempt"] = _int((summary.get("attempt") or {}).get("number"))
    row["stability_spread"] = _num((summary.get("measurement") or {}).get("spread"))
    row["balancer_forwarded"] = _int((summary.get("accounting") or {}).get("balancer_forwarded"))

    row["stable"] = _stable(summary.get("measurement"))
    row.update(_arrival_columns(summary.get("arrival")))
    row.update(_telemetry_columns(summary.get("telemetry")))
    if not valid:  # a per-sample figure of an invalid run is a speed in disguise
        row["energy_j_per_sample"] = math.nan
    return row


def cost_per_million_samples(price_per_gpu_hour: float, servers: Any, samples_per_s: float) -> float:
    """Price of serving 1e6 samples at the measured speed with one GPU per
    server: price * servers / 3600 / samples_per_s * 1e6. NaN when the price,
    the server count or the speed is missing or not positive (price 0 is 0)."""
    n = _int(servers)
    price, speed = _finite(price_per_gpu_hour), _finite(samples_per_s)
    if n is None or n < 1 or math.isnan(price) or price < 0 or math.isnan(speed) or speed <= 0:
        return math.nan
    return price * n / 3600.0 / speed * 1e6


def _experiment_row(sweep_dir: Path, exp_id: str, axes: list[str],
                    prices: dict[Any, float] | None = None) -> dict[str, Any]:
    """One flat row. `prices` caches price_per_gpu_hour by GPU type across the
    sweep (one sweep = one profile), so config.yaml is parsed once per GPU type
    rather than once per experiment; YAML stays off the hot path."""
    exp_dir = sweep_dir / exp_id
    summary, problem = _read_summary(exp_dir)
    if summary is not None:
        metrics = _summary_metrics(summary)
        params = summary.get("params") if isinstance(summary.get("params"), Mapping) else {}
    elif problem is not None:
        metrics, params = _empty_metrics(STATUS_UNREADABLE, problem), {}
    else:
        metrics, params = _empty_metrics(STATUS_MISSING, MISSING_REASON), {}
    config: dict[str, Any] | None = None
    if any(axis not in params for axis in axes):
        config = _read_config(exp_dir)
        params = {**_config_params(config), **params}
    prices = {} if prices is None else prices
    gpu = params.get("gpu")
    gpu_key = gpu if isinstance(gpu, (str, int, float, bool)) or gpu is None else _text(gpu)
    if gpu_key not in prices:
        if config is None:
            config = _read_config(exp_dir)
        price = _config_price(config, gpu)
        if config:  # an absent or unreadable config must not poison the cache
            prices[gpu_key] = price
    else:
        price = prices[gpu_key]
    metrics["price_per_gpu_hour"] = price
    metrics["cost_per_million_samples"] = cost_per_million_samples(
        price, params.get("servers"), metrics["samples_per_s"])
    # Param names that clash with metric columns must not overwrite the metrics.
    params = {str(k): v for k, v in params.items() if str(k) not in FIXED_COLUMNS}
    return {"experiment_id": exp_id, "_params": params, **metrics}


# --------------------------------------------------------------------------
# Rows -> frame


def _param_order(axes: Iterable[str], rows: list[dict[str, Any]]) -> list[str]:
    """Sweep axes first (their declared order), then extra params as first seen."""
    order = [a for a in axes if a not in FIXED_COLUMNS]
    seen = set(order)
    for row in rows:
        for key in row["_params"]:
            if key not in seen:
                seen.add(key)
                order.append(key)
    return order


def _param_series(values: list[Any]) -> pd.Series:
    """One axis column: nullable ints when integral, text when types mix; an
    axis a row does not have is NA (not "", which would look like a value).

    Mixed types (e.g. gpu "cpu" and 0) would make Parquet refuse the column.
    """
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="float64")
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, str) for v in present):
        return pd.Series(values, dtype="str")
    return pd.Series([None if v is None else _text(v) for v in values], dtype="str")


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _frame(rows: list[dict[str, Any]], axes: list[str]) -> pd.DataFrame:
    params = _param_order(axes, rows)
    columns: dict[str, pd.Series] = {
        "experiment_id": pd.Series([r["experiment_id"] for r in rows], dtype="str")
    }
    for name in params:
        columns[name] = _param_series([r["_params"].get(name) for r in rows])
    for name in METRIC_COLUMNS:
        values = [r[name] for r in rows]
        if name == "valid":
            columns[name] = pd.Series(values, dtype="bool")
        elif name in BOOL_NA_COLUMNS:
            columns[name] = pd.Series(values, dtype="boolean")
        elif name in INT_COLUMNS:
            columns[name] = pd.Series(values, dtype="Int64")
        elif name in FLOAT_COLUMNS:
            columns[name] = pd.Series(values, dtype="float64")
        else:
            columns[name] = pd.Series(values, dtype="str")
    return pd.DataFrame(columns)


def collect(sweep_dir: Path | str) -> pd.DataFrame:
    """One row per experiment listed in `<sweep_dir>/sweep.json`, in that order.

    Raises SweepError when the directory or sweep.json is missing or unreadable.
    """
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep(sweep_dir)
    axes = sweep["axes"]
    prices: dict[Any, float] = {}
    rows = [_experiment_row(sweep_dir, exp_id, axes, prices) for exp_id in sweep["experiments"]]
    return _frame(rows, axes)


def param_columns(df: pd.DataFrame) -> list[str]:
    """The experiment axes present in a dataset (everything not a metric)."""
    return [c for c in df.columns if c not in FIXED_COLUMNS]


# --------------------------------------------------------------------------
# Storage


def write_dataset(df: pd.DataFrame, sweep_dir: Path | str) -> tuple[Path, Path]:
    """Write `<sweep_dir>/dataset.csv` and `dataset.parquet`; return both paths."""
    sweep_dir = Path(sweep_dir)
    csv_path = sweep_dir / "dataset.csv"
    parquet_path = sweep_dir / "dataset.parquet"
    atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(parquet_path, lambda tmp: df.to_parquet(tmp, index=False))
    return csv_path, parquet_path


def _bool_na(series: pd.Series) -> pd.Series:
    """True/False/NA from bools, "True"/"False" text or NaN (as CSV reads them)."""
    if isinstance(series.dtype, pd.BooleanDtype):
        return series
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}

    def one(value: Any) -> Any:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return pd.NA
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        return mapping.get(str(value).strip().lower(), pd.NA)

    return pd.Series([one(v) for v in series], index=series.index, dtype="boolean", name=series.name)


def load_dataset(path: Path | str) -> pd.DataFrame:
    """Read dataset.csv or dataset.parquet back with the dtypes `collect` gives.

    CSV loses dtypes (empty text reads as NaN, Int64 as int64/float64); this
    undoes that so both files load to the same frame.
    """
    path = Path(path)
    raw: pd.DataFrame | None = None
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path)  # pandas >= 3 parses floats round-trip exact
        # An integer axis with empty cells (e.g. `rate`: null for closed loop)
        # reads back as float; its text ("50", not "50.0") tells them apart.
        floats = [c for c in df.columns if c not in FIXED_COLUMNS
                  and pd.api.types.is_float_dtype(df[c])]
        if floats:
            raw = pd.read_csv(path, usecols=floats, dtype=str, keep_default_na=False)
    for col in df.columns:
        if raw is not None and col in raw.columns:
            text = raw[col][raw[col] != ""]
            if text.empty:  # a param no row has: text NA, as collect gives it
                df[col] = pd.Series([None] * len(df), index=df.index, dtype="str")
            elif text.str.fullmatch(r"-?\d+").all():
                df[col] = df[col].astype("Int64")
            continue
        if col in TEXT_COLUMNS or col == "experiment_id":
            values = df[col]
            df[col] = values.astype(object).where(values.notna(), "").astype("str")
        elif col in INT_COLUMNS:
            df[col] = df[col].astype("Int64")
        elif col in FLOAT_COLUMNS:
            df[col] = df[col].astype("float64")
        elif col == "valid":
            df[col] = df[col].astype("bool")
        elif col in BOOL_NA_COLUMNS:
            df[col] = _bool_na(df[col])
        elif pd.api.types.is_integer_dtype(df[col]):
            df[col] = df[col].astype("Int64")
    return df


# --------------------------------------------------------------------------
# Repeats -> one row per configuration

SUMMARY_COUNT_COLUMNS: tuple[str, ...] = ("n_runs", "n", "n_invalid", "n_missing", "n_unstable")


def configuration_columns(df: pd.DataFrame) -> list[str]:
    """The params that make a configuration: every axis except `repeat`."""
    return [c for c in param_columns(df) if c != "repeat"]


def aggregate(df: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per configuration (all params but `repeat`), in sweep order.

    Only valid repeats with a speed enter the means (`n` of them); invalid or
    unreadable repeats are counted in `n_invalid`, unfinished ones in
    `n_missing`; `all_valid` is True only when every repeat is valid. The
    95% interval of the mean samples/s uses Student's t with n - 1 degrees of
    freedom (NaN for n == 1). Latency figures are means over the valid
    repeats, plus the worst p99 (`latency_p99_ms_max`) for SLO checks. The
    cost is the price of the mean speed; different scenarios or rates are
    different configurations, never averaged together.
    """
    keys = configuration_columns(df)
    if df.empty:
        return pd.DataFrame(columns=[*keys, *SUMMARY_COUNT_COLUMNS, "all_valid", "samples_per_s_mean"])
    # Group number per row, in order of first appearance (= sweep order).
    if keys:
        gid = df.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    else:
        gid = np.zeros(len(df), dtype=int)
    groups = int(gid.max()) + 1
    first = pd.Series(np.arange(len(df))).groupby(gid, sort=True).first().to_numpy()
    out = df.iloc[first][keys].reset_index(drop=True)  # keeps the params' dtypes

    status = df["status"].astype(str).to_numpy()
    ok = df["valid"].astype(bool).to_numpy() & df["samples_per_s"].notna().to_numpy()
    if "stable" in df.columns:
        unstable = df["stable"].astype("boolean").eq(False).fillna(False).to_numpy(bool) & ok
    else:
        unstable = np.zeros(len(df), dtype=bool)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(gid, weights=mask.astype(float), minlength=groups).astype("int64")

    def column(col: str, only_ok: bool = True) -> pd.Series:
        if col not in df.columns:
            return pd.Series(math.nan, index=df.index, dtype="float64")
        values = pd.to_numeric(df[col], errors="coerce").astype("float64")
        return values.where(ok) if only_ok else values

    def by_group(col: str, how: str, only_ok: bool = True) -> np.ndarray:
        grouped = column(col, only_ok).reset_index(drop=True).groupby(gid, sort=True)
        return getattr(grouped, how)().reindex(range(groups)).to_numpy(float)

    out["n_runs"] = np.bincount(gid, minlength=groups).astype("int64")
    out["n"] = count(ok)
    out["n_invalid"] = count(np.isin(status, [STATUS_INVALID, STATUS_UNREADABLE]))
    out["n_missing"] = count(status == STATUS_MISSING)
    out["n_unstable"] = count(unstable)
    out["all_valid"] = (out["n"] == out["n_runs"]).astype(bool)
    mean = by_group("samples_per_s", "mean")
    std = by_group("samples_per_s", "std")  # ddof=1: NaN for a single run
    n = out["n"].to_numpy()
    tq = np.array([t_quantile(confidence, int(k) - 1) if k > 1 else math.nan for k in n])
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(n > 1, tq * std / np.sqrt(np.maximum(n, 1)), np.nan)
    out["samples_per_s_mean"] = mean
    out["samples_per_s_std"] = np.where(n > 1, std, np.nan)
    # One valid run: its own interval (batch means over its window); several: Student t
    # over the repeats, which also holds what changes between runs.
    own_low, own_high = by_group("samples_per_s_ci95_low", "mean"), by_group("samples_per_s_ci95_high", "mean")
    out["samples_per_s_ci95_low"] = np.where(n > 1, mean - half, np.where(n == 1, own_low, np.nan))
    out["samples_per_s_ci95_high"] = np.where(n > 1, mean + half, np.where(n == 1, own_high, np.nan))
    out["samples_per_s_ci95_half"] = (out["samples_per_s_ci95_high"] - out["samples_per_s_ci95_low"]) / 2
    for col in ("requests_per_s", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
                "achieved_rate", "gpu_util_percent_mean", "gpu_power_w_mean"):
        out[f"{col}_mean" if not col.endswith("_mean") else col] = by_group(col, "mean")
    out["latency_p99_ms_max"] = by_group("latency_p99_ms", "max")
    out["server_cpu_percent_mean"] = by_group("server_cpu_percent_mean", "mean")
    out["server_rss_mb_max"] = by_group("server_rss_mb_max", "max")
    out["energy_j_per_sample_mean"] = by_group("energy_j_per_sample", "mean")
    price = by_group("price_per_gpu_hour", "mean", only_ok=False)
    out["price_per_gpu_hour"] = price
    servers = out["servers"].tolist() if "servers" in out.columns else [None] * groups
    out["cost_per_million_samples"] = [cost_per_million_samples(p_, s_, m_)
                                       for p_, s_, m_ in zip(price, servers, mean)]
    order = [*keys, *SUMMARY_COUNT_COLUMNS, "all_valid", "samples_per_s_mean", "samples_per_s_std",
             "samples_per_s_ci95_low", "samples_per_s_ci95_high", "samples_per_s_ci95_half",
             "requests_per_s_mean", "latency_p50_ms_mean", "latency_p90_ms_mean",
             "latency_p99_ms_mean", "latency_p99_ms_max", "achieved_rate_mean",
             "server_cpu_percent_mean", "server_rss_mb_max", "gpu_util_percent_mean",
             "gpu_power_w_mean", "energy_j_per_sample_mean", "price_per_gpu_hour",
             "cost_per_million_samples"]
    return out[order]


def write_summary(summary: pd.DataFrame, sweep_dir: Path | str) -> Path:
    """Write `<sweep_dir>/dataset_summary.csv` (atomically); return its path."""
    path = Path(sweep_dir) / "dataset_summary.csv"
    atomic_write(path, lambda tmp: summary.to_csv(tmp, index=False))
    return path
