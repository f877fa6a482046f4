"""Sweep directory -> the dataset: one row per experiment.

The job runner leaves one folder per experiment holding the resolved
`config.yaml` and, once the job finished, `results/summary.json`. `collect`
reads them into row dicts and `dataset.frame` types them (column list and
meanings: dataset.COLUMNS).

Rules that keep the numbers honest:
  * every experiment listed in sweep.json gets a row, finished or not;
  * an invalid run never carries a throughput (nor a cost, an energy or a
    client CPU per sample or request, which derive from its counts), even if
    its summary has one;
  * a figure that was not measured is NaN/NA, never 0;
  * YAML stays off the hot path: the price is parsed once per GPU type and
    the `measure:` block once per distinct text, so thousands of experiments
    read in about a second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from osmi_ee.ee.paths import ExperimentPaths, SweepPaths
from osmi_ee.osmi.schema import SUMMARY_SCHEMA

from .dataset import (
    FIXED_COLUMNS,
    as_int,
    batching_label,
    batching_metrics,
    cost_per_million_samples,
    empty_metrics,
    finite,
    frame,
    natural_key,
    text,
)

MISSING_REASON = "no result (job did not finish)"
CLOSED = "closed"  # the default scenario: the only one with a fixed concurrency

# Row status: why a row looks the way it does, beyond valid True/False (the same
# words as the experiment states in ee/outcome.py where they overlap).
STATUS_OK = "valid"
STATUS_INVALID = "invalid"
STATUS_MISSING = "missing"
STATUS_UNREADABLE = "unreadable"


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
    path = SweepPaths(sweep_dir).sweep
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


def _read_summary(paths: ExperimentPaths) -> tuple[dict[str, Any] | None, str | None]:
    """(summary, None), (None, None) when absent, (None, why) when unreadable."""
    try:
        with open(paths.summary, "rb") as fh:
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


def _yaml(source: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.load(source, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


class _Configs:
    """config.yaml facts for the whole sweep, parsing as little YAML as possible:
    the full file once per GPU type (for its price), the `measure:` block once per
    distinct text (generated configs of one grid share it)."""

    _MEASURE = re.compile(r"^measure:[ \t]*\n((?:[ \t]+.*(?:\n|$)|[ \t]*\n)*)", re.M)

    def __init__(self) -> None:
        self.prices: dict[Any, float] = {}
        self.measures: dict[str, dict[str, Any]] = {}

    def source(self, paths: ExperimentPaths) -> str:
        try:
            return paths.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return ""

    def measure(self, source: str) -> dict[str, Any]:
        match = self._MEASURE.search(source)
        if match is None:  # unusual layout: parse the whole file
            block = _yaml(source).get("measure")
            return dict(block) if isinstance(block, Mapping) else {}
        if match.group(0) not in self.measures:
            block = _yaml(match.group(0)).get("measure")
            self.measures[match.group(0)] = dict(block) if isinstance(block, Mapping) else {}
        return self.measures[match.group(0)]

    def price(self, source: str, config: dict[str, Any] | None, gpu: Any) -> float:
        key = gpu if isinstance(gpu, (str, int, float, bool)) or gpu is None else text(gpu)
        if key in self.prices:
            return self.prices[key]
        config = _yaml(source) if config is None else config
        price = _config_price(config, gpu)
        if config:  # an absent or unreadable config must not poison the cache
            self.prices[key] = price
        return price


def _config_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `experiment:` mapping of a config; {} when absent."""
    experiment = config.get("experiment")
    return dict(experiment) if isinstance(experiment, Mapping) else {}


def _config_price(config: Mapping[str, Any], gpu: Any) -> float:
    """`profile.gpus.<gpu>.price_per_gpu_hour`; NaN when absent, null or negative."""
    if gpu is None:
        gpu = _config_params(config).get("gpu")
    profile = config.get("profile")
    gpus = profile.get("gpus") if isinstance(profile, Mapping) else None
    entry = gpus.get(gpu) if isinstance(gpus, Mapping) and gpu is not None else None
    if not isinstance(entry, Mapping):
        return math.nan
    price = finite(entry.get("price_per_gpu_hour"))
    return price if price >= 0 else math.nan


# --------------------------------------------------------------------------
# One summary -> one flat row


