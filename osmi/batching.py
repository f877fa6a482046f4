"""Server-side batching, rendered for each server from one `Batching` setting
(the grid's `batching` axis, ee/config.py):

- TF-Serving: the text-format BatchingParameters of `--batching_parameters_file`
  (with `--enable_batching`); osmi-model-server reads the same file with the same
  flags (`parse_batching_parameters`).
- Triton: a model's `config.pbtxt`, with a `dynamic_batching` block when batching
  is on, for the TensorFlow SavedModel backend (clusters) or the Python backend
  (a model.py that loads the SavedModel: the pytriton wheel has no TF backend).

The settings map as follows. TF-Serving: max_batch_size, batch_timeout_micros,
num_batch_threads, max_enqueued_batches; preferred_batch_sizes has no TF-Serving
equivalent (allowed_batch_sizes pads batches, a different thing) and is left out.
Triton: max_batch_size; batch_timeout_us -> max_queue_delay_microseconds;
preferred_batch_sizes -> preferred_batch_size; num_batch_threads -> the instance
count (batches run at once); max_enqueued_batches x max_batch_size ->
default_queue_policy.max_queue_size (Triton bounds requests, not batches).

Pure text in and out: no TensorFlow import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osmi_ee.ee.config import Batching
from osmi_ee.osmi.schema import SERVER_MAX_BATCH
from osmi_ee.osmi.specs import INPUT_NAME, OUTPUT_NAME, get_spec

ENABLE_FLAG = "--enable_batching"
FILE_FLAG = "--batching_parameters_file"
TRITON_BACKENDS = ("python", "tensorflow")  # python: CPU here; tensorflow: tensorflow_savedmodel on a cluster
TRITON_INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
                  "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


# --------------------------------------------------------------------------- TF-Serving


def batching_parameters_text(batching: Batching) -> str:
    """The text-format BatchingParameters TF-Serving's --batching_parameters_file reads."""
    return (f"max_batch_size {{ value: {batching.max_batch_size} }}\n"
            f"batch_timeout_micros {{ value: {batching.batch_timeout_us} }}\n"
            f"num_batch_threads {{ value: {batching.num_batch_threads} }}\n"
            f"max_enqueued_batches {{ value: {batching.max_enqueued_batches} }}\n")


def server_flags(parameters_file: Path | None) -> list[str]:
    """The shard flags that turn batching on (the same for TF-Serving and osmi-model-server)."""
    return [] if parameters_file is None else [ENABLE_FLAG, f"{FILE_FLAG}={parameters_file}"]


def write_parameters_file(setting: Any, path: Path) -> Path | None:
    """Writes the batching parameters file of an experiment's `batching` value
    (None: off, nothing written); returns the path to hand the shards."""
    from osmi_ee.ee.config import batching_of
    from osmi_ee.ee.paths import write_atomic

    batching = batching_of(setting)
    if batching is None:
        return None
    write_atomic(path, batching_parameters_text(batching))
    return path


@dataclass(frozen=True)
class QueueSettings:
    """What osmi-model-server's batching queue runs with, read from a BatchingParameters file."""

    max_batch_size: int = 1000  # TF-Serving's defaults, for --enable_batching without a file
    batch_timeout_us: int = 0
    num_batch_threads: int = 1  # TF-Serving: the machine's parallelism; one here, documented
    max_enqueued_batches: int = 10


def parse_batching_parameters(text: str) -> QueueSettings:
    """QueueSettings from a text-format BatchingParameters; ValueError naming the problem.

    Parsed with protobuf's text-format parser against the fields TF-Serving's
    BatchingParameters has (its proto is not in tensorflow-serving-api), so what
    the real binary reads reads the same here. Fields that change what a batch is
    (padding to allowed_batch_sizes, splitting large batches) are refused: this
    queue does neither, and a result must not silently mean something else.
    """
    from google.protobuf import text_format

    message = _batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ValueError(str(exc)) from None
    unsupported = [name for name in ("allowed_batch_sizes", "pad_variable_length_inputs",
                                     "enable_large_batch_splitting", "max_execution_batch_size")
                   if _is_set(message, name)]
    if unsupported:
        raise ValueError(f"not supported by osmi-model-server's batching queue: {', '.join(unsupported)}")
    values: dict[str, int] = {}
    for field, key in (("max_batch_size", "max_batch_size"), ("batch_timeout_micros", "batch_timeout_us"),
                       ("num_batch_threads", "num_batch_threads"), ("max_enqueued_batches", "max_enqueued_batches")):
        if message.HasField(field):
            values[key] = getattr(message, field).value
    settings = QueueSettings(**values)
    for key, value in vars(settings).items():
        low = 0 if key == "batch_timeout_us" else 1
        if value < low:
            raise ValueError(f"{key} must be >= {low}, got {value}")
    return settings


