"""TF-Serving's served-request counter, as its Prometheus page shows it.

`tensorflow_model_server --monitoring_config_file=<f>` (and `osmi-model-server`
with the same flag) serves Prometheus text on its REST port at the configured
path. One counter there is the ground truth for "how many Predict calls did this
server answer": `:tensorflow:serving:request_count{model_name="...",status="..."}`
(TF-Serving's `/tensorflow/serving/request_count`, labels `model_name` and
`status`; status is the status code name, "OK" on success). TF-Serving counts
gRPC Predict calls only, not REST ones.

This module writes the config file, formats and parses that page, and reads it
over HTTP. It imports neither TensorFlow nor gRPC, so runners and analysis code
can use it cheaply.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

MONITORING_PATH = "/monitoring/prometheus/metrics"  # TF-Serving's PrometheusExporter::kPrometheusPath
REQUEST_COUNT_METRIC = ":tensorflow:serving:request_count"  # "/tensorflow/serving/request_count", '/' -> ':'
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def monitoring_config_text(path: str = MONITORING_PATH) -> str:
    """The text-format MonitoringConfig that turns the Prometheus page on at `path`."""
    return f'prometheus_config {{\n  enable: true,\n  path: "{_escape(path)}"\n}}\n'


def parse_monitoring_config(text: str) -> tuple[bool, str]:
    """(enabled, path) from a text-format MonitoringConfig; ValueError if it does not parse.

    Parsed with protobuf's own text-format parser against the same two messages as
    TF-Serving's monitoring_config.proto (which tensorflow-serving-api does not ship),
    so comments, separators and escapes mean what they mean to the real binary.
    An empty path means TF-Serving's default path.
    """
    from google.protobuf import text_format

    config = _monitoring_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(str(exc)) from None
    prometheus = config.prometheus_config
    return prometheus.enable, prometheus.path or MONITORING_PATH


def format_request_counts(counts: Mapping[tuple[str, str], int]) -> str:
    """The page TF-Serving's PrometheusExporter writes for the counter: (model_name, status) -> count."""
    lines = [f"# TYPE {REQUEST_COUNT_METRIC} counter"]
    for (model, status), count in sorted(counts.items()):
        lines.append(f'{REQUEST_COUNT_METRIC}{{model_name="{_escape(model)}",status="{_escape(status)}"}} {count}')
    return "\n".join(lines) + "\n"


def parse_request_counts_by_status(text: str) -> dict[tuple[str, str], int]:
    """(model_name, status) -> count from a Prometheus page; other metrics are ignored."""
    counts: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None or match["name"] != REQUEST_COUNT_METRIC:
            continue  # comments, blank lines, other metrics
        labels = _parse_labels(match["labels"] or "")
        key = (labels.get("model_name", ""), labels.get("status", ""))
        counts[key] = counts.get(key, 0) + int(float(match["value"]))
    return counts


def parse_request_counts(text: str) -> dict[str, int]:
    """model_name -> Predict calls answered, over all statuses."""
    totals: dict[str, int] = {}
    for (model, _), count in parse_request_counts_by_status(text).items():
        totals[model] = totals.get(model, 0) + count
    return totals


def read_request_counts(host: str, port: int, timeout_s: float = 5, path: str = MONITORING_PATH) -> dict[str, int]:
    """GET the Prometheus page of a server's REST port: model_name -> count (all statuses).

    Raises OSError naming the URL when the page cannot be read (server down,
    monitoring not enabled: 404, timeout).
    """
    address = f"[{host}]" if ":" in host else host
    url = f"http://{address}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        raise OSError(f"cannot read request counts from {url}: {exc}") from exc
    return parse_request_counts(text)


# --------------------------------------------------------------------------- batch sizes

# TF-Serving's --enable_batching (BatchingSession) records every batch it runs in the
# histogram /tensorflow/serving/batching_session/processed_batch_size (no labels;
# buckets 1, 2, 4, ... 8192). osmi-model-server's batching queue exports the same
# name with a bucket per integer up to its max_batch_size, so its sizes are exact.
PROCESSED_BATCH_SIZE_METRIC = ":tensorflow:serving:batching_session:processed_batch_size"


def format_histogram(name: str, counts: Mapping[int, int], bounds: list[int]) -> str:
    """A Prometheus histogram of integer observations: `counts` (value -> times seen)
    in cumulative buckets with upper bounds `bounds` (ascending), then +Inf, sum, count."""
    lines, cumulative = [f"# TYPE {name} histogram"], 0
    values = sorted(counts)
    i = 0
    for bound in bounds:
        while i < len(values) and values[i] <= bound:
            cumulative += counts[values[i]]
            i += 1
        lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
    total = sum(counts.values())
    lines.append(f'{name}_bucket{{le="+Inf"}} {total}')
    lines.append(f"{name}_sum {sum(v * c for v, c in counts.items())}")
    lines.append(f"{name}_count {total}")
    return "\n".join(lines) + "\n"


