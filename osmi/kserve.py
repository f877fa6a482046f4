"""A TensorFlow-free, tritonclient-free copy of the KServe v2 gRPC messages we use.

Triton speaks KServe v2 (`inference.GRPCInferenceService`), not TF-Serving's
API. As in osmi.protos, only the wire format matters (field numbers and types),
so we declare ModelInferRequest/Response, the readiness calls and the part of
ModelStatistics that holds request counts in a private descriptor pool, with
the numbers of Triton's grpc_service.proto. tests/test_triton.py checks them
against the tritonclient wheel's own classes where that wheel is installed.
"""

from __future__ import annotations

from functools import partial

from google.protobuf import descriptor_pb2

from osmi_ee.osmi import protos

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "osmi_ee.kserve"

SERVICE = "/inference.GRPCInferenceService"
INFER_METHOD = f"{SERVICE}/ModelInfer"
SERVER_READY_METHOD = f"{SERVICE}/ServerReady"
MODEL_READY_METHOD = f"{SERVICE}/ModelReady"
STATISTICS_METHOD = f"{SERVICE}/ModelStatistics"

FP32 = "FP32"  # KServe's datatype name of float32


_field = partial(protos.field, _PACKAGE)
_message = protos.message


def _tensor(name: str) -> descriptor_pb2.DescriptorProto:
    """An input or output tensor's header (name, datatype, shape); data travels in raw_*_contents."""
    return _message(name, _field("name", 1, _F.TYPE_STRING), _field("datatype", 2, _F.TYPE_STRING),
                    _field("shape", 3, _F.TYPE_INT64, repeated=True))


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    S, B, M, U64 = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_MESSAGE, _F.TYPE_UINT64
    request = _message("ModelInferRequest", _field("model_name", 1, S), _field("model_version", 2, S),
                       _field("id", 3, S),
                       _field("inputs", 5, M, repeated=True, type_name="ModelInferRequest.InferInputTensor"),
                       _field("outputs", 6, M, repeated=True,
                              type_name="ModelInferRequest.InferRequestedOutputTensor"),
                       _field("raw_input_contents", 7, _F.TYPE_BYTES, repeated=True))
    request.nested_type.extend([_tensor("InferInputTensor"),
                                _message("InferRequestedOutputTensor", _field("name", 1, S))])
    response = _message("ModelInferResponse", _field("model_name", 1, S), _field("model_version", 2, S),
                        _field("id", 3, S),
                        _field("outputs", 5, M, repeated=True, type_name="ModelInferResponse.InferOutputTensor"),
                        _field("raw_output_contents", 6, _F.TYPE_BYTES, repeated=True))
    response.nested_type.append(_tensor("InferOutputTensor"))
    duration = _message("StatisticDuration", _field("count", 1, U64), _field("ns", 2, U64))
    infer_stats = _message("InferStatistics",
                           _field("success", 1, M, type_name="StatisticDuration"),
                           _field("fail", 2, M, type_name="StatisticDuration"))
    model_stats = _message("ModelStatistics", _field("name", 1, S), _field("version", 2, S),
                           _field("last_inference", 3, U64), _field("inference_count", 4, U64),
                           _field("execution_count", 5, U64),
                           _field("inference_stats", 6, M, type_name="InferStatistics"))
    return descriptor_pb2.FileDescriptorProto(
        name="osmi_ee/kserve_lean.proto", package=_PACKAGE, syntax="proto3",
        message_type=[
            request, response, duration, infer_stats, model_stats,
            _message("ServerReadyRequest"),
            _message("ServerReadyResponse", _field("ready", 1, B)),
            _message("ModelReadyRequest", _field("name", 1, S), _field("version", 2, S)),
            _message("ModelReadyResponse", _field("ready", 1, B)),
            _message("ModelStatisticsRequest", _field("name", 1, S), _field("version", 2, S)),
            _message("ModelStatisticsResponse",
                     _field("model_stats", 1, M, repeated=True, type_name="ModelStatistics")),
        ])


_cls = protos.message_classes(_build_file())


ModelInferRequest = _cls("ModelInferRequest")
ModelInferResponse = _cls("ModelInferResponse")
ServerReadyRequest = _cls("ServerReadyRequest")
ServerReadyResponse = _cls("ServerReadyResponse")
ModelReadyRequest = _cls("ModelReadyRequest")
ModelReadyResponse = _cls("ModelReadyResponse")
ModelStatisticsRequest = _cls("ModelStatisticsRequest")
ModelStatisticsResponse = _cls("ModelStatisticsResponse")