def _mean(values: Iterable[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else math.nan


def _max(values: Iterable[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return max(known) if known else math.nan


def _entries(block: Any) -> list[Mapping[str, Any]]:
    if not isinstance(block, Mapping):
        return []
    return [v for v in block.values() if isinstance(v, Mapping)]


def _backends(backends: Any) -> tuple[dict[str, int], dict[str, Any]]:
    """({name: requests}, the share columns), backends in natural order."""
    counts: dict[str, int] = {}
    if isinstance(backends, Mapping):
        for name in sorted(backends, key=lambda n: natural_key(str(n))):
            entry = backends[name] if isinstance(backends[name], Mapping) else {}
            counts[str(name)] = as_int(entry.get("requests")) or 0
    total = sum(counts.values())
    shares = [n / total for n in counts.values()] if total else []
    return counts, {"backend_count": len(counts) or None,
                    "backend_share_min": min(shares) if shares else math.nan,
                    "backend_share_max": max(shares) if shares else math.nan}


def _telemetry(telemetry: Any) -> dict[str, float]:
    """Server CPU (mean over shards), RSS (max), GPU utilisation and power (mean
    over GPUs), energy per sample; NaN for whatever was not measured. A
    non-positive energy is a meter that did not run, not a free lunch."""
    telemetry = telemetry if isinstance(telemetry, Mapping) else {}
    servers = _entries(telemetry.get("servers"))
    gpus = _entries(telemetry.get("gpus"))
    energy = finite(telemetry.get("energy_j_per_sample"))
    return {
        "server_cpu_percent_mean": _mean(finite(s.get("cpu_percent_mean")) for s in servers),
        # psutil's RSS / 2**20: MiB, whatever the summary's key says
        "server_rss_mib_max": _max(finite(s.get("rss_mb_max")) for s in servers),
        "gpu_util_percent_mean": _mean(finite(g.get("util_percent_mean")) for g in gpus),
        "gpu_power_w_mean": _mean(finite(g.get("power_w_mean")) for g in gpus),
        "energy_j_per_sample": energy if energy > 0 else math.nan,
    }


def _client_cpu_us(clients: Any, ok: int | None) -> float:
    """Client CPU per ok request (µs): every client's `cpu_s_measured`, summed, / ok.
    NaN when any client lacks it (a partial sum would flatter the clients)."""
    entries = [c for c in clients if isinstance(c, Mapping)] if isinstance(clients, list) else []
    cpu = [finite(c.get("cpu_s_measured")) for c in entries]
    if not cpu or any(math.isnan(v) for v in cpu) or not ok:
        return math.nan
    return sum(cpu) / ok * 1e6


def _client_streams(clients: Any) -> int | None:
    """The streams every client was told to keep in flight, when they agree."""
    entries = [c for c in clients if isinstance(c, Mapping)] if isinstance(clients, list) else []
    values = {as_int(c.get("streams")) for c in entries}
    return values.pop() if len(values) == 1 else None


def _summary_metrics(summary: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    valid = summary.get("valid") is True
    reasons = [str(r) for r in summary.get("reasons") or []]
    reason = "" if valid else ("; ".join(reasons) or "invalid (no reason given)")
    row = empty_metrics(STATUS_OK if valid else STATUS_INVALID, reason)
    row["valid"] = valid

    throughput = summary.get("throughput") or {}
    requests = summary.get("requests") or {}
    for key in ("sent", "ok", "failed"):
        row[key] = as_int(requests.get(key))
    if valid:  # never report an invalid run as a speed, nor anything per request of it
        row["samples_per_s"] = finite(throughput.get("samples_per_s"))
        row["requests_per_s"] = finite(throughput.get("requests_per_s"))
        interval = throughput.get("samples_per_s_ci95") or [None, None]
        row["samples_per_s_ci95_low"], row["samples_per_s_ci95_high"] = finite(interval[0]), finite(interval[1])
        row["client_cpu_us_per_request"] = _client_cpu_us(summary.get("clients"), row["ok"])
    row["samples_ok"] = as_int(summary.get("samples_ok"))
    entries = [c for c in summary.get("clients") or [] if isinstance(c, Mapping)]
    shares = [finite(c.get("cpu_share")) for c in entries if c.get("cpu_share") is not None]
    row["client_cpu_share_max"] = max(shares) if shares else math.nan
    row["client_processes"] = len(entries) or None
    row["balanced_by"] = str((summary.get("params") or {}).get("balancer") or "haproxy")
    row["window_s"] = finite(summary.get("window_s"))
    latency = summary.get("latency_ms") or {}
    for key in ("p50", "p90", "p99", "mean", "max"):
        row[f"latency_{key}_ms"] = finite(latency.get(key))

    counts, shares = _backends(summary.get("backends"))
    row.update(shares)
    for key in ("server_kind", "server_version", "started_at", "finished_at"):
        value = summary.get(key)
        row[key] = "" if value is None else str(value)
    row["attempt"] = as_int((summary.get("attempt") or {}).get("number"))
    measurement = summary.get("measurement") if isinstance(summary.get("measurement"), Mapping) else {}
    row["stability_spread"] = finite(measurement.get("spread"))
    row["stable"] = measurement.get("stable") if isinstance(measurement.get("stable"), bool) else None
    row["balancer_forwarded"] = as_int((summary.get("accounting") or {}).get("balancer_forwarded"))
    arrival = summary.get("arrival") if isinstance(summary.get("arrival"), Mapping) else {}
    row["target_rate"] = finite(arrival.get("target_rate"))
    row["achieved_rate"] = finite(arrival.get("achieved_rate"))
    row["streams"] = _client_streams(summary.get("clients"))
    row.update(_telemetry(summary.get("telemetry")))
    if not valid:  # a per-sample figure of an invalid run is a speed in disguise
        row["energy_j_per_sample"] = math.nan
    return row, counts


def _concurrency(params: Mapping[str, Any], streams: int | None) -> int | None:
    """clients × streams in a closed loop; open-loop load has no fixed concurrency."""
    clients = as_int(params.get("clients"))
    closed = str(params.get("scenario") or CLOSED) == CLOSED
    return clients * streams if closed and clients is not None and streams is not None else None


def _experiment_row(sweep_dir: Path, exp_id: str, axes: list[str], configs: _Configs) -> dict[str, Any]:
    paths = ExperimentPaths(sweep_dir / exp_id)
    summary, problem = _read_summary(paths)
    counts: dict[str, int] = {}
    if summary is not None:
        metrics, counts = _summary_metrics(summary)
        params = summary.get("params") if isinstance(summary.get("params"), Mapping) else {}
    else:
        status, reason = (STATUS_UNREADABLE, problem) if problem else (STATUS_MISSING, MISSING_REASON)
        metrics, params = empty_metrics(status, reason), {}
    source = configs.source(paths)
    config: dict[str, Any] | None = None
    if any(axis not in params for axis in axes):
        config = _yaml(source)
        params = {**_config_params(config), **params}
    if "batching" in axes or "batching" in params:  # settings as columns, the name as the axis value
        setting = params.get("batching")
        metrics.update(batching_metrics(setting, (summary or {}).get("server_batching")))
        params = {**params, "batching": batching_label(setting)}
    measure = configs.measure(source)
    # The config says what the clients were told; their own summaries say it too.
    metrics["streams"] = as_int(measure.get("streams")) or metrics["streams"]
    metrics["concurrency"] = _concurrency(params, metrics["streams"])
    metrics["min_backend_share"] = finite(measure.get("min_backend_share"))
    price = configs.price(source, config, params.get("gpu"))
    metrics["price_per_gpu_hour"] = price
    metrics["cost_per_million_samples"] = cost_per_million_samples(
        price, params.get("servers"), metrics["samples_per_s"])
    # Param names that clash with metric columns must not overwrite the metrics.
    params = {str(k): v for k, v in params.items() if str(k) not in FIXED_COLUMNS}
    return {"experiment_id": exp_id, "_params": params, "_backends": counts, **metrics}


def collect(sweep_dir: Path | str) -> pd.DataFrame:
    """One row per experiment listed in `<sweep_dir>/sweep.json`, in that order.

    Raises SweepError when the directory or sweep.json is missing or unreadable.
    """
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep(sweep_dir)
    configs = _Configs()
    rows = [_experiment_row(sweep_dir, exp_id, sweep["axes"], configs) for exp_id in sweep["experiments"]]
    return frame(rows, sweep["axes"])