def parse_histogram(text: str, name: str) -> dict[str, Any] | None:
    """{"buckets": {upper bound: cumulative count} (+Inf as inf), "sum", "count"} of the
    histogram `name` in a Prometheus page, summed over label sets; None if absent."""
    buckets: dict[float, float] = {}
    total = {"sum": 0.0, "count": 0.0}
    seen = False
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match is None or not match["name"].startswith(name):
            continue
        suffix = match["name"][len(name):]
        if suffix == "_bucket":
            labels = _parse_labels(match["labels"] or "")
            bound = float(labels.get("le", "+Inf"))
            buckets[bound] = buckets.get(bound, 0.0) + float(match["value"])
        elif suffix in ("_sum", "_count"):
            total[suffix[1:]] += float(match["value"])
        else:
            continue
        seen = True
    if not seen:
        return None
    return {"buckets": dict(sorted(buckets.items())), "sum": total["sum"], "count": total["count"]}


def histogram_difference(after: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What was observed between two readings of one histogram (None: unreadable)."""
    if after is None:
        return None
    if before is None:
        before = {"buckets": {}, "sum": 0.0, "count": 0.0}
    return {"buckets": {b: c - before["buckets"].get(b, 0.0) for b, c in after["buckets"].items()},
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


def batch_size_summary(histograms: list[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The server-side batch sizes of one window, all shards together: batches, mean,
    p50 and max (each the upper bound of its bucket: exact for osmi-model-server),
    and batches per bucket. None when no shard reported the histogram."""
    present = [h for h in histograms if h is not None]
    if not present:
        return None
    cumulative: dict[float, float] = {}
    for h in present:
        for bound, count in h["buckets"].items():
            cumulative[bound] = cumulative.get(bound, 0.0) + count
    batches = sum(h["count"] for h in present)
    total = sum(h["sum"] for h in present)
    per_bucket, previous = {}, 0.0
    for bound, count in sorted(cumulative.items()):
        if count - previous > 0:
            per_bucket[_bound_text(bound)] = int(round(count - previous))
        previous = count
    if batches <= 0:
        return {"batches": 0, "mean": None, "p50": None, "max": None, "per_bucket": {}}
    p50 = next(b for b, c in sorted(cumulative.items()) if c >= batches / 2)
    largest = max(b for b, c in sorted(cumulative.items()) if c - _below(cumulative, b) > 0)
    return {"batches": int(round(batches)), "mean": total / batches, "p50": _number(p50),
            "max": _number(largest), "per_bucket": per_bucket}


def _below(cumulative: Mapping[float, float], bound: float) -> float:
    lower = [c for b, c in cumulative.items() if b < bound]
    return max(lower) if lower else 0.0


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


def _number(bound: float) -> float | None:
    return None if bound == float("inf") else bound


def read_page(host: str, port: int, timeout_s: float = 5, path: str = MONITORING_PATH) -> str:
    """The Prometheus page of a server's REST port; OSError naming the URL if unreadable."""
    address = f"[{host}]" if ":" in host else host
    url = f"http://{address}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        raise OSError(f"cannot read {url}: {exc}") from exc


def read_batch_sizes(host: str, port: int, timeout_s: float = 5) -> dict[str, Any] | None:
    """A shard's processed-batch-size histogram; None when it has none or cannot be read."""
    try:
        return parse_histogram(read_page(host, port, timeout_s), PROCESSED_BATCH_SIZE_METRIC)
    except (OSError, ValueError):
        return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _parse_labels(text: str) -> dict[str, str]:
    labels, pos = {}, 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            raise ValueError(f"malformed Prometheus labels: {{{text}}}")
        labels[match[1]] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m[0]], match[2])
        pos = match.end()
    return labels


_MONITORING_CONFIG: type | None = None


def _monitoring_config_class() -> type:
    """tensorflow.serving.MonitoringConfig, built from its two-message schema in a private pool."""
    global _MONITORING_CONFIG
    if _MONITORING_CONFIG is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        proto = descriptor_pb2.FileDescriptorProto(
            name="osmi_monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
        FieldProto = descriptor_pb2.FieldDescriptorProto
        prometheus = proto.message_type.add(name="PrometheusConfig")
        prometheus.field.add(name="enable", number=1, type=FieldProto.TYPE_BOOL, label=FieldProto.LABEL_OPTIONAL)
        prometheus.field.add(name="path", number=2, type=FieldProto.TYPE_STRING, label=FieldProto.LABEL_OPTIONAL)
        config = proto.message_type.add(name="MonitoringConfig")
        config.field.add(name="prometheus_config", number=1, type=FieldProto.TYPE_MESSAGE,
                         label=FieldProto.LABEL_OPTIONAL, type_name=".tensorflow.serving.PrometheusConfig")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _MONITORING_CONFIG = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
    return _MONITORING_CONFIG
