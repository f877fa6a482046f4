"""`osmi-model-server`: a TensorFlow-Serving-compatible gRPC model server.

The real `tensorflow_model_server` binary is not available everywhere, so this
serves SavedModels over the same gRPC API (the generated stubs of
`tensorflow_serving.apis`), with the same flags, so clients and job scripts
cannot tell the difference for Predict, GetModelMetadata, GetModelStatus and
grpc.health.v1. A minimal REST API is served when `--rest_api_port` > 0, and with
`--monitoring_config_file` TF-Serving's Prometheus page (request counts) on it.

Abuse is refused before it costs anything: it binds loopback unless told
otherwise, gRPC refuses messages over `--max_message_bytes`, and every input's
declared element count is checked against the values actually sent and against
`--max_batch` before anything is allocated.

Start-up order: flags and model config are checked before TensorFlow is
imported (bad input fails in well under a second), then the gRPC port is bound
and written to `--port_file` (health says NOT_SERVING), then the models are
loaded and warmed, then health says SERVING.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import prod
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from osmi_ee.osmi.server_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from osmi_ee.osmi.server_metrics import format_request_counts, parse_monitoring_config
from osmi_ee.osmi.extras import MissingExtra, require_serve
from osmi_ee.osmi.schema import MAX_MESSAGE_BYTES, SERVER_MAX_BATCH

log = logging.getLogger("osmi-model-server")

DEFAULT_SIGNATURE = "serving_default"
# The payload is bounded by --max_message_bytes; --max_batch bounds what one request makes
# the model compute: activations and outputs grow with the batch (large_tcnn's input alone
# is 0.9 MB per sample). Both defaults live with the model specs (one home).
DEFAULT_MAX_BATCH = SERVER_MAX_BATCH
MAX_RANK = 254  # TensorShape's own limit: more dims than this is never a real tensor
DEFAULT_BIND_HOST = "127.0.0.1"  # an unauthenticated server must be opened to the network on purpose
GRACE_SECONDS = 5.0

# tf.errors codes are the gRPC status codes by number.
_GRPC_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_HTTP_CODES = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
               grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.UNIMPLEMENTED: 501,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 429}  # TF-Serving's REST mapping


class ServingError(Exception):
    """A request error with the gRPC status it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StartupError(Exception):
    """A start-up failure: logged without traceback, exit code 1."""


class _Stop(BaseException):
    """Raised by the signal handler while still loading (not an Exception, so no
    `except Exception` on the way turns a shutdown into a start-up error)."""


# --------------------------------------------------------------------------- flags


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    # allow_abbrev=False: the real binary rejects flag prefixes, so do we.
    parser = argparse.ArgumentParser(
        prog="osmi-model-server", allow_abbrev=False,
        description="TensorFlow-Serving-compatible gRPC model server (tensorflow_model_server flags).")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0 picks a free port)")
    parser.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 disables REST")
    parser.add_argument("--model_config_file", default="", help="text-format ModelServerConfig")
    parser.add_argument("--model_name", default=None, help="single-model form: model name (default 'default')")
    parser.add_argument("--model_base_path", default="", help="single-model form: folder of version folders")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, help="0 = TensorFlow's default")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, help="0 = TensorFlow's default")
    parser.add_argument("--grpc_max_threads", type=int, default=16, help="gRPC worker threads (ours)")
    parser.add_argument("--grpc_bind_host", default=DEFAULT_BIND_HOST,
                        help="address gRPC and REST listen on (ours; default loopback only, "
                             "give 0.0.0.0 or a node address to serve other hosts)")
    parser.add_argument("--port_file", default="", help="write the bound gRPC port here, atomically (ours)")
    parser.add_argument("--max_message_bytes", type=int, default=MAX_MESSAGE_BYTES,
                        help="largest request accepted, in bytes, gRPC message or REST body; larger ones get "
                             f"RESOURCE_EXHAUSTED (ours; default {MAX_MESSAGE_BYTES}, gRPC's ceiling)")
    parser.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="largest batch (first dimension of an input) one request may carry; larger ones get "
                             f"RESOURCE_EXHAUSTED (ours; default {DEFAULT_MAX_BATCH}, twice the largest batch of the "
                             "shipped grids: the payload is bounded by --max_message_bytes, this bounds the "
                             "activations and outputs one request makes the model compute)")
    parser.add_argument("--monitoring_config_file", default="",
                        help="text-format MonitoringConfig; with prometheus_config { enable: true } the Prometheus "
                             "metrics (request counts) are served at its path on the REST port")
    args = parser.parse_args(argv)
    if bool(args.model_config_file) == bool(args.model_base_path or args.model_name):
        parser.error("give either --model_config_file or --model_name/--model_base_path, not both or neither")
    if not args.model_config_file and not args.model_base_path:
        parser.error("--model_base_path is required with --model_name")
    if args.model_name is None:
        args.model_name = "default"  # tensorflow_model_server's default
    if args.port < 0 or args.rest_api_port < 0 or args.grpc_max_threads < 1:
        parser.error("ports must be >= 0 and --grpc_max_threads >= 1")
    if not 1 <= args.max_message_bytes <= MAX_MESSAGE_BYTES:
        parser.error(f"--max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES}")
    if args.max_batch < 1:
        parser.error("--max_batch must be >= 1")
    return args


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


