"""The dataset: ONE list of its columns (name, kind, unit, meaning), the typed
frame built from row dicts, and its files.

`collect` reads result files into plain row dicts; `frame` turns them into a
DataFrame whose columns are, in order: `experiment_id`, the grid's axes (in
sweep.json order), the metrics of COLUMNS, then one integer column per
backend (`backend_<name>_requests`). Every dtype, the CSV/Parquet layout and
the README's column dictionary (`dictionary_markdown`) come from COLUMNS.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osmi_ee.ee.paths import SweepPaths, atomic_write


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # bool | bool_na (True/False/NA) | text | int | float
    unit: str
    meaning: str


RUN_ID = Column("experiment_id", "text", "", "the experiment's folder under the sweep")

# The metrics, in output order; the grid's axes go between the id and these.
COLUMNS: tuple[Column, ...] = (
    Column("valid", "bool", "", "every validity rule held (README, Validity rules)"),
    Column("status", "text", "", "valid, invalid, missing (job did not finish) or unreadable (summary.json)"),
    Column("reason", "text", "", "every broken rule, separated by '; ' (empty when valid)"),
    Column("streams", "int", "requests per client", "requests each client keeps in flight (measure.streams)"),
    Column("concurrency", "int", "requests", "requests in flight, all clients: clients × streams (closed loop only)"),
    Column("samples_per_s", "float", "samples/s", "successful samples / measured window, all clients (valid runs only)"),
    Column("samples_per_s_ci95_low", "float", "samples/s", "the run's own 95% interval: batch means over 10 sub-windows"),
    Column("samples_per_s_ci95_high", "float", "samples/s", "upper end of that interval"),
    Column("requests_per_s", "float", "requests/s", "successful requests / measured window (valid runs only)"),
    Column("sent", "int", "requests", "measured requests sent, all clients"),
    Column("ok", "int", "requests", "measured requests answered correctly"),
    Column("failed", "int", "requests", "measured requests that failed (sent - ok)"),
    Column("samples_ok", "int", "samples", "ok × batch"),
    Column("window_s", "float", "s", "measured window: first measured start to last measured end"),
    Column("latency_p50_ms", "float", "ms", "median latency of ok measured requests (empty below 20 requests)"),
    Column("latency_p90_ms", "float", "ms", "90th percentile latency (empty below 100 requests)"),
    Column("latency_p99_ms", "float", "ms", "99th percentile latency (empty below 1,000 requests)"),
    Column("latency_mean_ms", "float", "ms", "mean latency (empty below 20 requests)"),
    Column("latency_max_ms", "float", "ms", "slowest ok measured request"),
    Column("client_cpu_us_per_request", "float", "µs CPU per request",
           "CPU time of all client processes over the measured window / ok requests (valid runs only)"),
    Column("client_cpu_share_max", "float", "cores",
           "the busiest client process's CPU / wall time over the window (over 0.9: INVALID, load generator "
           "saturated)"),
    Column("client_processes", "int", "processes", "client processes that carried the `clients` streams"),
    Column("balanced_by", "text", "", "haproxy, or none: each client process round-robins over the shards"),
    Column("backend_count", "int", "backends", "backends HAProxy counted requests for"),
    Column("backend_share_min", "float", "fraction of requests", "smallest backend's share of the requests"),
    Column("backend_share_max", "float", "fraction of requests", "largest backend's share of the requests"),
    Column("min_backend_share", "float", "fraction of the fair share 1/N",
           "validity threshold: each of N > 1 backends needs at least this × 1/N (measure.min_backend_share)"),
    Column("server_kind", "text", "", "the model server: osmi-model-server or tensorflow_model_server"),
    Column("server_version", "text", "", "the model server's name and version as it reported them"),
    Column("attempt", "int", "", "attempt number of this experiment"),
    Column("stability_spread", "float", "fraction", "max/min - 1 of the last k measurement windows' rates"),
    Column("balancer_forwarded", "int", "requests", "requests HAProxy forwarded in the window, all backends"),
    Column("started_at", "text", "ISO 8601", "when the attempt started"),
    Column("finished_at", "text", "ISO 8601", "when the attempt finished"),
    Column("stable", "bool_na", "", "the last k windows agreed within the tolerance (empty: not judged)"),
    Column("target_rate", "float", "requests/s", "open loop: offered arrival rate, all clients"),
    Column("achieved_rate", "float", "requests/s", "open loop: arrival rate the clients achieved"),
    Column("server_cpu_percent_mean", "float", "percent of one core",
           "model-server process CPU, mean over the window and the shards (100 = one core busy)"),
    Column("server_rss_mib_max", "float", "MiB", "largest model-server resident memory over the window and shards"),
    Column("gpu_util_percent_mean", "float", "percent", "GPU utilisation (NVML), mean over the window and GPUs"),
    Column("gpu_power_w_mean", "float", "W per GPU", "GPU power (NVML), mean over the window and GPUs"),
    Column("energy_j_per_sample", "float", "J/sample", "GPU energy over the window / ok samples (valid runs only)"),
    Column("batching_max_batch_size", "int", "samples",
           "server-side batching: largest merged batch (empty: batching off)"),
    Column("batching_timeout_us", "int", "µs", "server-side batching: how long an incomplete batch waits"),
    Column("batching_threads", "int", "batches at once", "server-side batching: num_batch_threads"),
    Column("batching_max_enqueued", "int", "batches", "server-side batching: max_enqueued_batches"),
    Column("server_batches", "int", "batches", "batches the servers ran in the measured window, all shards "
           "(empty where the servers report none: batching off)"),
    Column("server_batch_size_mean", "float", "samples", "mean server-side batch size in the window"),
    Column("server_batch_size_p50", "float", "samples", "median server-side batch size (TF-Serving: the "
           "upper bound of its power-of-two bucket; osmi-model-server: exact)"),
    Column("server_batch_size_max", "float", "samples", "largest server-side batch (bucket bound, as p50)"),
    Column("price_per_gpu_hour", "float", "currency/GPU-hour", "the profile's price of this GPU type"),
    Column("cost_per_million_samples", "float", "currency",
           "price × servers / 3600 / samples_per_s × 1e6 (valid, priced runs only)"),
)

# Columns whose names depend on the sweep, documented by pattern.
PARAM_DOC = Column("<axis>", "", "as in the grid",
                   "one column per grid axis, in sweep.json order: model, server (osmi, tfserving, "
                   "triton ...; only in sweeps with the server axis), servers, clients, batch, "
                   "gpu, scenario, rate (requests/s, open loop), batching (the setting's name, or off; "
                   "only in sweeps that turn it on), repeat")
BACKEND_PREFIX, BACKEND_SUFFIX = "backend_", "_requests"
BACKEND_DOC = Column(f"{BACKEND_PREFIX}<name>{BACKEND_SUFFIX}", "int", "requests",
                     "measured requests HAProxy sent to backend <name> (s0, s1, ...); empty when the "
                     "run had no such backend")


def _of_kind(kind: str) -> tuple[str, ...]:
    return tuple(c.name for c in COLUMNS if c.kind == kind)


METRIC_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS)
FLOAT_COLUMNS: tuple[str, ...] = _of_kind("float")
INT_COLUMNS: tuple[str, ...] = _of_kind("int")
TEXT_COLUMNS: tuple[str, ...] = _of_kind("text")
BOOL_NA_COLUMNS: tuple[str, ...] = _of_kind("bool_na")
FIXED_COLUMNS: frozenset[str] = frozenset((RUN_ID.name, *METRIC_COLUMNS))
_BACKEND_RE = re.compile(rf"^{BACKEND_PREFIX}(.+){BACKEND_SUFFIX}$")


# --------------------------------------------------------------------------
# Which column is what


def backend_column(name: str) -> str:
    """`s0` -> `backend_s0_requests` (anything but letters, digits, `_`, `-` becomes `_`)."""
    return f"{BACKEND_PREFIX}{re.sub(r'[^A-Za-z0-9_-]', '_', name)}{BACKEND_SUFFIX}"


def backend_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in FIXED_COLUMNS and _BACKEND_RE.match(c)]


def param_columns(df: pd.DataFrame) -> list[str]:
    """The experiment axes present in a dataset: neither a metric nor a backend count
    (and not a helper column of the figures, which start with `_`)."""
    backends = set(backend_columns(df))
    return [c for c in df.columns if c not in FIXED_COLUMNS and c not in backends
            and not c.startswith("_")]


def configuration_columns(df: pd.DataFrame) -> list[str]:
    """The params that make a configuration: every axis except `repeat`."""
    return [c for c in param_columns(df) if c != "repeat"]


def natural_key(name: str) -> tuple[Any, ...]:
    # s2 before s10: backends are named s0..sN and must line up with servers.
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


# --------------------------------------------------------------------------
# Rows -> frame


def _param_series(values: list[Any]) -> pd.Series:
    """One axis column: nullable ints when integral, text when types mix; an
    axis a row does not have is NA (Parquet refuses mixed-type columns)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="float64")
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, str) for v in present):
        return pd.Series(values, dtype="str")
    return pd.Series([None if v is None else text(v) for v in values], dtype="str")


