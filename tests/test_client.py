"""The lean client: no TensorFlow, TF-Serving wire compatibility, response checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from osmi_ee.osmi import protos
from osmi_ee.osmi.client import BAD_RESPONSE, ResponseChecker, build_requests


def test_client_does_not_import_tensorflow():
    code = ("import sys, osmi_ee.osmi.client; "
            "print(any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lean_request_parses_with_real_tf_serving_protos():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    payload = build_requests("small_lstm", 3, seed=1, count=1)[0]
    real = predict_pb2.PredictRequest.FromString(payload)
    assert real.model_spec.name == "small_lstm"
    assert real.model_spec.signature_name == "serving_default"
    array = tf.make_ndarray(real.inputs["inputs"])
    assert array.shape == (3, 8, 48) and array.dtype == np.float32


def real_response(shape, dtype=np.float32, key="outputs") -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.outputs[key].CopyFrom(tf.make_tensor_proto(np.zeros(shape, dtype)))
    return response.SerializeToString()


def test_checker_accepts_right_and_names_wrong_output_shapes():
    checker = ResponseChecker("small_lstm", 4)
    assert checker.problem(real_response((4, 2, 12))) is None
    wrong = checker.problem(real_response((4, 2, 13)))
    assert wrong and "[4, 2, 13]" in wrong and "[4, 2, 12]" in wrong
    assert checker.problem(real_response((4, 2, 12), np.float64))
    assert "no output" in checker.problem(real_response((4, 2, 12), key="output_0"))
    assert BAD_RESPONSE == 100


def test_lean_response_reads_real_float_val_encoding():
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    tensor = response.outputs["outputs"]
    tensor.dtype = protos.DT_FLOAT
    for d in (1, 2, 12):
        tensor.tensor_shape.dim.add(size=d)
    tensor.float_val.extend([0.5] * 24)
    assert ResponseChecker("small_lstm", 1).problem(response.SerializeToString()) is None


def test_client_help():
    out = subprocess.run([sys.executable, "-m", "osmi_ee.osmi.client", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--duration-s" in out.stdout
