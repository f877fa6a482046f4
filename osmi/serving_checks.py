"""Request tensors, checked before anything is decoded or allocated: the declared
shape (rank, sizes), the payload against the elements it declares (values are never
broadcast), and the batch against `--max_batch`; then decoding the checked request
TensorProto and encoding an output tensor into the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import grpc
import numpy as np

from osmi_ee.osmi.schema import MAX_MESSAGE_BYTES, SERVER_MAX_BATCH
from osmi_ee.osmi.serving_models import ServingError

# The payload is bounded by --max_message_bytes; --max_batch bounds what one request makes
# the model compute: activations and outputs grow with the batch (large_tcnn's input alone
# is 0.9 MB per sample). Both defaults live with the model specs (one home).
DEFAULT_MAX_BATCH = SERVER_MAX_BATCH
MAX_RANK = 254  # TensorShape's own limit: more dims than this is never a real tensor


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
    # A view of the tensor's own buffer: .numpy() would copy every output once more before
    # tobytes() copies it into the response (medium_cnn b16: 0.5 MB, ~80 us a call).
    array = np.asarray(tensor)
    proto.dtype = tensor.dtype.as_datatype_enum
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if array.dtype == object:  # strings have no tensor_content encoding
        proto.string_val.extend(array.ravel().tolist())
    else:
        proto.tensor_content = array.tobytes()