def _is_set(message: Any, name: str) -> bool:
    """Does the file ask for `name` (a non-empty list, a true or non-zero value)?"""
    value = getattr(message, name)
    if name == "allowed_batch_sizes":
        return len(value) > 0
    if message.DESCRIPTOR.fields_by_name[name].message_type is not None:
        return message.HasField(name) and bool(value.value)
    return bool(value)


_BATCHING_PARAMETERS: type | None = None


def _batching_parameters_class() -> type:
    """tensorflow.serving.BatchingParameters (the fields a text file may set), in a private pool."""
    global _BATCHING_PARAMETERS
    if _BATCHING_PARAMETERS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        F = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(name="osmi_batching_parameters.proto",
                                                   package="osmi.batching", syntax="proto3")
        for wrapper, kind in (("Int64Value", F.TYPE_INT64), ("BoolValue", F.TYPE_BOOL),
                              ("StringValue", F.TYPE_STRING)):
            proto.message_type.add(name=wrapper).field.add(name="value", number=1, type=kind,
                                                           label=F.LABEL_OPTIONAL)
        params = proto.message_type.add(name="BatchingParameters")
        fields = [("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
                  ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
                  ("thread_pool_name", "StringValue"), ("allowed_batch_sizes", None),
                  ("pad_variable_length_inputs", None), ("enable_large_batch_splitting", "BoolValue"),
                  ("max_execution_batch_size", "Int64Value")]
        for number, (name, wrapper) in enumerate(fields, start=1):
            if wrapper:
                params.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                                 type_name=f".osmi.batching.{wrapper}")
            elif name == "allowed_batch_sizes":
                params.field.add(name=name, number=number, type=F.TYPE_INT64, label=F.LABEL_REPEATED)
            else:
                params.field.add(name=name, number=number, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(proto)
        _BATCHING_PARAMETERS = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("osmi.batching.BatchingParameters"))
    return _BATCHING_PARAMETERS


# --------------------------------------------------------------------------- Triton


def triton_model_config(model: str, *, backend: str = "python", batching: Batching | None = None,
                        max_batch_size: int | None = None, instance_count: int | None = None,
                        instance_kind: str = "KIND_CPU") -> str:
    """Triton's config.pbtxt for one of our models (shapes and names from osmi/specs.py).

    `backend`: "python" (a model.py next to it loads the SavedModel) or "tensorflow"
    (platform tensorflow_savedmodel, the SavedModel in <version>/model.savedmodel).
    `max_batch_size`: the largest batch Triton accepts; default the batching
    setting's, else osmi-model-server's limit. `instance_count`: default the
    setting's num_batch_threads, else 1. ValueError for a bad combination.
    """
    spec = get_spec(model)
    if backend not in TRITON_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(TRITON_BACKENDS)}, got {backend!r}")
    if instance_kind not in TRITON_INSTANCE_KINDS:
        raise ValueError(f"instance_kind must be one of {', '.join(TRITON_INSTANCE_KINDS)}, got {instance_kind!r}")
    if max_batch_size is None:
        max_batch_size = batching.max_batch_size if batching else SERVER_MAX_BATCH
    if batching and max_batch_size < batching.max_batch_size:
        raise ValueError(f"max_batch_size {max_batch_size} is below the batching setting's "
                         f"{batching.max_batch_size}: Triton would refuse the merged batches")
    if instance_count is None:
        instance_count = batching.num_batch_threads if batching else 1
    if max_batch_size < 1 or instance_count < 1:
        raise ValueError("max_batch_size and instance_count must be >= 1")
    dtype = _TRITON_DTYPES[spec.dtype]
    engine = 'backend: "python"' if backend == "python" else 'platform: "tensorflow_savedmodel"'
    lines = [f'name: "{model}"', engine, f"max_batch_size: {max_batch_size}",
             *_tensors("input", INPUT_NAME, dtype, spec.input_shape),
             *_tensors("output", OUTPUT_NAME, dtype, spec.output_shape),
             "instance_group [", "  {", f"    count: {instance_count}", f"    kind: {instance_kind}", "  }", "]"]
    if batching is not None:
        lines.append("dynamic_batching {")
        if batching.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred_batch_sizes))} ]")
        lines += [f"  max_queue_delay_microseconds: {batching.batch_timeout_us}",
                  "  default_queue_policy {",
                  f"    max_queue_size: {batching.max_enqueued_batches * batching.max_batch_size}",
                  "  }", "}"]
    return "\n".join(lines) + "\n"


def _tensors(kind: str, name: str, dtype: str, dims: tuple[int, ...]) -> list[str]:
    # The batch dimension is implicit: max_batch_size > 0 puts it in front of dims.
    return [f"{kind} [", "  {", f'    name: "{name}"', f"    data_type: {dtype}",
            f"    dims: [ {', '.join(map(str, dims))} ]", "  }", "]"]
