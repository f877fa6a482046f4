"""The models osmi-model-server serves: SavedModels loaded from their latest version
folder, their signatures (typed inputs, called with numpy arrays), warm-up, and the
registry that answers which model a request names.

Also the two errors the server is built on: ServingError (a request's gRPC status
and message) and StartupError (logged without traceback, exit code 1).
TensorFlow is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

log = logging.getLogger("osmi-model-server")

DEFAULT_SIGNATURE = "serving_default"

# tf.errors codes are the gRPC status codes by number.
_GRPC_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request error with the gRPC status it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StartupError(Exception):
    """A start-up failure: logged without traceback, exit code 1."""


def latest_version(name: str, base_path: Path) -> tuple[int, Path]:
    """The highest numeric version folder under base_path (TF-Serving's default policy)."""
    if not base_path.is_dir():
        raise StartupError(f"model {name!r}: base path {base_path} is not a directory")
    versions = [(int(p.name), p) for p in base_path.iterdir() if p.name.isdigit() and p.is_dir()]
    if not versions:
        raise StartupError(f"model {name!r}: no numeric version folder under {base_path}")
    return max(versions)


# --------------------------------------------------------------------------- signatures and models


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

