"""Triton's pieces in isolation: KServe v2 messages, response checks, the model
repository, the server axis, the profile's command, HAProxy's health check."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from osmi_ee.ee.config import GridError, load_grid
from osmi_ee.ee.expand import expand
from osmi_ee.osmi import haproxy, kserve, protos
from osmi_ee.osmi.client import wire_protocol
from osmi_ee.osmi.kserve_client import InferResponseChecker, build_infer_requests, decode_output
from osmi_ee.osmi.triton_repo import render_triton_config
from osmi_ee.osmi.triton_setup import TritonInstall


def answer(batch: int, *, shape=None, datatype="FP32", nbytes=None, name="outputs") -> bytes:
    shape = shape or [batch, 2, 12]
    data = np.arange(np.prod(shape), dtype=np.float32).tobytes()
    response = kserve.ModelInferResponse(model_name="small_lstm")
    response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.append(data if nbytes is None else data[:nbytes])
    return response.SerializeToString()


def test_infer_request_carries_the_inputs_as_raw_fp32():
    (payload,) = build_infer_requests("small_lstm", 3, seed=1, count=1)
    request = kserve.ModelInferRequest.FromString(payload)
    assert request.model_name == "small_lstm"
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("inputs", "FP32", [3, 8, 48])
    assert [o.name for o in request.outputs] == ["outputs"]
    data = np.frombuffer(request.raw_input_contents[0], np.float32)
    assert data.size == 3 * 8 * 48 and 0 <= data.min() and data.max() < 1


def test_checker_accepts_a_full_answer_and_names_each_fault():
    checker = InferResponseChecker("small_lstm", 4)
    assert checker.problem(answer(4)) is None
    assert decode_output(answer(4)).shape == (4, 2, 12)
    empty = checker.problem(answer(4, nbytes=0))  # what a stub with numpy 2 sends
    assert "holds 0 bytes; expected 384" in empty and "numpy 2" in empty
    assert "holds 380 bytes" in checker.problem(answer(4, nbytes=380))
    assert "expected FP32 [4, 2, 12]" in checker.problem(answer(4, shape=[4, 2, 13]))
    assert "is FP16" in checker.problem(answer(4, datatype="FP16"))
    assert "no output 'outputs'" in checker.problem(answer(4, name="output_0"))


def test_the_client_speaks_kserve_only_to_triton():
    method, build, check = wire_protocol("triton")
    assert method == "/inference.GRPCInferenceService/ModelInfer" and check is InferResponseChecker
    assert kserve.ModelInferRequest.FromString(build("small_lstm", 1, 0, 1)[0]).model_name == "small_lstm"
    for server in ("auto", "osmi", "tfserving"):
        assert wire_protocol(server)[0] == protos.PREDICT_METHOD


def test_our_messages_match_tritonclients_own_where_installed():
    """Byte-level interoperability with the tritonclient wheel's grpc_service_pb2 (in the Triton env)."""
    install = TritonInstall.default()
    if not install.python.exists():
        pytest.skip("no Triton environment (make triton)")
    (payload,) = build_infer_requests("small_lstm", 2, seed=3, count=1)
    code = (
        "import json, os, sys, types, tritonclient\n"
        # Only the generated messages: the package's __init__ wants its grpc extras (rapidjson).
        "pkg = types.ModuleType('tritonclient.grpc')\n"
        "pkg.__path__ = [os.path.join(tritonclient.__path__[0], 'grpc')]\n"
        "sys.modules['tritonclient.grpc'] = pkg\n"
        "from tritonclient.grpc import service_pb2 as pb\n"
        "r = pb.ModelInferRequest.FromString(bytes.fromhex(sys.argv[1]))\n"
        "out = pb.ModelInferResponse(model_name='small_lstm')\n"
        "t = out.outputs.add(); t.name = 'outputs'; t.datatype = 'FP32'; t.shape.extend([2, 2, 12])\n"
        "out.raw_output_contents.append(bytes(192))\n"
        "s = pb.ModelStatisticsResponse(); m = s.model_stats.add(); m.name = 'small_lstm'\n"
        "m.inference_stats.success.count = 7; m.inference_count = 14; m.execution_count = 5\n"
        "print(json.dumps({'name': r.model_name, 'input': [r.inputs[0].name, r.inputs[0].datatype,"
        " list(r.inputs[0].shape)], 'raw': len(r.raw_input_contents[0]), 'out': r.outputs[0].name,"
        " 'response': out.SerializeToString().hex(), 'stats': s.SerializeToString().hex()}))\n")
    out = subprocess.run([str(install.python), "-c", code, payload.hex()], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["name"] == "small_lstm" and seen["input"] == ["inputs", "FP32", [2, 8, 48]]
    assert seen["raw"] == 2 * 8 * 48 * 4 and seen["out"] == "outputs"
    assert InferResponseChecker("small_lstm", 2).problem(bytes.fromhex(seen["response"])) is None
    stats = kserve.ModelStatisticsResponse.FromString(bytes.fromhex(seen["stats"]))
    (model,) = stats.model_stats
    assert (model.inference_stats.success.count, model.inference_count, model.execution_count) == (7, 14, 5)


def test_triton_config_has_exact_shapes_and_the_python_backend_parameters(tmp_path):
    text = render_triton_config("medium_cnn", backend="python", saved_model=tmp_path / "m" / "1",
                                max_batch_size=16, instances=2, intra_op_threads=1)
    assert 'backend: "python"' in text and "max_batch_size: 16" in text
    assert "dims: [ 101, 82, 9 ]" in text and "dims: [ 101, 82, 1 ]" in text
    assert "count: 2" in text and "KIND_CPU" in text
    assert f'key: "saved_model" value: {{ string_value: "{tmp_path / "m" / "1"}" }}' in text
    assert 'key: "intra_op_threads" value: { string_value: "1" }' in text
    gpu = render_triton_config("small_lstm", backend="tensorflow", saved_model="/x", max_batch_size=8)
    assert 'platform: "tensorflow_savedmodel"' in gpu and "KIND_GPU" in gpu and "parameters" not in gpu
    with pytest.raises(ValueError, match="unknown Triton backend"):
        render_triton_config("small_lstm", backend="onnx", saved_model="/x")


def test_haproxy_checks_triton_by_its_own_server_ready():
    backends = [haproxy.Backend("s0", "127.0.0.1", 9000)]
    tfs = haproxy.render_config(1, 2, backends, timeout_s=5)
    triton = haproxy.render_config(1, 2, backends, timeout_s=5,
                                   health_uri="/inference.GRPCInferenceService/ServerReady")
    assert "uri /grpc.health.v1.Health/Check " in tfs
    assert "uri /inference.GRPCInferenceService/ServerReady " in triton and "grpc.health" not in triton


def test_server_is_an_axis_with_readable_ids(write_grid, tmp_path):
    base = {"name": "t", "experiment": {"model": ["small_lstm"], "server": ["osmi", "triton"]}}
    grid = load_grid(write_grid(base))
    ids = [e.id for e in expand(grid)]
    assert [i.split("-")[1] for i in ids] == ["osmi", "triton"], ids
    # Without the axis, ids are what they were before it existed (no server in them).
    plain = load_grid(write_grid({"name": "t", "experiment": {"model": ["small_lstm"]}}, "plain.yaml"))
    (only,) = expand(plain)
    assert "server" not in only.params and only.id.startswith("small_lstm-s1-")
    with pytest.raises(GridError) as err:
        load_grid(write_grid({**base, "experiment": {"model": ["small_lstm"], "server": ["torchserve"]}}, "b.yaml"))
    assert "experiment.server" in str(err.value) and "torchserve" in str(err.value)
    assert load_grid(write_grid({**base, "serve": {"server": "triton"}}, "s.yaml")).serve.server == "triton"


def test_job_script_starts_the_profiles_triton_container(write_grid, tmp_path):
    from osmi_ee.ee.cli import main

    grid = {"name": "t", "profile": "rivanna", "experiment": {"model": ["small_lstm"], "gpu": ["a100"],
                                                              "server": ["triton", "tfserving"]}}
    out = tmp_path / "sweep"
    assert main(["generate", "--grid", str(write_grid(grid)), "--out", str(out)]) == 0
    scripts = {p.parent.name.split("-")[1]: p.read_text() for p in out.glob("*/job.slurm")}
    assert "tritonserver_24.10-py3.sif tritonserver" in scripts["triton"]
    assert "--nv" in scripts["triton"].split("tritonserver_24.10")[0]
    assert "tensorflow_model_server" in scripts["tfserving"] and "tritonserver" not in scripts["tfserving"]
