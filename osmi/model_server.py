"""`osmi-model-server`: a TensorFlow-Serving-compatible gRPC model server.

The real `tensorflow_model_server` binary is not available everywhere, so this
serves SavedModels over the same gRPC API (the generated stubs of
`tensorflow_serving.apis`), with the same flags, so clients and job scripts
cannot tell the difference for Predict, GetModelMetadata, GetModelStatus and
grpc.health.v1. A minimal REST API is served when `--rest_api_port` > 0.

Start-up order: flags and model config are checked before TensorFlow is
imported (bad input fails in well under a second), then the gRPC port is bound
and written to `--port_file` (health says NOT_SERVING), then the models are
loaded and warmed, then health says SERVING.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import grpc
import numpy as np

log = logging.getLogger("osmi-model-server")

DEFAULT_SIGNATURE = "serving_default"
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's ceiling; large_tcnn batches exceed the 4 MiB default
GRACE_SECONDS = 5.0

# tf.errors codes are the gRPC status codes by number.
_GRPC_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_HTTP_CODES = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
               grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.UNIMPLEMENTED: 501}


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
    parser.add_argument("--grpc_bind_host", default="0.0.0.0", help="address to listen on (ours)")
    parser.add_argument("--port_file", default="", help="write the bound gRPC port here, atomically (ours)")
    args = parser.parse_args(argv)
    if bool(args.model_config_file) == bool(args.model_base_path or args.model_name):
        parser.error("give either --model_config_file or --model_name/--model_base_path, not both or neither")
    if not args.model_config_file and not args.model_base_path:
        parser.error("--model_base_path is required with --model_name")
    if args.model_name is None:
        args.model_name = "default"  # tensorflow_model_server's default
    if args.port < 0 or args.rest_api_port < 0 or args.grpc_max_threads < 1:
        parser.error("ports must be >= 0 and --grpc_max_threads >= 1")
    return args


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


# --------------------------------------------------------------------------- gRPC


def tensor_proto_to_ndarray(proto: Any) -> np.ndarray:
    """Decode a request TensorProto: tensor_content without TF, typed value fields via tf.make_ndarray."""
    import tensorflow as tf

    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype)
        if array.size != int(np.prod(shape)):
            raise ValueError(f"tensor_content holds {array.size} values, shape {list(shape)} needs {int(np.prod(shape))}")
        return array.reshape(shape)
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


def _grpc_method(method: Any) -> Any:
    """Turn ServingError (and surprises) into gRPC status codes."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request)
        except ServingError as exc:
            error = exc
        except Exception as exc:  # a bug must still answer the client, not hang it
            log.exception("%s failed", method.__name__)
            error = ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        context.abort(error.code, error.message)

    wrapper.__name__ = method.__name__
    return wrapper


def _unimplemented(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented by osmi-model-server")


class PredictionServicer:
    """tensorflow.serving.PredictionService (registered with the generated add_*_to_server)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @_grpc_method
    def Predict(self, request: Any) -> Any:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        model = self.registry.get(request.model_spec)
        sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = model.signature(sig_name)
        sig.check_keys(request.inputs)
        arrays = {}
        for key, proto in request.inputs.items():
            try:
                dtype = tf.dtypes.as_dtype(proto.dtype)
            except TypeError:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: invalid dtype {proto.dtype}")
            sig.check_input(key, dtype, [d.size for d in proto.tensor_shape.dim])
            try:
                arrays[key] = tensor_proto_to_ndarray(proto)
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


def start_grpc(registry: ModelRegistry, host: str, port: int, max_threads: int) -> tuple[grpc.Server, int, Any]:
    """Bind and start the gRPC server; returns (server, bound port, health servicer)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"),
        options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)])  # a port already in use must fail, not be shared
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
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
    """TF-Serving's REST API, the two calls benchmarks use: model status and predict."""

    registry: ModelRegistry  # set on the subclass made in start_rest

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
                self._reply(200, self._predict(model, json.loads(self.rfile.read(length) or b"{}")))
        except ServingError as exc:
            self._reply(_HTTP_CODES.get(exc.code, 500), {"error": exc.message})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # malformed JSON or instances
            self._reply(400, {"error": f"{type(exc).__name__}: {exc}"})

    def do_GET(self) -> None:
        self._handle(None)

    def do_POST(self) -> None:
        self._handle("predict")

    @staticmethod
    def _predict(model: LoadedModel, body: dict[str, Any]) -> dict[str, Any]:
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


def start_rest(registry: ModelRegistry, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("RestHandler", (_RestHandler,), {"registry": registry})
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
    registry = ModelRegistry(paths)
    server = httpd = None
    try:
        server, port, health_servicer = start_grpc(registry, args.grpc_bind_host, args.port, args.grpc_max_threads)
        if args.port_file:
            _write_port_file(Path(args.port_file), port)
        if args.rest_api_port > 0:
            httpd = start_rest(registry, args.grpc_bind_host, args.rest_api_port)

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
        log.info("serving on %s:%d%s", args.grpc_bind_host, port, rest)
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
    try:
        return serve(args, shutdown)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    except _Stop:
        log.info("stopped before serving")
        return 0


if __name__ == "__main__":
    sys.exit(main())
