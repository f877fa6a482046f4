"""Sweep directory -> one table, one row per experiment.

The job runner leaves one folder per experiment (`<sweep>/<id>/`) holding the
resolved `config.yaml` and, once the job finished, `results/summary.json`.
`collect` turns those into a DataFrame; `write_dataset` stores it as
`dataset.csv` and `dataset.parquet` next to `sweep.json`.

Rules that keep the numbers honest:
  * every experiment listed in sweep.json gets a row, finished or not;
  * an invalid run never carries a throughput, even if its summary has one;
  * rows are built as plain dicts and turned into a frame once, so thousands
    of summaries read in well under a second.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY_SCHEMA = "osmi-ee/summary/1"
MISSING_REASON = "no result (job did not finish)"

# Row status: why a row looks the way it does, beyond valid True/False.
STATUS_OK = "ok"
STATUS_INVALID = "invalid"
STATUS_MISSING = "missing"
STATUS_UNREADABLE = "unreadable"

# Metric columns, in output order; the param axes go between the id and these.
FLOAT_COLUMNS: tuple[str, ...] = (
    "samples_per_s",
    "requests_per_s",
    "window_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "latency_max_ms",
    "backend_share_min",
    "backend_share_max",
)
INT_COLUMNS: tuple[str, ...] = ("sent", "ok", "failed", "samples_ok")
TEXT_COLUMNS: tuple[str, ...] = (
    "status",
    "reason",
    "backend_requests",
    "backend_shares",
    "server_kind",
    "started_at",
    "finished_at",
)
METRIC_COLUMNS: tuple[str, ...] = (
    "valid",
    "status",
    "reason",
    "samples_per_s",
    "requests_per_s",
    "sent",
    "ok",
    "failed",
    "samples_ok",
    "window_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "latency_max_ms",
    "backend_requests",
    "backend_shares",
    "backend_share_min",
    "backend_share_max",
    "server_kind",
    "started_at",
    "finished_at",
)
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


def _read_config_params(exp_dir: Path) -> dict[str, Any]:
    """The `experiment:` mapping of config.yaml; {} when absent or unreadable.

    Only called when the summary cannot supply the axes, so YAML (slow in pure
    Python) stays off the hot path.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(exp_dir / "config.yaml", "rb") as fh:
            config = yaml.load(fh, Loader=loader)
    except (OSError, yaml.YAMLError):
        return {}
    experiment = config.get("experiment") if isinstance(config, dict) else None
    return dict(experiment) if isinstance(experiment, Mapping) else {}


# --------------------------------------------------------------------------
# One summary -> one flat row


def _num(value: Any) -> float:
    """A finite-or-NaN float; None, strings and bools become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


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
    row.update(valid=False, status=status, reason=reason)
    return row


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

    requests = summary.get("requests") or {}
    for key in ("sent", "ok", "failed"):
        row[key] = _int(requests.get(key))
    row["samples_ok"] = _int(summary.get("samples_ok"))
    row["window_s"] = _num(summary.get("window_s"))

    latency = summary.get("latency_ms") or {}
    for key in ("p50", "p90", "p99", "mean", "max"):
        row[f"latency_{key}_ms"] = _num(latency.get(key))

    row.update(_backend_columns(summary.get("backends")))
    for key in ("server_kind", "started_at", "finished_at"):
        value = summary.get(key)
        row[key] = "" if value is None else str(value)
    return row


def _experiment_row(sweep_dir: Path, exp_id: str, axes: list[str]) -> dict[str, Any]:
    exp_dir = sweep_dir / exp_id
    summary, problem = _read_summary(exp_dir)
    if summary is not None:
        metrics = _summary_metrics(summary)
        params = summary.get("params") if isinstance(summary.get("params"), Mapping) else {}
    elif problem is not None:
        metrics, params = _empty_metrics(STATUS_UNREADABLE, problem), {}
    else:
        metrics, params = _empty_metrics(STATUS_MISSING, MISSING_REASON), {}
    if any(axis not in params for axis in axes):
        params = {**_read_config_params(exp_dir), **params}
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
    rows = [_experiment_row(sweep_dir, exp_id, axes) for exp_id in sweep["experiments"]]
    return _frame(rows, axes)


def param_columns(df: pd.DataFrame) -> list[str]:
    """The experiment axes present in a dataset (everything not a metric)."""
    return [c for c in df.columns if c not in FIXED_COLUMNS]


# --------------------------------------------------------------------------
# Storage


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call write(tmp) on a temp file in the same folder, then os.replace it onto
    `path`: readers never see a half-written file, even if we die mid-write."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600 files; give the usual umask-based mode instead.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset(df: pd.DataFrame, sweep_dir: Path | str) -> tuple[Path, Path]:
    """Write `<sweep_dir>/dataset.csv` and `dataset.parquet`; return both paths."""
    sweep_dir = Path(sweep_dir)
    csv_path = sweep_dir / "dataset.csv"
    parquet_path = sweep_dir / "dataset.parquet"
    atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(parquet_path, lambda tmp: df.to_parquet(tmp, index=False))
    return csv_path, parquet_path


def load_dataset(path: Path | str) -> pd.DataFrame:
    """Read dataset.csv or dataset.parquet back with the dtypes `collect` gives.

    CSV loses dtypes (empty text reads as NaN, Int64 as int64/float64); this
    undoes that so both files load to the same frame.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path)  # pandas >= 3 parses floats round-trip exact
    for col in df.columns:
        if col in TEXT_COLUMNS or col == "experiment_id":
            df[col] = df[col].fillna("").astype("str")
        elif col in INT_COLUMNS:
            df[col] = df[col].astype("Int64")
        elif col in FLOAT_COLUMNS:
            df[col] = df[col].astype("float64")
        elif col == "valid":
            df[col] = df[col].astype("bool")
        elif pd.api.types.is_integer_dtype(df[col]):
            df[col] = df[col].astype("Int64")
    return df
