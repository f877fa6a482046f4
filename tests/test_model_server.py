"""osmi-model-server as a real subprocess, driven with TF-Serving's own client stubs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from osmi_ee.osmi.model_config import render_model_config  # noqa: E402

from osmi_ee.osmi.server_metrics import (  # noqa: E402
    MONITORING_PATH, REQUEST_COUNT_METRIC, monitoring_config_text, parse_request_counts_by_status,
    read_request_counts)

SERVER = Path(sys.executable).with_name("osmi-model-server")
HOST = "127.0.0.1"
MODEL = "tiny"
IN_SHAPE, OUT_SHAPE = (8, 48), (2, 12)
START_TIMEOUT = 180.0  # TF import + load on a busy 2-core box
MAX_BATCH = 16  # the shared server's --max_batch
MAX_MESSAGE = 1 << 20  # the shared server's --max_message_bytes


@dataclass
class TinyModel:
    base_path: Path
    weights: np.ndarray  # (8*48, 24): outputs = reshape(inputs_flat @ weights)

    def expected(self, x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) @ self.weights).reshape((len(x), *OUT_SHAPE))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((int(np.prod(IN_SHAPE)), int(np.prod(OUT_SHAPE)))).astype(np.float32)

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights)

        @tf.function(input_signature=[tf.TensorSpec([None, *IN_SHAPE], tf.float32, name="inputs")])
        def serve(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            flat = tf.reshape(inputs, [-1, int(np.prod(IN_SHAPE))])
            return {"outputs": tf.reshape(tf.matmul(flat, self.w), [-1, *OUT_SHAPE])}

    base = tmp_path_factory.mktemp("models") / MODEL
    module = Tiny()
    tf.saved_model.save(module, str(base / "2"), signatures={"serving_default": module.serve})
    # Versions are compared as numbers ("10" > "2"); non-numeric folders are ignored.
    shutil.copytree(base / "2", base / "10")
    (base / "tmp-export").mkdir()
    return TinyModel(base, weights)


class Server:
    def __init__(self, tmp: Path, base_path: Path, *extra: str, bind_host: str | None = HOST) -> None:
        config = tmp / "models.config"
        config.write_text(render_model_config({MODEL: base_path}))
        self.port_file = tmp / "port"
        self.stderr_path = tmp / "stderr.log"
        self.started = time.monotonic()
        bind = ["--grpc_bind_host", bind_host] if bind_host is not None else []  # None: the default
        self.proc = subprocess.Popen(
            [str(SERVER), "--port=0", f"--port_file={self.port_file}", *bind,
             f"--model_config_file={config}", "--tensorflow_intra_op_parallelism=1",
             "--tensorflow_inter_op_parallelism=1", "--grpc_max_threads=4", *extra],
            stderr=self.stderr_path.open("w"), stdout=subprocess.DEVNULL)
        self.port = 0
        self.rest_port = 0  # set by whoever passed --rest_api_port
        self.channel: grpc.Channel | None = None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_serving(self) -> float:
        """Seconds from process start to health SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = self.started + START_TIMEOUT
        while not self.port_file.exists():
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{self.stderr}"
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())
        self.channel = grpc.insecure_channel(f"{HOST}:{self.port}")
        health = health_pb2_grpc.HealthStub(self.channel)
        while True:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"not SERVING after {START_TIMEOUT} s:\n{self.stderr}"
            try:
                if health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - self.started
            except grpc.RpcError:
                pass
            time.sleep(0.1)

    def terminate(self, timeout: float = 15.0) -> int:
        if self.channel is not None:
            self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server: default bind host, small limits, REST with the Prometheus page."""
    tmp = tmp_path_factory.mktemp("server")
    monitoring = tmp / "monitoring.config"
    monitoring.write_text(monitoring_config_text())
    rest_port = _free_port()
    srv = Server(tmp, tiny_model.base_path, f"--rest_api_port={rest_port}",
                 f"--monitoring_config_file={monitoring}", f"--max_batch={MAX_BATCH}",
                 f"--max_message_bytes={MAX_MESSAGE}", bind_host=None)
    srv.rest_port = rest_port
    try:
        startup = srv.wait_serving()
        print(f"\nosmi-model-server start-up to SERVING: {startup:.2f} s")
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


@pytest.fixture(scope="module")
def stubs(server: Server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    return (prediction_service_pb2_grpc.PredictionServiceStub(server.channel),
            model_service_pb2_grpc.ModelServiceStub(server.channel))


def _request(x: np.ndarray | None = None, name: str = MODEL):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    if x is not None:
        tensor = request.inputs["inputs"]
        tensor.dtype = {np.float32: 1, np.float64: 2}[x.dtype.type]
        for size in x.shape:
            tensor.tensor_shape.dim.add().size = size
        tensor.tensor_content = x.tobytes()
    return request


def _outputs(response) -> np.ndarray:
    proto = response.outputs["outputs"]
    assert proto.dtype == 1  # DT_FLOAT
    shape = [d.size for d in proto.tensor_shape.dim]
    return np.frombuffer(proto.tensor_content, np.float32).reshape(shape)


def _inputs(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, *IN_SHAPE)).astype(np.float32)


def test_predict_tensor_content(server: Server, stubs, tiny_model: TinyModel) -> None:
    x = _inputs(3)
    response = stubs[0].Predict(_request(x), timeout=30)
    np.testing.assert_allclose(_outputs(response), tiny_model.expected(x), rtol=1e-4, atol=1e-4)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 10  # highest numeric version folder
    assert response.model_spec.signature_name == "serving_default"
    # Rough latency, for the record (not asserted: the box is shared).
    start = time.perf_counter()
    for _ in range(50):
        stubs[0].Predict(_request(_inputs(1)), timeout=30)
    print(f"\nPredict batch 1 mean latency: {(time.perf_counter() - start) / 50 * 1e3:.2f} ms")


def test_predict_float_val_matches_tensor_content(stubs) -> None:
    x = _inputs(2)
    request = _request(x)
    tensor = request.inputs["inputs"]
    tensor.ClearField("tensor_content")
    tensor.float_val.extend(x.ravel().tolist())  # the typed-field encoding older clients send
    by_values = _outputs(stubs[0].Predict(request, timeout=30))
    by_content = _outputs(stubs[0].Predict(_request(x), timeout=30))
    np.testing.assert_array_equal(by_values, by_content)


def test_output_filter_unknown_is_invalid(stubs) -> None:
    request = _request(_inputs(1))
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in err.value.details()


def test_wrong_dtype_is_invalid_argument(stubs) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(_request(_inputs(1).astype(np.float64)), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'inputs'" in err.value.details()
    assert "DT_FLOAT" in err.value.details() and "DT_DOUBLE" in err.value.details()


def test_wrong_shape_is_invalid_argument(stubs) -> None:
    x = np.zeros((2, 8, 40), np.float32)
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(_request(x), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'inputs'" in err.value.details() and "[2, 8, 40]" in err.value.details()


def test_missing_input_is_invalid_argument(stubs) -> None:
    request = _request(_inputs(1))
    request.inputs["other"].CopyFrom(request.inputs.pop("inputs"))
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other" in err.value.details()


def test_unknown_model_version_signature_not_found(stubs) -> None:
    unknown_model = _request(_inputs(1), name="nope")
    old_version = _request(_inputs(1))
    old_version.model_spec.version.value = 2  # on disk, but not the served (latest) version
    unknown_signature = _request(_inputs(1))
    unknown_signature.model_spec.signature_name = "nope_sig"
    for request, word in ((unknown_model, "nope"), (old_version, "2"), (unknown_signature, "nope_sig")):
        with pytest.raises(grpc.RpcError) as err:
            stubs[0].Predict(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert word in err.value.details()


def test_get_model_metadata(stubs) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = stubs[0].GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 10
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert [d.size for d in sig.inputs["inputs"].tensor_shape.dim] == [-1, *IN_SHAPE]
    assert sig.inputs["inputs"].dtype == 1
    assert [d.size for d in sig.outputs["outputs"].tensor_shape.dim] == [-1, *OUT_SHAPE]


def test_get_model_status_and_unimplemented(stubs) -> None:
    from tensorflow_serving.apis import classification_pb2, get_model_status_pb2

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = stubs[1].GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == \
        [(10, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as err:
        stubs[1].GetModelStatus(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Classify(classification_pb2.ClassificationRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_per_model(server: Server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=MODEL), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert f"serving on {HOST}:{server.port}" in server.stderr
    assert f"loaded model {MODEL} version 10" in server.stderr


def _counts(server: Server) -> dict[tuple[str, str], int]:
    with urllib.request.urlopen(f"http://{HOST}:{server.rest_port}{MONITORING_PATH}", timeout=30) as reply:
        return parse_request_counts_by_status(reply.read().decode())


def _delta(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


def test_binds_loopback_by_default(server: Server) -> None:
    import psutil

    from osmi_ee.osmi.model_server import parse_args

    assert parse_args(["--model_name=m", "--model_base_path=/x"]).grpc_bind_host == "127.0.0.1"
    # The shared server was started without --grpc_bind_host: everything it listens on is loopback.
    listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)  # gRPC's socket is dual-stack, IPv4-mapped
                 for c in psutil.Process(server.proc.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {(HOST, server.port), (HOST, server.rest_port)}
    assert f"serving on {HOST}:{server.port}, REST on {HOST}:{server.rest_port}" in server.stderr


def test_oversized_message_is_resource_exhausted(server: Server, stubs) -> None:
    before = _counts(server)
    request = _request(_inputs(1))
    request.output_filter.append("x" * (MAX_MESSAGE + 1))  # a valid batch of 1 in an oversized message
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details() and str(MAX_MESSAGE) in err.value.details()
    assert _counts(server) == before  # refused by gRPC itself: never reached the servicer (TF-Serving too)


def test_amplifying_request_is_refused_quickly(stubs) -> None:
    # ~67 bytes declaring 38.4 M floats: TF's make_ndarray would broadcast the one value (61 s of CPU).
    request = _request()
    tensor = request.inputs["inputs"]
    tensor.dtype = 1
    for size in (100_000, *IN_SHAPE):
        tensor.tensor_shape.dim.add().size = size
    tensor.float_val.append(0.5)
    assert request.ByteSize() < 100
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=30)
    elapsed = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "float_val holds 1 values" in err.value.details() and f"{100_000 * 8 * 48} elements" in err.value.details()
    assert elapsed < 2.0, f"took {elapsed:.1f} s"


@pytest.mark.parametrize("shape, content, words", [
    ((3, *IN_SHAPE), _inputs(2).tobytes(), ["tensor_content holds 3072 bytes", "1152 elements"]),
    ((2**62, *IN_SHAPE), _inputs(1).tobytes(), ["tensor_content holds 1536 bytes", str(2**62 * 384)]),
    ((-1, *IN_SHAPE), b"", ["negative dimension", "[-1, 8, 48]"]),
    ((2, *IN_SHAPE), _inputs(2).tobytes()[:-2], ["not a multiple of 4"]),
], ids=["short-content", "absurd-dim", "negative-dim", "ragged-bytes"])
def test_declared_shape_must_match_payload(stubs, shape: tuple[int, ...], content: bytes, words: list[str]) -> None:
    request = _request()
    tensor = request.inputs["inputs"]
    tensor.dtype = 1
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_content = content
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in err.value.details()


def test_batch_above_max_batch_is_resource_exhausted(stubs, tiny_model: TinyModel) -> None:
    x = _inputs(MAX_BATCH)
    np.testing.assert_allclose(_outputs(stubs[0].Predict(_request(x), timeout=30)), tiny_model.expected(x),
                               rtol=1e-4, atol=1e-4)  # the limit itself is allowed
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(_request(_inputs(MAX_BATCH + 1)), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"batch {MAX_BATCH + 1}" in err.value.details()
    assert f"--max_batch={MAX_BATCH}" in err.value.details()


def test_garbage_bytes_are_invalid_argument(server: Server) -> None:
    for method in ("/tensorflow.serving.PredictionService/Predict",
                   "/tensorflow.serving.PredictionService/GetModelMetadata",
                   "/tensorflow.serving.ModelService/GetModelStatus"):
        raw = server.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\x00garbage", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "cannot parse the request message" in err.value.details()


def test_metrics_count_every_predict_call(server: Server, stubs) -> None:
    from concurrent.futures import ThreadPoolExecutor

    before = _counts(server)
    for _ in range(5):
        stubs[0].Predict(_request(_inputs(1)), timeout=30)
    with pytest.raises(grpc.RpcError):
        stubs[0].Predict(_request(_inputs(1).astype(np.float64)), timeout=30)
    with pytest.raises(grpc.RpcError):
        stubs[0].Predict(_request(_inputs(1), name="nope"), timeout=30)
    raw = server.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError):
        raw(b"\xff\x00garbage", timeout=30)
    # Not Predict calls over gRPC: TF-Serving does not count these either.
    post = urllib.request.Request(f"http://{HOST}:{server.rest_port}/v1/models/{MODEL}:predict",
                                  data=json.dumps({"instances": _inputs(1).tolist()}).encode(), method="POST")
    urllib.request.urlopen(post, timeout=30).close()
    from tensorflow_serving.apis import get_model_status_pb2

    stubs[1].GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": MODEL}), timeout=30)
    assert _delta(before, _counts(server)) == {
        (MODEL, "OK"): 5, (MODEL, "INVALID_ARGUMENT"): 1, ("nope", "NOT_FOUND"): 1, ("", "INVALID_ARGUMENT"): 1}

    # Thread safety: concurrent calls on all worker threads, none lost.
    before = _counts(server)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: stubs[0].Predict(_request(_inputs(1)), timeout=60), range(40)))
    assert _delta(before, _counts(server)) == {(MODEL, "OK"): 40}
    assert read_request_counts(HOST, server.rest_port)[MODEL] == sum(
        count for (model, _), count in _counts(server).items() if model == MODEL)


def test_metrics_page_format(server: Server) -> None:
    with urllib.request.urlopen(f"http://{HOST}:{server.rest_port}{MONITORING_PATH}", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        lines = reply.read().decode().splitlines()
    assert lines[0] == f"# TYPE {REQUEST_COUNT_METRIC} counter"
    assert any(line.startswith(f'{REQUEST_COUNT_METRIC}{{model_name="{MODEL}",status="OK"}} ') for line in lines)


def test_rest_limits(server: Server) -> None:
    import http.client

    url = f"http://{HOST}:{server.rest_port}/v1/models/{MODEL}:predict"
    body = json.dumps({"instances": _inputs(MAX_BATCH + 1).tolist()}).encode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30)
    assert err.value.code == 429 and f"--max_batch={MAX_BATCH}" in json.load(err.value)["error"]
    # A body announced over --max_message_bytes is refused from its headers, before it is read.
    conn = http.client.HTTPConnection(HOST, server.rest_port, timeout=30)
    try:
        conn.putrequest("POST", f"/v1/models/{MODEL}:predict")
        conn.putheader("Content-Length", str(MAX_MESSAGE + 1))
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 429
        assert f"--max_message_bytes={MAX_MESSAGE}" in json.loads(reply.read())["error"]
    finally:
        conn.close()


def test_memory_error_in_predict_is_resource_exhausted(caplog: pytest.LogCaptureFixture) -> None:
    from osmi_ee.osmi.serving_grpc import _call

    def body() -> None:
        raise MemoryError

    response, error = _call("Predict", body, object())
    assert response is None and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of memory" in error.message and "Predict: out of memory" in caplog.text


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def test_rest_and_sigterm(tiny_model: TinyModel, tmp_path: Path) -> None:
    rest_port = _free_port()
    srv = Server(tmp_path, tiny_model.base_path, f"--rest_api_port={rest_port}")
    try:
        srv.wait_serving()
        url = f"http://{HOST}:{rest_port}/v1/models/{MODEL}"
        with urllib.request.urlopen(url, timeout=30) as reply:
            assert json.load(reply)["model_version_status"][0]["state"] == "AVAILABLE"
        x = _inputs(2)
        for body, key in (({"instances": x.tolist()}, "predictions"), ({"inputs": x.tolist()}, "outputs")):
            post = urllib.request.Request(url + ":predict", data=json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(post, timeout=30) as reply:
                got = np.asarray(json.load(reply)[key], np.float32)
            np.testing.assert_allclose(got, tiny_model.expected(x), rtol=1e-4, atol=1e-4)
        bad = urllib.request.Request(url + ":predict", data=json.dumps({"instances": [[1.0]]}).encode())
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=30)
        assert err.value.code == 400 and "inputs" in json.load(err.value)["error"]
        with pytest.raises(urllib.error.HTTPError) as err:  # no --monitoring_config_file: no metrics page
            urllib.request.urlopen(f"http://{HOST}:{rest_port}{MONITORING_PATH}", timeout=30)
        assert err.value.code == 404

        started = time.monotonic()
        assert srv.terminate(timeout=15) == 0
        assert time.monotonic() - started < 15
        assert "stopping" in srv.stderr
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SERVER), *args], capture_output=True, text=True, timeout=120)


def test_bad_config_path_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.config"
    result = _run("--port=0", f"--model_config_file={missing}")
    assert result.returncode == 1
    assert str(missing) in result.stderr


def test_missing_model_dir_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    result = _run("--port=0", "--model_name=m", f"--model_base_path={missing}")
    assert result.returncode == 1 and str(missing) in result.stderr
    (tmp_path / "empty").mkdir()
    result = _run("--port=0", "--model_name=m", f"--model_base_path={tmp_path / 'empty'}")
    assert result.returncode == 1 and "no numeric version folder" in result.stderr


def test_flag_errors_and_help(tmp_path: Path) -> None:
    result = _run("--no_such_flag=1", "--model_name=m", "--model_base_path=/x")
    assert result.returncode != 0 and "no_such_flag" in result.stderr
    result = _run("--port=0")  # neither form
    assert result.returncode != 0
    result = _run("--model_config_file=/x", "--model_base_path=/y")  # both forms
    assert result.returncode != 0
    result = _run("--help")
    assert result.returncode == 0 and "--model_config_file" in result.stdout


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    (tmp_path / "m" / "1").mkdir(parents=True)  # never loaded: binding fails first
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run(f"--port={port}", f"--grpc_bind_host={HOST}", "--model_name=m",
                      f"--model_base_path={tmp_path / 'm'}")
    assert result.returncode == 1 and f"{HOST}:{port}" in result.stderr


def test_bad_monitoring_config_exits_1(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)  # never loaded: the config fails first
    model = ["--port=0", "--model_name=m", f"--model_base_path={tmp_path / 'm'}"]
    missing = tmp_path / "no-such-monitoring.config"
    result = _run(*model, f"--monitoring_config_file={missing}")
    assert result.returncode == 1 and str(missing) in result.stderr
    malformed = tmp_path / "monitoring.config"
    malformed.write_text("prometheus_config { enable: yes please }\n")
    result = _run(*model, f"--monitoring_config_file={malformed}")
    assert result.returncode == 1 and "malformed monitoring config file" in result.stderr
    assert str(malformed) in result.stderr


def test_limit_flags_are_checked() -> None:
    for flag in ("--max_batch=0", "--max_message_bytes=0", f"--max_message_bytes={2**31}"):
        result = _run("--model_name=m", "--model_base_path=/x", flag)
        assert result.returncode == 2 and flag.split("=")[0] in result.stderr, flag


def test_fatal_error_is_logged_before_exit(tmp_path: Path) -> None:
    # serve() replaced by one that fails: main() must log the traceback, with faulthandler already on.
    code = ("import faulthandler, sys; import osmi_ee.osmi.model_server as ms\n"
            "def boom(args, shutdown):\n"
            "    raise RuntimeError(f'boom faulthandler={faulthandler.is_enabled()}')\n"
            "ms.serve = boom\n"
            "sys.exit(ms.main(['--model_name=m', '--model_base_path=/x']))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "CRITICAL fatal error, exiting" in result.stderr
    assert "RuntimeError: boom faulthandler=True" in result.stderr
