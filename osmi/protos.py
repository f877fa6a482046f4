"""A TensorFlow-free copy of the few TF-Serving messages a load generator needs.

`tensorflow_serving.apis.predict_pb2` imports all of TensorFlow (seconds of
start-up, ~0.5 GB per process). The wire format only depends on field numbers
and types, so we declare PredictRequest/PredictResponse and what they contain
with the same numbers, in a private descriptor pool (no clash with the real
protos when both live in one process). tests/test_protos.py checks byte-for-byte
interoperability with tensorflow-serving-api's own classes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "osmi_ee.tfs"

# TensorFlow DataType enum values used on the wire (tensorflow/core/framework/types.proto).
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64, DT_HALF, DT_BOOL, DT_STRING = 1, 2, 3, 9, 19, 10, 7
NUMPY_DTYPE_TO_DT = {"float32": DT_FLOAT, "float64": DT_DOUBLE, "int32": DT_INT32,
                     "int64": DT_INT64, "float16": DT_HALF, "bool": DT_BOOL}
DT_TO_NUMPY_DTYPE = {v: k for k, v in NUMPY_DTYPE_TO_DT.items()}

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


# The builders below also declare the KServe v2 messages (osmi.kserve), in their own package.
def field(package: str, name: str, number: int, ftype: int, *, repeated: bool = False,
          type_name: str = "") -> _F:
    """One field of a message; `type_name` names a message of the same `package`."""
    declared = _F(name=name, number=number, type=ftype,
                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        declared.type_name = f".{package}.{type_name}"
    return declared


def message(name: str, *fields: _F) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def message_classes(file: descriptor_pb2.FileDescriptorProto) -> Callable[[str], type]:
    """name -> the message class of `file`, declared in a private pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{name}"))


_field = partial(field, _PACKAGE)
_message = message


def _map_of_tensors(owner: descriptor_pb2.DescriptorProto, field_name: str, number: int) -> None:
    """Adds `map<string, TensorProto> field_name = number;` to `owner`."""
    entry_name = "".join(part.capitalize() for part in field_name.split("_")) + "Entry"
    entry = _message(entry_name, _field("key", 1, _F.TYPE_STRING),
                     _field("value", 2, _F.TYPE_MESSAGE, type_name="TensorProto"))
    entry.options.map_entry = True
    owner.nested_type.append(entry)
    owner.field.append(_field(field_name, number, _F.TYPE_MESSAGE, repeated=True,
                              type_name=f"{owner.name}.{entry_name}"))


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    dim = _message("Dim", _field("size", 1, _F.TYPE_INT64), _field("name", 2, _F.TYPE_STRING))
    shape = _message("TensorShapeProto",
                     _field("dim", 2, _F.TYPE_MESSAGE, repeated=True, type_name="TensorShapeProto.Dim"),
                     _field("unknown_rank", 3, _F.TYPE_BOOL))
    shape.nested_type.append(dim)
    tensor = _message(
        "TensorProto",
        _field("dtype", 1, _F.TYPE_INT32),  # an enum on the wire is a varint
        _field("tensor_shape", 2, _F.TYPE_MESSAGE, type_name="TensorShapeProto"),
        _field("version_number", 3, _F.TYPE_INT32),
        _field("tensor_content", 4, _F.TYPE_BYTES),
        _field("float_val", 5, _F.TYPE_FLOAT, repeated=True),
        _field("double_val", 6, _F.TYPE_DOUBLE, repeated=True),
        _field("int_val", 7, _F.TYPE_INT32, repeated=True),
        _field("string_val", 8, _F.TYPE_BYTES, repeated=True),
        _field("int64_val", 10, _F.TYPE_INT64, repeated=True),
        _field("bool_val", 11, _F.TYPE_BOOL, repeated=True),
        _field("half_val", 13, _F.TYPE_INT32, repeated=True),
    )
    int64_value = _message("Int64Value", _field("value", 1, _F.TYPE_INT64))
    model_spec = _message("ModelSpec",
                          _field("name", 1, _F.TYPE_STRING),
                          _field("version", 2, _F.TYPE_MESSAGE, type_name="Int64Value"),
                          _field("signature_name", 3, _F.TYPE_STRING),
                          _field("version_label", 4, _F.TYPE_STRING))
    request = _message("PredictRequest",
                       _field("model_spec", 1, _F.TYPE_MESSAGE, type_name="ModelSpec"))
    _map_of_tensors(request, "inputs", 2)
    request.field.append(_field("output_filter", 3, _F.TYPE_STRING, repeated=True))
    response = _message("PredictResponse",
                        _field("model_spec", 2, _F.TYPE_MESSAGE, type_name="ModelSpec"))
    _map_of_tensors(response, "outputs", 1)
    return descriptor_pb2.FileDescriptorProto(
        name="osmi_ee/tfs_lean.proto", package=_PACKAGE, syntax="proto3",
        message_type=[shape, tensor, int64_value, model_spec, request, response])


_cls = message_classes(_build_file())


TensorProto = _cls("TensorProto")
TensorShapeProto = _cls("TensorShapeProto")
ModelSpec = _cls("ModelSpec")
PredictRequest = _cls("PredictRequest")
PredictResponse = _cls("PredictResponse")
