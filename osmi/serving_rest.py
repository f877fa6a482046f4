"""osmi-model-server's REST side: TF-Serving's REST API for the two calls benchmarks
use (model status and predict), the request body bounded by `--max_message_bytes`
before a byte is read, and, with `--monitoring_config_file`, TF-Serving's Prometheus
page (request counts) at the configured path.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from osmi_ee.osmi.server_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from osmi_ee.osmi.server_metrics import parse_monitoring_config
from osmi_ee.osmi.serving_checks import Limits, check_batch
from osmi_ee.osmi.serving_grpc import RequestCounter
from osmi_ee.osmi.serving_models import DEFAULT_SIGNATURE, LoadedModel, ModelRegistry, ServingError, StartupError

log = logging.getLogger("osmi-model-server")

_HTTP_CODES = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
               grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.UNIMPLEMENTED: 501,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429}  # TF-Serving's REST mapping


@dataclass(frozen=True)
class Monitoring:
    enabled: bool = False
    path: str = ""


def load_monitoring_config(path: str) -> Monitoring:
    """The --monitoring_config_file's Prometheus settings; StartupError naming the file if unreadable."""
    if not path:
        return Monitoring()
    try:
        enabled, page = parse_monitoring_config(Path(path).read_text())
    except OSError as exc:
        raise StartupError(f"cannot read monitoring config file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StartupError(f"malformed monitoring config file {path}: {exc}") from None
    if enabled and not page.startswith("/"):
        raise StartupError(f"monitoring config file {path}: prometheus_config.path must start with '/', got {page!r}")
    return Monitoring(enabled, page)


# --------------------------------------------------------------------------- REST


class _RestHandler(BaseHTTPRequestHandler):
    """TF-Serving's REST API, the two calls benchmarks use (model status and predict),
    and its Prometheus page when monitoring is enabled."""

    # Set on the subclass made in start_rest.
    registry: ModelRegistry
    limits: Limits
    counter: RequestCounter
    monitoring: Monitoring

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("rest: " + format, *args)

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, verb: str | None) -> tuple[LoadedModel, str | None]:
        from tensorflow_serving.apis import model_pb2

        path = self.path.split("?", 1)[0]
        action = None
        if ":" in path.rsplit("/", 1)[-1]:
            path, action = path.rsplit(":", 1)
        parts = path.strip("/").split("/")
        if not (len(parts) in (3, 5) and parts[:2] == ["v1", "models"] and (len(parts) == 3 or parts[3] == "versions")):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such resource {self.path}")
        if action != verb:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"unsupported call {self.command} {self.path}")
        spec = model_pb2.ModelSpec(name=parts[2])
        if len(parts) == 5:
            if not parts[4].isdigit():
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"bad version {parts[4]!r}")
            spec.version.value = int(parts[4])
        return self.registry.get(spec), action

    def _handle(self, verb: str | None) -> None:
        try:
            model, _ = self._route(verb)
            if verb is None:
                self._reply(200, {"model_version_status": [{
                    "version": str(model.version), "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""}}]})
            else:
                length = int(self.headers.get("Content-Length", 0))
                if length > self.limits.max_message_bytes:  # refused before reading a byte of it
                    self.close_connection = True
                    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request body of {length} bytes exceeds the server's limit "
                                       f"--max_message_bytes={self.limits.max_message_bytes}")
                self._reply(200, self._predict(model, json.loads(self.rfile.read(length) or b"{}"), self.limits))
        except ServingError as exc:
            self._reply(_HTTP_CODES.get(exc.code, 500), {"error": exc.message})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # malformed JSON or instances
            self._reply(400, {"error": f"{type(exc).__name__}: {exc}"})
        except MemoryError:
            log.error("REST predict: out of memory; answered 429")
            self._reply(429, {"error": "out of memory serving this request"})

    def _metrics(self) -> None:
        data = self.counter.prometheus_page().encode()
        self.send_response(200)
        self.send_header("Content-Type", METRICS_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.monitoring.enabled and self.path.split("?", 1)[0] == self.monitoring.path:
            self._metrics()
            return
        self._handle(None)

    def do_POST(self) -> None:
        self._handle("predict")

    @staticmethod
    def _predict(model: LoadedModel, body: dict[str, Any], limits: Limits) -> dict[str, Any]:
        sig = model.signature(body.get("signature_name", DEFAULT_SIGNATURE))
        only = next(iter(sig.inputs)) if len(sig.inputs) == 1 else None
        row_format = "instances" in body
        if row_format:
            rows = body["instances"]
            if rows and all(isinstance(row, dict) for row in rows):
                columns = {key: [row[key] for row in rows] for key in rows[0]}
            else:
                columns = {only: rows}
        elif "inputs" in body:
            columns = body["inputs"] if isinstance(body["inputs"], dict) else {only: body["inputs"]}
        else:
            raise ValueError('request body needs "instances" or "inputs"')
        sig.check_keys(columns)
        arrays = {}
        for key, value in columns.items():
            if isinstance(value, list):  # the JSON is already in memory; the batch bounds the model's work
                check_batch(key, [len(value)], limits.max_batch)
            arrays[key] = np.asarray(value, dtype=sig.inputs[key].dtype.as_numpy_dtype)
            sig.check_input(key, sig.inputs[key].dtype, arrays[key].shape)
        outputs = {key: tensor.numpy() for key, tensor in sig.run(arrays, body.get("output_filter", ())).items()}
        if not row_format:
            return {"outputs": next(iter(outputs.values())).tolist() if len(outputs) == 1
                    else {key: value.tolist() for key, value in outputs.items()}}
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values())).tolist()}
        batch = len(next(iter(outputs.values())))
        return {"predictions": [{key: value[i].tolist() for key, value in outputs.items()} for i in range(batch)]}


def start_rest(registry: ModelRegistry, host: str, port: int, limits: Limits = Limits(),
               counter: RequestCounter | None = None, monitoring: Monitoring = Monitoring()) -> ThreadingHTTPServer:
    handler = type("RestHandler", (_RestHandler,), {
        "registry": registry, "limits": limits, "counter": counter if counter is not None else RequestCounter(),
        "monitoring": monitoring})
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port} for REST: {exc.strerror}") from None
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="rest", daemon=True).start()
    return httpd

