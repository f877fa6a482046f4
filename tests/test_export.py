"""Export of a TF-Serving SavedModel: signature names, values, skip, CLI, config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from osmi_ee.osmi import export  # noqa: E402
from osmi_ee.osmi.model_config import load_model_config  # noqa: E402

TRAIN = dict(samples=8, epochs=1, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    results = export.export_models(["small_lstm"], out, progress=False, **TRAIN)
    return out, results


@pytest.fixture(scope="module")
def loaded(exported):
    import tensorflow as tf

    out, _ = exported
    return tf.saved_model.load(str(out / "small_lstm" / "1"))


def test_layout(exported):
    out, results = exported
    version = out / "small_lstm" / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "variables").is_dir()
    assert [r.path for r in results] == [version]
    assert results[0].exported
    # Weights only (~8 MB of float32), no optimizer slots (which would triple it).
    assert 1_990_040 * 4 <= results[0].size_bytes < 2 * 1_990_040 * 4
    # No temporary folder left beside the version.
    assert sorted(p.name for p in (out / "small_lstm").iterdir()) == ["1"]


def test_signature_names_and_shapes(loaded):
    import tensorflow as tf

    assert list(loaded.signatures) == ["serving_default"]
    sig = loaded.signatures["serving_default"]
    args, kwargs = sig.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["inputs"]
    assert kwargs["inputs"].dtype == tf.float32
    assert kwargs["inputs"].shape.as_list() == [None, 8, 48]
    outputs = sig.structured_outputs
    assert list(outputs) == ["outputs"]
    assert outputs["outputs"].dtype == tf.float32
    assert outputs["outputs"].shape.as_list() == [None, 2, 12]


def test_served_values_match_keras_model(loaded):
    import tensorflow as tf

    # Same name and seed -> the same trained weights as the export.
    model = export.train_model("small_lstm", **TRAIN)
    x = np.random.default_rng(1).uniform(size=(5, 8, 48)).astype(np.float32)
    served = loaded.signatures["serving_default"](inputs=tf.constant(x))["outputs"].numpy()
    expected = np.asarray(model(x, training=False))
    assert served.shape == (5, 2, 12)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    # Training moved the weights: the untrained model answers differently.
    untrained = np.asarray(export.train_model("small_lstm", samples=0, seed=0)(x))
    assert not np.allclose(served, untrained, atol=1e-6)


def test_second_export_is_skipped(exported):
    out, _ = exported
    pb = out / "small_lstm" / "1" / "saved_model.pb"
    before = pb.stat().st_mtime_ns
    start = time.perf_counter()
    results = export.export_models(["small_lstm"], out, progress=False, **TRAIN)
    assert time.perf_counter() - start < 5
    assert not results[0].exported
    assert pb.stat().st_mtime_ns == before


def test_model_config_lists_absolute_base_path(exported):
    out, _ = exported
    config = out / "models.config"
    assert config.is_file()
    models = load_model_config(config)
    assert models == {"small_lstm": (out / "small_lstm").resolve()}
    assert models["small_lstm"].is_absolute()


def test_cli_unknown_model_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        export.main(["--models", "small_lstm,huge_gpt", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "huge_gpt" in err and "small_lstm" in err and "large_tcnn" in err
    assert not out.exists()


def test_cli_skip_does_not_import_tensorflow(exported):
    # A skip must stay cheap: run the CLI in a fresh interpreter and check
    # TensorFlow never got imported.
    out, _ = exported
    code = (
        "import sys; from osmi_ee.osmi.export import main; "
        f"rc = main(['--models', 'small_lstm', '--out', {str(out)!r}]); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "small_lstm" in proc.stdout and "skipped" in proc.stdout


def test_cli_help():
    proc = subprocess.run(
        [sys.executable, "-m", "osmi_ee.osmi.export", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--models" in proc.stdout and "large_tcnn" in proc.stdout


def test_failed_export_leaves_no_half_model(tmp_path, monkeypatch):
    def boom(model, spec, path):
        (Path(path) / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "save_serving_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_model("small_lstm", tmp_path, samples=0)
    assert list((tmp_path / "small_lstm").iterdir()) == []
    assert not export.is_exported(tmp_path / "small_lstm" / "1")


def test_force_replaces_existing_export(tmp_path):
    first = export.export_model("small_lstm", tmp_path, samples=0)
    (first / "marker").write_text("old export")
    again = export.export_model("small_lstm", tmp_path, samples=0, force=True)
    assert again == first and export.is_exported(again)
    assert not (again / "marker").exists()
    assert sorted(p.name for p in (tmp_path / "small_lstm").iterdir()) == ["1"]
