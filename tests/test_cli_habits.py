"""CLI habits people bring from Hydra and perf_analyzer: overrides, --dry-run, --version,
a clear word when a step is missing, and the light (TensorFlow-free) install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import yaml

from osmi_ee.ee import cli
from osmi_ee.ee.config import GridError, load_grid

REPO = Path(__file__).resolve().parents[1]
GRID = {"name": "habits", "experiment": {"model": ["small_lstm"], "servers": [1, 2], "batch": [1]},
        "measure": {"duration_s": 3}}


def test_overrides_are_validated_like_the_file_and_recorded(write_grid, tmp_path, capsys):
    path = write_grid(GRID)
    grid = load_grid(path, overrides=["experiment.batch=1,16", "measure.duration_s=5"])
    assert grid.axes["batch"] == [1, 16] and grid.measure.duration_s == 5.0
    with pytest.raises(GridError) as err:
        load_grid(path, overrides=["measure.duration_s=.inf"])
    assert "measure.duration_s" in str(err.value)
    with pytest.raises(GridError) as err:
        load_grid(path, overrides=["measure.bogus=1", "nonsense"])
    text = str(err.value)
    assert "command line" in text and "'nonsense'" in text
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out), "experiment.batch=1,16"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["overrides"] == ["experiment.batch=1,16"] and len(sweep["experiments"]) == 4
    bad = tmp_path / "bad"
    assert cli.main(["generate", "--grid", str(path), "--out", str(bad), "measure.timeout_s=-1"]) == 2
    assert not bad.exists()  # nothing written on bad input


def test_dry_run_prints_the_expansion_and_writes_nothing(write_grid, tmp_path, capsys):
    path = write_grid(GRID)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "servers=1" in lines[0] and "servers=2" in lines[1]
    assert lines[-1].startswith("2 experiments would be written") and not out.exists()


def test_dry_run_of_a_single_point_grid_lists_its_values(write_grid, tmp_path, capsys):
    # With no varying axis every axis is listed, and the axes that are off by
    # default (server, batching, balancer) are absent from an experiment's values.
    path = write_grid({**GRID, "experiment": {"model": ["small_lstm"], "servers": [2], "batch": [1]}})
    assert cli.main(["generate", "--grid", str(path), "--out", str(tmp_path / "sweep"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "model=small_lstm" in lines[0] and "servers=2" in lines[0]
    assert "server=" not in lines[0] and "batching=" not in lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("osmi-ee 0.")


def test_analyze_before_generate_or_run_says_what_to_do(write_grid, tmp_path, capsys):
    path = write_grid(GRID)
    out = tmp_path / "sweep"
    assert cli.main(["analyze", "--grid", str(path), "--out", str(out)]) == 2
    assert "run `make generate`" in capsys.readouterr().err
    assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 0
    assert cli.main(["analyze", "--grid", str(path), "--out", str(out)]) == 2
    assert "has finished yet" in capsys.readouterr().err


# A light install has no TensorFlow: this finder makes it unimportable, as it would be.
BLOCK_TF = textwrap.dedent("""
    import importlib.abc, sys
    class _NoTF(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tensorflow_serving", "keras"):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, _NoTF())
""")


def run_without_tf(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = BLOCK_TF + textwrap.dedent(f"""
        import importlib.util
        importlib.util.find_spec = (lambda f: lambda n, *a: None if n.split('.')[0] in
            ('tensorflow', 'tensorflow_serving') else f(n, *a))(importlib.util.find_spec)
        from osmi_ee.ee.cli import main
        rc = main({args!r})
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        sys.exit(rc)
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_login_node_commands_run_without_tensorflow(write_grid, tmp_path):
    path = write_grid(GRID)
    out = tmp_path / "sweep"
    for args in (["generate"], ["status"]):
        done = run_without_tf([*args, "--grid", str(path), "--out", str(out)], tmp_path)
        assert done.returncode == 0, done.stderr
    models = run_without_tf(["models", "--grid", str(path)], tmp_path)
    assert models.returncode == 2
    assert "pip install 'osmi-ee[serve]'" in models.stderr and "Traceback" not in models.stderr


@pytest.mark.slow
def test_a_fresh_install_without_extras_generates_reports_status_and_analyzes(write_grid, tmp_path):
    """`pip install .` in its own venv (no TensorFlow), then the login-node commands on a
    sweep whose results were made elsewhere."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    has_tf = subprocess.run([str(py), "-c", "import tensorflow"], capture_output=True)
    assert has_tf.returncode != 0  # the light install really is light

    path = write_grid(GRID)
    out = tmp_path / "sweep"
    osmi = env_dir / "bin" / "osmi-ee"
    env = {**os.environ, "PYTHONPATH": ""}
    assert subprocess.run([str(osmi), "generate", "--grid", str(path), "--out", str(out)],
                          env=env, cwd=tmp_path, timeout=120).returncode == 0
    # Results as a job elsewhere would have left them.
    for exp_id in json.loads((out / "sweep.json").read_text())["experiments"]:
        results = out / exp_id / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / "summary.json").write_text(json.dumps({
            "schema": "osmi-ee/summary/1", "experiment_id": exp_id, "valid": True, "reasons": [],
            "requests": {"sent": 200, "ok": 200, "failed": 0}, "samples_ok": 200, "window_s": 2.0,
            "throughput": {"samples_per_s": 100.0, "samples_per_s_ci95": [95.0, 105.0], "requests_per_s": 100.0},
            "latency_ms": {"n": 200, "mean": 10.0, "p50": 10.0, "p90": 12.0, "p99": None, "max": 20.0},
            "backends": {"s0": {"requests": 200, "share": 1.0}}}))
        (out / exp_id / "status").write_text("valid\n")
    status = subprocess.run([str(osmi), "status", "--grid", str(path), "--out", str(out)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "total=2 valid=2" in status.stdout, status.stdout + status.stderr
    analyze = subprocess.run([str(osmi), "analyze", "--grid", str(path), "--out", str(out)],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    assert (out / "dataset.csv").exists() and (out / "report" / "index.html").exists()
    assert yaml.safe_load((out / exp_id / "config.yaml").read_text())["name"] == "habits"