def _model_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Model name -> base path, from whichever form the flags used."""
    if not args.model_base_path:
        from osmi_ee.osmi.model_config import load_model_config

        try:
            return load_model_config(args.model_config_file)
        except OSError as exc:
            raise StartupError(f"cannot read model config file {args.model_config_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    return {args.model_name: Path(args.model_base_path)}


def latest_version(name: str, base_path: Path) -> tuple[int, Path]:
    """The highest numeric version folder under base_path (TF-Serving's default policy)."""
    if not base_path.is_dir():
        raise StartupError(f"model {name!r}: base path {base_path} is not a directory")
    versions = [(int(p.name), p) for p in base_path.iterdir() if p.name.isdigit() and p.is_dir()]
    if not versions:
        raise StartupError(f"model {name!r}: no numeric version folder under {base_path}")
    return max(versions)


# --------------------------------------------------------------------------- models


@dataclass
class Signature:
    fn: Any  # a ConcreteFunction taking keyword tensors, returning a dict
    inputs: dict[str, Any]  # input key -> tf.TensorSpec
    outputs: dict[str, Any]  # output key -> tf.TensorSpec

    def check_input(self, name: str, dtype: Any, shape: Sequence[int]) -> None:
        """INVALID_ARGUMENT unless dtype and shape fit the TensorSpec (None dims free)."""
        spec = self.inputs[name]
        if dtype != spec.dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: expected dtype {_dtype_name(spec.dtype)}, got {_dtype_name(dtype)}")
        expected = spec.shape
        if expected.rank is not None and (
                len(shape) != expected.rank
                or any(want is not None and want != got for want, got in zip(expected.as_list(), shape))):
            want = "[" + ", ".join("?" if d is None else str(d) for d in expected.as_list()) + "]"
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: expected shape {want} (? = any size), got {list(shape)}")

    def check_keys(self, keys: Iterable[str]) -> None:
        keys = set(keys)
        if keys != set(self.inputs):
            extra, missing = sorted(keys - set(self.inputs)), sorted(set(self.inputs) - keys)
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"inputs do not match the signature (expects {sorted(self.inputs)}): "
                               f"unknown {extra}, missing {missing}")

    def run(self, arrays: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()) -> dict[str, Any]:
        """Call the signature; returns output key -> tf.Tensor (filtered)."""
        import tensorflow as tf

        unknown = [key for key in output_filter if key not in self.outputs]
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output_filter names unknown outputs {unknown}; outputs are {sorted(self.outputs)}")
        try:
            result = self.fn(**{key: tf.convert_to_tensor(value) for key, value in arrays.items()})
        except tf.errors.OpError as exc:
            raise ServingError(_GRPC_CODES.get(exc.error_code, grpc.StatusCode.INTERNAL), exc.message) from None
        return {key: result[key] for key in (output_filter or result)}