def text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


_DTYPES = {"bool": "bool", "bool_na": "boolean", "int": "Int64", "float": "float64", "text": "str"}


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


def frame(rows: list[dict[str, Any]], axes: list[str]) -> pd.DataFrame:
    """Row dicts (`experiment_id`, `_params`, `_backends`: {name: count}, and every
    metric of COLUMNS) -> the typed dataset, one row per dict, in their order."""
    columns: dict[str, pd.Series] = {RUN_ID.name: pd.Series([r[RUN_ID.name] for r in rows], dtype="str")}
    for name in _param_order(axes, rows):
        columns[name] = _param_series([r["_params"].get(name) for r in rows])
    for col in COLUMNS:
        columns[col.name] = pd.Series([r[col.name] for r in rows], dtype=_DTYPES[col.kind])
    names = sorted({b for r in rows for b in r["_backends"]}, key=natural_key)
    for name in names:
        columns[backend_column(name)] = pd.Series([r["_backends"].get(name) for r in rows], dtype="Int64")
    return pd.DataFrame(columns)


def empty_metrics(status: str, reason: str) -> dict[str, Any]:
    """A row's metrics before anything is known: NaN/NA/"" everywhere."""
    blank = {"float": math.nan, "int": None, "text": "", "bool_na": None, "bool": False}
    row: dict[str, Any] = {c.name: blank[c.kind] for c in COLUMNS}
    row.update(status=status, reason=reason)
    return row


