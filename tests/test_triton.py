"""Triton as a second real server: real tritonserver shards (the pip-installed one, `make
triton`), real HAProxy, real clients; and a stub environment with the wrong numpy, which
must never give a VALID run."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.paths import SweepPaths
from osmi_ee.osmi import triton_setup
from osmi_ee.osmi.triton_setup import STUB_PY_VERSION, STUB_PYTHON, TritonInstall, TritonSetupError
from tests.test_e2e import run_sweep

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_haproxy")]


@pytest.fixture(scope="session")
def triton() -> TritonInstall:
    install = TritonInstall.default()
    problems = triton_setup.version_problems(install)
    if problems:
        pytest.fail("the local Triton is not ready: run `make triton` (osmi-ee setup triton): " + "; ".join(problems))
    triton_setup.prepare(install)
    return install


@pytest.fixture(scope="session")
def numpy2_env(triton, tmp_path_factory) -> TritonInstall:
    """The Triton env with numpy 2 in front: a Debian 3.11 venv whose own site-packages hold
    this venv's numpy 2 (links), then the good env's packages and binaries (a .pth, links)."""
    root = tmp_path_factory.mktemp("numpy2-env")
    subprocess.run([STUB_PYTHON, "-m", "venv", "--without-pip", str(root)], check=True)
    broken = TritonInstall(root)
    numpy_dist = metadata.distribution("numpy")
    assert numpy_dist.version.startswith("2."), "this test needs numpy 2 in the project's venv"
    numpy_dir = Path(numpy_dist.locate_file("numpy"))
    for item in (numpy_dir, numpy_dir.with_name("numpy.libs"), Path(numpy_dist._path)):  # noqa: SLF001
        if item.exists():
            (broken.site / item.name).symlink_to(item)
    (broken.site / "zz-osmi-good-env.pth").write_text(f"{triton.site}\n")
    for name in ("pytriton", "nvidia_pytriton.libs"):
        (broken.site / name).symlink_to(triton.site / name)
    (root / "bin" / "perf_analyzer").symlink_to(triton.perf_analyzer)
    triton_setup.prepare(broken)
    return broken


def grid(models_dir: Path, **over) -> dict:
    data = {
        "name": "triton-e2e",
        "experiment": {"model": ["small_lstm"], "server": ["osmi", "triton"], "servers": [2], "clients": [2],
                       "batch": [4]},
        # One window (the stability rule is unit-tested): a busy machine must not make this flaky.
        "measure": {"warmup_requests": 2, "requests": 40, "min_requests": 60, "timeout_s": 30,
                    "stability_windows": 1, "stability_max_windows": 1},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 180},
    }
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def summaries(sweep: SweepPaths) -> dict[str, dict]:
    found = [json.loads(sweep.experiment(i).summary.read_text()) for i in sweep.experiment_ids()]
    return {s["params"].get("server"): s for s in found}


def leftovers(sweep: SweepPaths) -> str:
    return subprocess.run(["pgrep", "-af", str(sweep.root)], capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_osmi_and_triton_are_both_valid_balanced_and_named(triton, write_grid, tmp_path, models_dir, capsys):
    rc, sweep, path = run_sweep(write_grid, tmp_path, grid(models_dir))
    results = summaries(sweep)
    assert rc == 0 and set(results) == {"osmi", "triton"}, {k: s["reasons"] for k, s in results.items()}
    for server, s in results.items():
        assert s["valid"], (server, s["reasons"])
        sent = s["requests"]["sent"]
        assert sent >= 80 and s["requests"] == {"sent": sent, "ok": sent, "failed": 0}
        # Both ends count every request: the balancer per backend, each shard by itself
        # (Triton: its statistics API), over the same window.
        assert s["accounting"]["balancer_forwarded"] == sent
        assert s["accounting"]["server_served"] == s["accounting"]["balancer_per_backend"]
        shares = [b["share"] for b in s["backends"].values()]
        assert len(shares) == 2 and all(0.4 <= x <= 0.6 for x in shares), (server, shares)
    assert results["osmi"]["server_kind"] == "osmi-model-server"
    assert results["triton"]["server_kind"] == "tritonserver"
    assert results["triton"]["server_version"] == "tritonserver 2.51.0"
    exp = next(sweep.experiment(i) for i in sweep.experiment_ids() if "-triton-" in i)
    assert "uri /inference.GRPCInferenceService/ServerReady " in exp.haproxy_config.read_text()
    assert (exp.triton_repository / "small_lstm" / "config.pbtxt").exists()
    assert not leftovers(sweep)

    capsys.readouterr()
    assert cli.main(["analyze", "--grid", str(path), "--out", str(sweep.root), "--no-plots"]) == 0
    dataset = pd.read_csv(sweep.dataset_csv).set_index("server")
    assert sorted(dataset.index) == ["osmi", "triton"] and dataset["valid"].all()
    assert dataset.loc["triton", "server_kind"] == "tritonserver"
    assert dataset.loc["osmi", "server_kind"] == "osmi-model-server"


def test_setup_check_refuses_a_stub_env_with_numpy_2(numpy2_env, capsys):
    assert triton_setup.main(["--check-only", "--env", str(numpy2_env.root)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "numpy 2." in err and "0 bytes" in err


def test_round_trip_sees_the_empty_answers_of_numpy_2(numpy2_env, tmp_path):
    """Past the version check, the setup's round trip compares bytes: numpy 2 answers 0."""
    with pytest.raises(TritonSetupError, match=r"answered 0 bytes, expected 288 .*wrong numpy"):
        triton_setup.round_trip(numpy2_env, tmp_path)


@pytest.mark.slow
def test_a_run_on_a_numpy_2_stub_is_invalid_by_byte_count(numpy2_env, write_grid, tmp_path, models_dir,
                                                          monkeypatch):
    monkeypatch.setenv(triton_setup.ENV_VAR, str(numpy2_env.root))  # the job's shards use the broken env
    data = grid(models_dir, experiment={"server": ["triton"], "servers": [1], "clients": [1]},
                measure={"requests": 10, "min_requests": 10})
    rc, sweep, _ = run_sweep(write_grid, tmp_path, data)
    (s,) = summaries(sweep).values()
    assert rc != 0 and s["valid"] is False
    assert s["requests"]["failed"] == s["requests"]["sent"] >= 10
    assert any("holds 0 bytes; expected 384" in r for r in s["reasons"]), s["reasons"]
    assert sweep.experiment(sweep.experiment_ids()[0]).read_status() == "invalid"
    assert not leftovers(sweep)


def test_stub_python_is_debians(triton):
    """The stub embeds Debian's libpython: the env must come from /usr/bin/python3.11."""
    assert (triton.root / "pyvenv.cfg").read_text().count("/usr/bin") >= 1
    assert (triton.backends / "python" / "triton_python_backend_stub").resolve().parent.name == STUB_PY_VERSION