@dataclass
class LoadedModel:
    name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    signature_defs: Any  # tensorflow.serving.SignatureDefMap, for GetModelMetadata
    obj: Any  # the loaded SavedModel: keeps the variables the functions capture alive

    def signature(self, name: str) -> Signature:
        try:
            return self.signatures[name or DEFAULT_SIGNATURE]
        except KeyError:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"model {self.name!r} has no signature {name!r}; "
                               f"signatures: {sorted(self.signatures)}") from None


def _dtype_name(dtype: Any) -> str:
    """E.g. 'DT_DOUBLE (float64)': the proto enum clients set, and the numpy name."""
    from tensorflow.core.framework import types_pb2

    return f"{types_pb2.DataType.Name(dtype.as_datatype_enum)} ({dtype.name})"


def _spec(value: Any) -> Any:
    import tensorflow as tf

    return tf.TensorSpec(value.shape, value.dtype)


def _read_signature_defs(path: Path) -> Any:
    """The SavedModel's own SignatureDefs (what tensorflow_model_server returns), tensor names included."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved = saved_model_pb2.SavedModel()
    if (path / "saved_model.pb").exists():
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
    else:
        text_format.Parse((path / "saved_model.pbtxt").read_text(), saved)
    result = get_model_metadata_pb2.SignatureDefMap()
    for name, sig_def in saved.meta_graphs[0].signature_def.items():
        result.signature_def[name].CopyFrom(sig_def)
    return result


def _warm(model: LoadedModel) -> None:
    """One batch-of-1 zeros call per signature, so tracing/graph set-up is not paid by the first client."""
    for sig_name, sig in model.signatures.items():
        arrays = {}
        for key, spec in sig.inputs.items():
            shape = [1 if d is None else d for d in (spec.shape.as_list() if spec.shape.rank is not None else [1])]
            arrays[key] = np.zeros(shape, dtype=spec.dtype.as_numpy_dtype)
        try:
            sig.run(arrays)
        except ServingError as exc:
            log.warning("model %s: warm-up of signature %s failed: %s", model.name, sig_name, exc.message)


def load_model(name: str, version: int, path: Path) -> LoadedModel:
    import tensorflow as tf

    start = time.perf_counter()
    try:
        obj = tf.saved_model.load(str(path))
        signature_defs = _read_signature_defs(path)
    except Exception as exc:  # TF raises several types for a broken/missing SavedModel
        raise StartupError(f"model {name!r}: cannot load SavedModel {path}: {exc}") from None
    signatures = {}
    for sig_name, fn in obj.signatures.items():
        _, kwargs = fn.structured_input_signature
        signatures[sig_name] = Signature(fn, dict(kwargs), {k: _spec(v) for k, v in fn.structured_outputs.items()})
    if not signatures:
        raise StartupError(f"model {name!r}: SavedModel {path} has no signatures")
    model = LoadedModel(name, version, path, signatures, signature_defs, obj)
    _warm(model)
    log.info("loaded model %s version %d from %s in %.2f s (signatures: %s)",
             name, version, path, time.perf_counter() - start, ", ".join(sorted(signatures)))
    return model


class ModelRegistry:
    """Loaded models by name; names configured but not loaded yet answer UNAVAILABLE."""

    def __init__(self, names: Iterable[str]) -> None:
        self.configured = set(names)
        self.models: dict[str, LoadedModel] = {}

    def get(self, model_spec: Any) -> LoadedModel:
        name = model_spec.name
        model = self.models.get(name)
        if model is None:
            if name in self.configured:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"model {name!r} is still loading")
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"model {name!r} not found; serving: {sorted(self.configured)}")
        if model_spec.HasField("version") and model_spec.version.value != model.version:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"model {name!r} version {model_spec.version.value} not loaded "
                               f"(loaded: {model.version})")
        if model_spec.version_label:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"model {name!r}: version labels are not supported "
                               f"({model_spec.version_label!r})")
        return model


# --------------------------------------------------------------------------- request checks


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_batch: int = DEFAULT_MAX_BATCH


# The typed value field each dtype is sent in, and how many entries one element takes.
_VALUE_FIELDS: dict[str, tuple[str, int]] = {
    "float32": ("float_val", 1), "float64": ("double_val", 1), "float16": ("half_val", 1),
    "bfloat16": ("half_val", 1), "int32": ("int_val", 1), "int16": ("int_val", 1), "int8": ("int_val", 1),
    "uint8": ("int_val", 1), "uint16": ("int_val", 1), "int64": ("int64_val", 1), "uint32": ("uint32_val", 1),
    "uint64": ("uint64_val", 1), "bool": ("bool_val", 1), "string": ("string_val", 1),
    "complex64": ("scomplex_val", 2), "complex128": ("dcomplex_val", 2),
}


def declared_shape(name: str, proto: Any) -> tuple[int, ...]:
    """The shape a request TensorProto declares; INVALID_ARGUMENT for unknown rank, negative or too many dims."""
    if proto.tensor_shape.unknown_rank:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: shape has unknown rank")
    if len(proto.tensor_shape.dim) > MAX_RANK:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r}: rank {len(proto.tensor_shape.dim)} exceeds {MAX_RANK}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: negative dimension in {list(shape)}")
    return shape


def check_payload(name: str, proto: Any, dtype: Any, shape: Sequence[int]) -> None:
    """INVALID_ARGUMENT unless the values sent are exactly the elements the shape declares.

    TF's decoders broadcast a single typed value (and repeat the last of a short
    list) over the whole shape, so without this a 67-byte request declaring
    [100000, 8, 48] makes the server fill 150 MB value by value. Python ints: no
    overflow however large the dims.
    """
    elements = prod(shape)
    if proto.tensor_content:
        if dtype.name == "string":
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: DT_STRING cannot use tensor_content")
        sent, remainder = divmod(len(proto.tensor_content), dtype.size)
        what = f"tensor_content holds {len(proto.tensor_content)} bytes"
        if remainder:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r}: {what}, not a multiple of {dtype.size} ({dtype.name})")
    else:
        if dtype.name not in _VALUE_FIELDS:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: unsupported dtype {dtype.name}")
        value_field, per_element = _VALUE_FIELDS[dtype.name]
        entries = len(getattr(proto, value_field))
        sent = entries / per_element  # complex: two entries per element, an odd count never matches
        what = f"{value_field} holds {entries} values"
    if sent != elements:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r}: {what}, shape {list(shape)} declares {elements} elements "
                           f"(values are never broadcast: send exactly one per element)")


def check_batch(name: str, shape: Sequence[int], max_batch: int) -> None:
    """RESOURCE_EXHAUSTED when the first dimension (the batch) exceeds --max_batch."""
    if shape and shape[0] > max_batch:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"input {name!r}: batch {shape[0]} exceeds the server's limit --max_batch={max_batch}")


def tensor_proto_to_ndarray(proto: Any, dtype: Any, shape: Sequence[int]) -> np.ndarray:
    """Decode a checked request TensorProto: tensor_content without TF, typed value fields via tf.make_ndarray
    (exact counts only: check_payload ran, so nothing is broadcast)."""
    import tensorflow as tf

    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=dtype.as_numpy_dtype).reshape(shape)
    return tf.make_ndarray(proto)


def fill_tensor_proto(proto: Any, tensor: Any) -> None:
    """Write an output tensor into a response TensorProto: dtype, shape, tensor_content."""
    array = tensor.numpy()
    proto.dtype = tensor.dtype.as_datatype_enum
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if array.dtype == object:  # strings have no tensor_content encoding
        proto.string_val.extend(array.ravel().tolist())
    else:
        proto.tensor_content = array.tobytes()


# --------------------------------------------------------------------------- counters


class RequestCounter:
    """TF-Serving's /tensorflow/serving/request_count: Predict calls by (model_name, status), thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def record(self, model_name: str, code: grpc.StatusCode) -> None:
        key = (model_name, code.name)  # "OK", "INVALID_ARGUMENT", ...: TF-Serving's error::Code_Name
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def prometheus_page(self) -> str:
        return format_request_counts(self.snapshot())


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
                 counter: RequestCounter | None = None) -> None:
        self.registry = registry
        self.limits = limits
        self.counter = counter if counter is not None else RequestCounter()

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
        outputs = sig.run(arrays, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = sig_name
        for key, tensor in outputs.items():
            fill_tensor_proto(response.outputs[key], tensor)
        return response

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
               counter: RequestCounter | None = None) -> tuple[grpc.Server, int, Any]:
    """Bind and start the gRPC server; returns (server, bound port, health servicer)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        # gRPC itself answers RESOURCE_EXHAUSTED for a larger request, before any of our code runs.
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", limits.max_message_bytes),
                 ("grpc.so_reuseport", 0)])  # a port already in use must fail, not be shared
    _add_service(server, PredictionServicer(registry, limits, counter),
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


# --------------------------------------------------------------------------- main


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)  # readers never see a partial file


class _Shutdown:
    """SIGTERM/SIGINT handler: while starting, abandon start-up; once serving, ask the main loop to drain."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.starting = True

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested.set()
        if self.starting:
            raise _Stop


