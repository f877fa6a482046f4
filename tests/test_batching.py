"""Server-side batching: the grid axis, the rendered TF-Serving and Triton files
(golden), the queue itself, and osmi-model-server merging concurrent requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from osmi_ee.ee.config import Batching, GridError, batching_of, load_experiment_config, load_grid
from osmi_ee.ee.generate import generate
from osmi_ee.osmi.batching import (QueueSettings, batching_parameters_text, parse_batching_parameters,
                                   triton_model_config)
from osmi_ee.osmi.server_metrics import (PROCESSED_BATCH_SIZE_METRIC, batch_size_summary, histogram_difference,
                                         monitoring_config_text, parse_histogram, read_batch_sizes)
from osmi_ee.osmi.serving_batcher import Batcher
from osmi_ee.osmi.serving_models import ServingError

GOLDEN = Path(__file__).parent / "golden"
B32 = Batching(name="b32", max_batch_size=32, batch_timeout_us=1000, num_batch_threads=2,
               max_enqueued_batches=100, preferred_batch_sizes=(8, 16, 32))


# --------------------------------------------------------------------------- rendered files


@pytest.mark.parametrize("name, text", [
    ("tfserving_batching_parameters.txt", lambda: batching_parameters_text(B32)),
    ("triton_small_lstm_tensorflow_batching.pbtxt",
     lambda: triton_model_config("small_lstm", backend="tensorflow", batching=B32)),
    ("triton_small_lstm_python.pbtxt",
     lambda: triton_model_config("small_lstm", backend="python", max_batch_size=16)),
])
def test_rendered_files_match_golden(name, text):
    assert text() == (GOLDEN / name).read_text()


def test_parameters_file_reads_back_as_rendered():
    settings = parse_batching_parameters(batching_parameters_text(B32))
    assert settings == QueueSettings(max_batch_size=32, batch_timeout_us=1000, num_batch_threads=2,
                                     max_enqueued_batches=100)
    # Comments, another field order and defaults for what is left out, as TF-Serving reads it.
    assert parse_batching_parameters("# ours\nnum_batch_threads { value: 3 }\nmax_batch_size {value:8}") == \
        QueueSettings(max_batch_size=8, num_batch_threads=3)


@pytest.mark.parametrize("text, why", [
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n", "allowed_batch_sizes"),
    ("enable_large_batch_splitting { value: true }\n", "enable_large_batch_splitting"),
    ("max_batch_size { value: 0 }\n", "max_batch_size must be >= 1"),
    ("max_batch_sise { value: 8 }\n", "max_batch_sise"),
])
def test_parameters_file_refuses_what_the_queue_does_not_do(text, why):
    with pytest.raises(ValueError, match=why):
        parse_batching_parameters(text)


def test_triton_config_refuses_a_max_batch_below_the_batches():
    with pytest.raises(ValueError, match="below"):
        triton_model_config("small_lstm", batching=B32, max_batch_size=8)


# --------------------------------------------------------------------------- grid schema


def _grid(batching, **experiment) -> dict:
    return {"name": "g", "experiment": {"model": ["small_lstm"], "batching": batching, **experiment}}


@pytest.mark.parametrize("batching, expected", [
    ([{"max_batch_size": 0}], "experiment.batching[0].max_batch_size: an integer from 1"),
    ([{"max_batch_size": 8, "timeout": 5}], "experiment.batching[0].timeout: unknown key"),
    ([{"batch_timeout_us": 5}], "experiment.batching[0].max_batch_size: required"),
    ([{"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}],
     "experiment.batching[0].preferred_batch_sizes: every size must be at most max_batch_size (8)"),
    ([{"max_batch_size": 8, "preferred_batch_sizes": [4, 2]}], "increasing integers"),
    ([{"max_batch_size": 8, "num_batch_threads": 1.5}], "num_batch_threads: an integer from 1"),
    (["on"], "experiment.batching[0]: off, or a mapping"),
    (["off", None], "experiment.batching: lists a value twice"),
    ([{"name": "x", "max_batch_size": 8}, {"name": "x", "max_batch_size": 16}], "two settings share a name"),
    ([{"name": "x y", "max_batch_size": 8}], "experiment.batching[0].name"),
    ([{"max_batch_size": 2048}], "osmi-model-server runs at most 1024"),
])
def test_bad_batching_names_file_key_and_value(write_grid, tmp_path, batching, expected):
    path = write_grid(_grid(batching))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)
    assert list(tmp_path.iterdir()) == [path]  # nothing written


def test_client_batch_over_max_batch_size_is_refused(write_grid):
    with pytest.raises(GridError, match=r"experiment.batch: larger than batching 'b4'.*\(got \[8\]\)"):
        load_grid(write_grid(_grid([{"name": "b4", "max_batch_size": 4}], batch=[1, 8])))


def test_sweep_varies_batching_as_an_axis(write_grid, tmp_path):
    grid = load_grid(write_grid(_grid(["off", {"name": "b8", "max_batch_size": 8, "batch_timeout_us": 500},
                                       {"max_batch_size": 16}], clients=[4])))
    experiments = generate(grid, tmp_path / "sweep")
    ids = [e.id for e in experiments]
    assert len(set(ids)) == 3
    assert "sb_b8" in ids[1] and "sb_mb16_t0us" in ids[2] and "sb_" not in ids[0]
    # Off leaves the params as they were, so a grid without the axis keeps its ids.
    plain = generate(load_grid(write_grid({"name": "g", "experiment": {"model": ["small_lstm"], "clients": [4]}},
                                          "plain.yaml")), tmp_path / "plain")
    assert plain[0].id == ids[0]
    for experiment in experiments:  # each config.yaml re-validates to the same setting
        _, params, _ = load_experiment_config(tmp_path / "sweep" / experiment.id / "config.yaml")
        assert params.get("batching") == experiment.params.get("batching")
    b8 = batching_of(experiments[1].params["batching"])
    assert b8 == Batching(name="b8", max_batch_size=8, batch_timeout_us=500)


def test_bad_batching_in_config_yaml_is_caught_when_the_job_reads_it(write_grid, tmp_path):
    experiments = generate(load_grid(write_grid(_grid([{"max_batch_size": 8}]))), tmp_path / "s")
    config = tmp_path / "s" / experiments[0].id / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["experiment"]["batching"]["max_batch_size"] = -1
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(GridError, match="experiment.batching.max_batch_size"):
        load_experiment_config(config)


# --------------------------------------------------------------------------- the queue (no TensorFlow)


def _double(merged: dict[str, np.ndarray], calls: list[int], delay_s: float = 0.0) -> dict[str, np.ndarray]:
    calls.append(len(merged["x"]))
    time.sleep(delay_s)
    return {"y": merged["x"] * 2}


def test_queue_merges_concurrent_requests_and_splits_the_outputs():
    batcher = Batcher(QueueSettings(max_batch_size=8, batch_timeout_us=200_000, num_batch_threads=1,
                                    max_enqueued_batches=10))
    calls: list[int] = []
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(batcher.run, "k", {"x": np.full((1, 3), i, np.float32)},
                                   lambda m: _double(m, calls)) for i in range(8)]
            results = [f.result(timeout=10) for f in futures]
    finally:
        batcher.stop()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * i, np.float32))
    assert sum(calls) == 8 and max(calls) > 1, calls  # merged: fewer runs than requests
    assert batcher.sizes.snapshot() == {size: calls.count(size) for size in set(calls)}


def test_queue_refuses_too_large_and_too_many():
    batcher = Batcher(QueueSettings(max_batch_size=2, batch_timeout_us=0, num_batch_threads=1,
                                    max_enqueued_batches=1))
    calls: list[int] = []
    try:
        with pytest.raises(ServingError) as err:
            batcher.run("k", {"x": np.zeros((3, 1))}, lambda m: _double(m, calls))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # One slow batch running, one batch waiting (the limit): the next is refused.
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(batcher.run, "k", {"x": np.zeros((2, 1))}, lambda m: _double(m, calls, 0.3))
                       for _ in range(6)]
            codes = []
            for future in futures:
                try:
                    future.result(timeout=10)
                    codes.append("OK")
                except ServingError as exc:
                    codes.append(exc.code.name)
        assert "UNAVAILABLE" in codes and "OK" in codes, codes
    finally:
        batcher.stop()


def test_batch_size_summary_of_a_window():
    page = Batcher(QueueSettings(max_batch_size=4)).sizes
    for size in (1, 1, 4):
        page.record(size)
    before = parse_histogram(page.prometheus_page(), PROCESSED_BATCH_SIZE_METRIC)
    for size in (2, 4, 4):
        page.record(size)
    after = parse_histogram(page.prometheus_page(), PROCESSED_BATCH_SIZE_METRIC)
    summary = batch_size_summary([histogram_difference(after, before), None])
    assert summary == {"batches": 3, "mean": 10 / 3, "p50": 4.0, "max": 4.0, "per_bucket": {"2": 1, "4": 2}}
    assert batch_size_summary([None]) is None


# --------------------------------------------------------------------------- a real server

from tests.test_model_server import IN_SHAPE, OUT_SHAPE, Server, _free_port, _inputs, _outputs, _request  # noqa: E402

CALLERS = 12


@pytest.fixture(scope="module")
def rowwise_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel whose every output element depends on one input element only.

    A model with a reduction (a matmul) is not bit-identical across batch sizes in
    TensorFlow, batching or not: measured here, the tiny matmul model's batch-of-N
    rows differ from its batch-of-1 answers by up to 6e-6 (relative), because TF
    picks other kernels (GEMV vs GEMM). Without a reduction, the answer must be
    the same bits however the server merged the requests: that tests the merge
    and the split, end to end.
    """
    import tensorflow as tf

    class Rowwise(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *IN_SHAPE], tf.float32, name="inputs")])
        def serve(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"outputs": tf.tanh(inputs[:, :OUT_SHAPE[0], :OUT_SHAPE[1]]) * 3.0 + 0.5}

    base = tmp_path_factory.mktemp("models") / "rowwise"
    module = Rowwise()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return base


