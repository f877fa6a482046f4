"""KServe v2 requests and response checks: the Triton side of the lean client.

The same contract as the TF-Serving path in osmi.client: inputs made and
serialized up front, each answer checked for dtype, shape and byte count, then
dropped. The byte count matters here: a Triton python-backend stub whose
environment has the wrong numpy answers the right shape with 0 bytes of data
and logs nothing.
"""

from __future__ import annotations

import numpy as np

from osmi_ee.osmi import kserve
from osmi_ee.osmi.specs import INPUT_NAME, OUTPUT_NAME, get_spec


def build_infer_requests(model: str, batch: int, seed: int, count: int) -> list[bytes]:
    """Serialized ModelInferRequests with random float32 inputs of the model's shape."""
    spec = get_spec(model)
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(count):
        data = rng.random((batch, *spec.input_shape), dtype=np.float32)
        request = kserve.ModelInferRequest(model_name=model)
        request.inputs.add(name=INPUT_NAME, datatype=kserve.FP32, shape=data.shape)
        request.outputs.add(name=OUTPUT_NAME)
        request.raw_input_contents.append(data.tobytes())
        requests.append(request.SerializeToString())
    return requests


class InferResponseChecker:
    """Checks an answer holds the model's output tensor: FP32, the right shape, every byte."""

    def __init__(self, model: str, batch: int):
        spec = get_spec(model)
        self.dims = [batch, *spec.output_shape]
        self.nbytes = batch * spec.output_bytes_per_sample

    def problem(self, payload: bytes) -> str | None:
        response = kserve.ModelInferResponse.FromString(payload)
        names = [t.name for t in response.outputs]
        if OUTPUT_NAME not in names:
            return f"no output {OUTPUT_NAME!r}; got {sorted(names)}"
        index = names.index(OUTPUT_NAME)
        tensor = response.outputs[index]
        dims = list(tensor.shape)
        if tensor.datatype != kserve.FP32 or dims != self.dims:
            return f"output {OUTPUT_NAME!r} is {tensor.datatype} shape {dims}; expected FP32 {self.dims}"
        got = len(response.raw_output_contents[index]) if index < len(response.raw_output_contents) else 0
        if got != self.nbytes:
            return (f"output {OUTPUT_NAME!r} holds {got} bytes; expected {self.nbytes} "
                    "(0 bytes: a Triton python-backend stub running numpy 2 answers empty tensors)")
        return None


def decode_output(payload: bytes) -> np.ndarray:
    """The output tensor of an answer as a float32 array (for checks of the values)."""
    response = kserve.ModelInferResponse.FromString(payload)
    names = [t.name for t in response.outputs]
    index = names.index(OUTPUT_NAME)
    shape = tuple(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(shape)
