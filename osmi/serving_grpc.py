"""osmi-model-server's gRPC side: the PredictionService and ModelService servicers
(status codes instead of exceptions, undecodable requests answered INVALID_ARGUMENT),
the Prometheus request counter of Predict calls, and `start_grpc`, which binds the
port with grpc.health.v1 saying NOT_SERVING until the models are loaded.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from osmi_ee.osmi.schema import MAX_MESSAGE_BYTES
from osmi_ee.osmi.server_metrics import format_request_counts
from osmi_ee.osmi.serving_checks import (Limits, check_batch, check_payload, declared_shape, fill_tensor_proto,
                                         tensor_proto_to_ndarray)
from osmi_ee.osmi.serving_batcher import Batcher
from osmi_ee.osmi.serving_models import DEFAULT_SIGNATURE, ModelRegistry, ServingError, StartupError

log = logging.getLogger("osmi-model-server")


# --------------------------------------------------------------------------- counters


class RequestCounter:
    """TF-Serving's /tensorflow/serving/request_count: Predict calls by (model_name, status), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self.pages: list[Any] = []  # more metrics on the same page, e.g. the batcher's BatchSizes

    def record(self, model_name: str, code: grpc.StatusCode) -> None:
        key = (model_name, code.name)  # "OK", "INVALID_ARGUMENT", ...: TF-Serving's error::Code_Name
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def prometheus_page(self) -> str:
        return format_request_counts(self.snapshot()) + "".join(page.prometheus_page() for page in self.pages)


# --------------------------------------------------------------------------- gRPC


@dataclass
class _Undecodable:
    """What the lenient deserializer hands the servicer for bytes that are not the request message."""

    error: str


def _lenient(parse: Any) -> Any:
    """A request deserializer that never fails: grpcio answers a failing one with INTERNAL
    ("Exception deserializing request!"); the servicer answers _Undecodable with INVALID_ARGUMENT."""
    from google.protobuf.message import DecodeError

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(f"{exc}" or "DecodeError")

    return deserialize


def _call(name: str, body: Any, request: Any) -> tuple[Any, ServingError | None]:
    """Run a handler body; (response, None) or (None, the error the client gets)."""
    try:
        if isinstance(request, _Undecodable):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the request message: {request.error}")
        return body(), None
    except ServingError as exc:
        return None, exc
    except MemoryError:  # a request too big for this host must not take the server down
        log.error("%s: out of memory; answered RESOURCE_EXHAUSTED", name)
        return None, ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory serving this request")
    except Exception as exc:  # a bug must still answer the client, not hang it
        log.exception("%s failed", name)
        return None, ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _grpc_method(method: Any) -> Any:
    """Turn ServingError (and surprises) into gRPC status codes."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        response, error = _call(method.__name__, lambda: method(self, request), request)
        if error is None:
            return response
        context.abort(error.code, error.message)

    wrapper.__name__ = method.__name__
    return wrapper


def _unimplemented(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by osmi-model-server")


class PredictionServicer:
    """tensorflow.serving.PredictionService (registered by _add_service with lenient deserializers)."""

    def __init__(self, registry: ModelRegistry, limits: Limits = Limits(),
                 counter: RequestCounter | None = None, batcher: Batcher | None = None) -> None:
        self.registry = registry
        self.limits = limits
        self.counter = counter if counter is not None else RequestCounter()
        self.batcher = batcher  # --enable_batching: merge concurrent requests

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        response, error = _call("Predict", lambda: self._predict(request), request)
        # Counted before the reply leaves, like TF-Serving: a client that got N answers reads >= N.
        model_name = "" if isinstance(request, _Undecodable) else request.model_spec.name
        self.counter.record(model_name, grpc.StatusCode.OK if error is None else error.code)
        if error is None:
            return response
        context.abort(error.code, error.message)

    def _predict(self, request: Any) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        model = self.registry.get(request.model_spec)
        sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = model.signature(sig_name)
        sig.check_keys(request.inputs)
        checked = {}
        for key, proto in request.inputs.items():  # every input checked before any is decoded
            try:
                dtype = tf.dtypes.as_dtype(proto.dtype)
            except TypeError:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: invalid dtype {proto.dtype}")
            shape = declared_shape(key, proto)
            sig.check_input(key, dtype, shape)
            check_payload(key, proto, dtype, shape)
            check_batch(key, shape, self.limits.max_batch)
            checked[key] = (proto, dtype, shape)
        arrays = {}
        for key, (proto, dtype, shape) in checked.items():
            try:
                arrays[key] = tensor_proto_to_ndarray(proto, dtype, shape)
            except (ValueError, TypeError) as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: {exc}") from None
        if self.batcher is None:
            outputs = sig.run(arrays, list(request.output_filter))
        else:
            outputs = self._run_batched(model, sig_name, sig, arrays, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = sig_name
        for key, tensor in outputs.items():
            fill_tensor_proto(response.outputs[key], tensor)
        return response

    def _run_batched(self, model: Any, sig_name: str, sig: Any, arrays: dict[str, Any],
                     output_filter: list[str]) -> dict[str, Any]:
        """The outputs of this request, computed in a batch with whatever else came at once."""
        import tensorflow as tf

        # Only requests that can be concatenated and give the same outputs share a batch.
        key = (model.name, model.version, sig_name, tuple(output_filter),
               tuple((k, a.dtype.str, a.shape[1:]) for k, a in sorted(arrays.items())))

        def run(merged: dict[str, Any]) -> dict[str, Any]:
            return {k: v.numpy() for k, v in sig.run(merged, output_filter).items()}

        outputs = self.batcher.run(key, arrays, run)
        return {k: tf.convert_to_tensor(v) for k, v in outputs.items()}

    @_grpc_method
    def GetModelMetadata(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        model = self.registry.get(request.model_spec)
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(model.signature_defs)
        return response

    Classify = _unimplemented
    Regress = _unimplemented
    MultiInference = _unimplemented


class ModelServicer:
    """tensorflow.serving.ModelService: status only; no config reloads."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @_grpc_method
    def GetModelStatus(self, request: Any) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        model = self.registry.get(request.model_spec)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = model.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response

    HandleReloadConfigRequest = _unimplemented


def _add_service(server: grpc.Server, servicer: Any, service: Any) -> None:
    """Register `servicer` for a generated service descriptor, like the generated add_*_to_server,
    but with lenient request deserializers (see _lenient)."""
    from google.protobuf import message_factory

    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=_lenient(request_class.FromString),
            response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def start_grpc(registry: ModelRegistry, host: str, port: int, max_threads: int, limits: Limits = Limits(),
               counter: RequestCounter | None = None,
               batcher: Batcher | None = None) -> tuple[grpc.Server, int, Any]:
    """Bind and start the gRPC server; returns (server, bound port, health servicer)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        # gRPC itself answers RESOURCE_EXHAUSTED for a larger request, before any of our code runs.
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", limits.max_message_bytes),
                 ("grpc.so_reuseport", 0)])  # a port already in use must fail, not be shared
    _add_service(server, PredictionServicer(registry, limits, counter, batcher),
                 prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"])
    _add_service(server, ModelServicer(registry), model_service_pb2.DESCRIPTOR.services_by_name["ModelService"])
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # recent grpcio raises instead of returning 0
        raise StartupError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise StartupError(f"cannot listen on {address}")
    server.start()
    return server, bound, health_servicer