@pytest.mark.parametrize("text, flags, code, expected", [
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n", ["--enable_batching"], 1,
     "malformed batching parameters file {path}: not supported"),
    ("max_batch_size { value: 64 }\n", ["--enable_batching", "--max_batch=16"], 1,
     "batching max_batch_size 64 exceeds --max_batch=16"),
    ("max_batch_size { value: 8 }\n", [], 2, "--batching_parameters_file needs --enable_batching"),
])
def test_server_refuses_bad_batching_at_start(tmp_path: Path, text, flags, code, expected):
    import subprocess
    import sys

    (tmp_path / "model" / "1").mkdir(parents=True)  # refused before any model is loaded
    path = tmp_path / "batching_parameters.txt"
    path.write_text(text)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "osmi_ee.osmi.model_server", f"--model_base_path={tmp_path / 'model'}",
                           "--port=0", *flags, f"--batching_parameters_file={path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert expected.format(path=path) in done.stderr
    print(f"\nrefused in {time.monotonic() - started:.1f} s")


def test_server_merges_concurrent_batch1_requests(rowwise_model: Path, tmp_path: Path) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    parameters = tmp_path / "batching_parameters.txt"
    parameters.write_text(batching_parameters_text(
        Batching(name="t", max_batch_size=8, batch_timeout_us=50_000, num_batch_threads=1)))
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(monitoring_config_text())
    rest_port = _free_port()
    server = Server(tmp_path, rowwise_model, "--enable_batching", f"--batching_parameters_file={parameters}",
                    f"--grpc_max_threads={CALLERS + 2}", f"--rest_api_port={rest_port}",
                    f"--monitoring_config_file={monitoring}")
    try:
        server.wait_serving()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
        inputs = [_inputs(1) + i for i in range(CALLERS)]
        # One at a time first: each runs as a batch of 1 (the unbatched answer).
        alone = [_outputs(stub.Predict(_request(x), timeout=30)) for x in inputs]
        before = read_batch_sizes("127.0.0.1", rest_port)
        barrier = threading.Barrier(CALLERS)

        def call(x: np.ndarray) -> np.ndarray:
            barrier.wait(timeout=30)
            return _outputs(stub.Predict(_request(x), timeout=30))

        with ThreadPoolExecutor(CALLERS) as pool:
            together = list(pool.map(call, inputs))
        after = read_batch_sizes("127.0.0.1", rest_port)
    finally:
        assert server.terminate() == 0, server.stderr
    for x, one, merged in zip(inputs, alone, together):
        expected = np.tanh(x[:, :OUT_SHAPE[0], :OUT_SHAPE[1]]) * 3 + 0.5
        np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(merged, one)  # bit for bit what the request gets alone
    window = batch_size_summary([histogram_difference(after, before)])
    assert window is not None and window["batches"] < CALLERS, window
    assert window["max"] > 1 and window["mean"] * window["batches"] == CALLERS, window
    print(f"\n{CALLERS} concurrent batch-1 requests ran as {window['batches']} batches: {window['per_bucket']}")
    assert "batching on: max_batch_size 8, batch_timeout_micros 50000" in server.stderr


def _triton_model_config_proto():
    """Triton's own ModelConfig message (tritonclient), or skip where it is not installed."""
    try:
        from tritonclient.grpc import model_config_pb2
        return model_config_pb2
    except ImportError:
        pass
    import importlib.util

    found = sorted(Path(__file__).parents[1].glob(
        "build/*/lib/python3*/site-packages/tritonclient/grpc/model_config_pb2.py"))
    if not found:
        pytest.skip("tritonclient's model_config_pb2 is not installed")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_configs_parse_as_triton_model_config():
    from google.protobuf import text_format

    proto = _triton_model_config_proto()
    config = text_format.Parse((GOLDEN / "triton_small_lstm_tensorflow_batching.pbtxt").read_text(),
                               proto.ModelConfig())
    assert (config.platform, config.max_batch_size) == ("tensorflow_savedmodel", 32)
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert list(config.input[0].dims) == [8, 48] and list(config.output[0].dims) == [2, 12]
    plain = text_format.Parse((GOLDEN / "triton_small_lstm_python.pbtxt").read_text(), proto.ModelConfig())
    assert plain.backend == "python" and not plain.HasField("dynamic_batching")
