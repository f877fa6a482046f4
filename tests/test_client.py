"""The lean client: no TensorFlow, TF-Serving wire compatibility, response checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from osmi_ee.osmi import protos
from osmi_ee.osmi.client import (BAD_RESPONSE, ClientSettings, ResponseChecker, build_requests, client_argv,
                                   parse_args)


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
    assert out.returncode == 0 and "--config" in out.stdout and "--duration-s" in out.stdout
    assert "--model" not in out.stdout  # the config says what to send


CONFIG = {"name": "t", "experiment": {"model": "small_lstm", "clients": 4, "batch": 3, "scenario": "poisson",
                                      "rate": 100},
          "measure": {"warmup_requests": 2, "warmup_s": 0.5, "streams": 2, "duration_s": 6, "timeout_s": 5,
                      "seed": 7}}


def test_settings_come_from_the_experiment_config(tmp_path):
    import yaml

    from osmi_ee.ee.config import load_experiment_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    settings = ClientSettings.from_experiment(*load_experiment_config(tmp_path / "config.yaml")[:2])
    assert settings == ClientSettings(model="small_lstm", batch=3, scenario="poisson", streams=2, rate=25.0,
                                      requests=None, duration_s=6.0, warmup=2, warmup_s=0.5, timeout_s=5.0,
                                      seed=7)  # the grid's rate is for all 4 clients together
    assert settings.bounded() is settings
    bounded = settings.bounded(requests=40)
    assert (bounded.requests, bounded.duration_s, bounded.rate) == (40, None, 25.0)


def test_the_command_line_carries_only_what_differs_per_client(tmp_path, monkeypatch):
    argv = client_argv(tmp_path / "config.yaml", "h:1", client_id=3, duration_s=2.5, barrier=False)
    assert argv[1:3] == ["-m", "osmi_ee.osmi.client"]
    args = parse_args(argv[3:])
    assert (args.config, args.target, args.client_id, args.requests, args.duration_s, args.no_barrier) == \
        (tmp_path / "config.yaml", "h:1", 3, None, 2.5, True)
    monkeypatch.setenv("SLURM_PROCID", "5")  # an srun task: one command line, the id from Slurm
    assert parse_args(client_argv(tmp_path / "c.yaml", "h:1", requests=9)[3:]).client_id == 5