# --------------------------------------------------------------------------
# Derived figures with one definition


def cost_per_million_samples(price_per_gpu_hour: Any, servers: Any, samples_per_s: Any) -> float:
    """Price of serving 1e6 samples at the measured speed with one GPU per
    server: price * servers / 3600 / samples_per_s * 1e6. NaN when the price,
    the server count or the speed is missing or not positive (price 0 is 0)."""
    n = as_int(servers)
    price, speed = finite(price_per_gpu_hour), finite(samples_per_s)
    if n is None or n < 1 or math.isnan(price) or price < 0 or math.isnan(speed) or speed <= 0:
        return math.nan
    return price * n / 3600.0 / speed * 1e6


BATCHING_OFF_LABEL = "off"


def batching_label(setting: Any) -> str:
    """The `batching` column: the setting's name, or off."""
    return str(setting.get("name")) if isinstance(setting, dict) and setting.get("name") else BATCHING_OFF_LABEL


def batching_metrics(setting: Any, server_batching: Any) -> dict[str, Any]:
    """The batching_* and server_batch* columns from an experiment's `batching` value and
    its summary's `server_batching` block (either may be missing)."""
    setting = setting if isinstance(setting, dict) else {}
    sizes = server_batching.get("batch_sizes") if isinstance(server_batching, dict) else None
    sizes = sizes if isinstance(sizes, dict) else {}
    return {"batching_max_batch_size": as_int(setting.get("max_batch_size")),
            "batching_timeout_us": as_int(setting.get("batch_timeout_us")),
            "batching_threads": as_int(setting.get("num_batch_threads")),
            "batching_max_enqueued": as_int(setting.get("max_enqueued_batches")),
            "server_batches": as_int(sizes.get("batches")),
            "server_batch_size_mean": finite(sizes.get("mean")),
            "server_batch_size_p50": finite(sizes.get("p50")),
            "server_batch_size_max": finite(sizes.get("max"))}


def finite(value: Any) -> float:
    """A finite float or NaN; None, NA, strings, bools and infinities become NaN."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return math.nan
    try:  # Python and numpy numbers
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def missing(value: Any) -> bool:
    """None, NA or NaN (what an unmeasured cell holds)."""
    if value is None or value is pd.NA:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def as_int(value: Any) -> int | None:
    number = finite(value)
    return int(number) if not math.isnan(number) and number.is_integer() else None


# --------------------------------------------------------------------------
# Files and the dictionary


def write_dataset(df: pd.DataFrame, sweep_dir: Path | str) -> tuple[Path, Path]:
    """Write `dataset.csv` and `dataset.parquet` (same frame, Parquet keeps the dtypes)."""
    paths = SweepPaths(Path(sweep_dir))
    atomic_write(paths.dataset_csv, lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(paths.dataset_parquet, lambda tmp: df.to_parquet(tmp, index=False))
    return paths.dataset_csv, paths.dataset_parquet


def dictionary_markdown() -> str:
    """The column dictionary as a Markdown table (name, unit, meaning), for the README."""
    lines = ["| column | unit | meaning |", "|---|---|---|"]
    for col in (RUN_ID, PARAM_DOC, *COLUMNS, BACKEND_DOC):
        lines.append(f"| `{col.name}` | {col.unit or '–'} | {col.meaning} |")
    return "\n".join(lines)