def serve(args: argparse.Namespace, shutdown: _Shutdown) -> int:
    paths = _model_paths(args)
    versions = {name: latest_version(name, base) for name, base in paths.items()}  # fail before importing TF
    monitoring = load_monitoring_config(args.monitoring_config_file)
    if monitoring.enabled and args.rest_api_port == 0:
        log.warning("monitoring enabled but --rest_api_port is 0: no metrics page is served")
    registry = ModelRegistry(paths)
    limits = Limits(args.max_message_bytes, args.max_batch)
    counter = RequestCounter()
    server = httpd = None
    try:
        server, port, health_servicer = start_grpc(registry, args.grpc_bind_host, args.port, args.grpc_max_threads,
                                                   limits, counter)
        if args.port_file:
            _write_port_file(Path(args.port_file), port)
        if args.rest_api_port > 0:
            httpd = start_rest(registry, args.grpc_bind_host, args.rest_api_port, limits, counter, monitoring)

        import tensorflow as tf
        from grpc_health.v1 import health_pb2

        # Must precede the first op: TF fixes its thread pools when the runtime starts.
        tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
        tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
        for name, (version, path) in versions.items():
            registry.models[name] = load_model(name, version, path)
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        shutdown.starting = False
        rest = f", REST on {args.grpc_bind_host}:{args.rest_api_port}" if httpd else ""
        if httpd and monitoring.enabled:
            rest += f", metrics at {monitoring.path}"
        log.info("serving on %s:%d%s (max batch %d, max message %d bytes)", args.grpc_bind_host, port, rest,
                 limits.max_batch, limits.max_message_bytes)
        shutdown.requested.wait()
        log.info("stopping (grace %.0f s)", GRACE_SECONDS)
        server.stop(GRACE_SECONDS).wait()
        return 0
    finally:
        shutdown.starting = False  # a second signal during clean-up must not interrupt it
        if httpd is not None:
            httpd.shutdown()
        if server is not None:
            server.stop(0)


def main(argv: Sequence[str] | None = None) -> int:
    shutdown = _Shutdown()
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TF is imported: keep stderr readable
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s osmi-model-server %(levelname)s %(message)s")
    # A crash in native code (TF, gRPC) or a kill by the OOM path still leaves a trace in the log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    threading.excepthook = _log_thread_exception
    try:
        require_serve("osmi-model-server")
        return serve(args, shutdown)
    except MissingExtra as exc:
        log.error("%s", exc)
        return 1
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except _Stop:
        log.info("stopped before serving")
        return 0
    except Exception:  # logged with traceback before the process dies, not only printed by the interpreter
        log.critical("fatal error, exiting", exc_info=True)
        return 1


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    log.critical("uncaught exception in thread %s", args.thread.name if args.thread else "?",
                 exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


if __name__ == "__main__":
    sys.exit(main())
