"""Generated cluster scripts cannot run here, so their text is checked:
valid bash, the profile's sbatch lines, --nv on every GPU server launch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from osmi_ee.ee.config import GridError, load_grid
from osmi_ee.ee.generate import generate
from osmi_ee.ee.profiles import load_profile, parse_profile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rivanna(tmp_path_factory):
    out = tmp_path_factory.mktemp("rivanna")
    experiments = generate(load_grid(REPO / "experiments" / "rivanna.yaml"), out)
    return out, experiments


def test_every_script_passes_bash_n(rivanna):
    out, experiments = rivanna
    assert len(experiments) == 3 * 3 * 4 * 4 * 2 * 3
    scripts = [str(out / e.id / "job.slurm") for e in experiments]
    loop = 'for f in "$@"; do bash -n "$f" || { echo "$f"; exit 1; }; done'
    result = subprocess.run(["bash", "-c", loop, "bash", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sbatch_lines_come_from_the_profile(rivanna):
    out, experiments = rivanna
    for e in experiments:
        text = (out / e.id / "job.slurm").read_text()
        card, n = e.params["gpu"], e.params["servers"]
        gres = {"a100": f"gpu:a100:{n}", "v100": f"gpu:v100:{n}"}[card]
        assert f"#SBATCH --gres={gres}\n" in text
        assert "#SBATCH --partition=gpu\n" in text
        assert "#SBATCH --account=bii_dsc_community\n" in text
        assert "module load apptainer\n" in text


def test_every_gpu_server_launch_has_nv(rivanna):
    out, experiments = rivanna
    for e in experiments:
        text = (out / e.id / "job.slurm").read_text()
        (line,) = [l for l in text.splitlines() if l.startswith("server_command=(")]
        words = line[len("server_command=("):-1].split()
        assert words[:3] == ["apptainer", "exec", "--nv"], line
        assert words[-1] == "tensorflow_model_server"
        assert '-- "${server_command[@]}"' in text


def test_no_environment_in_cluster_configs(rivanna, monkeypatch):
    out, experiments = rivanna
    config = yaml.safe_load((out / experiments[0].id / "config.yaml").read_text())
    assert "os" not in config and "PATH" not in str(config) and "HOME=" not in str(config)


def test_profile_without_nv_is_rejected():
    data = yaml.safe_load((REPO / "slurm" / "profiles" / "rivanna.yaml").read_text())
    data["server"]["command"] = [w for w in data["server"]["command"] if w != "--nv"]
    with pytest.raises(ValueError, match="without --nv"):
        parse_profile(data, "rivanna.yaml")


def test_unsafe_directive_value_is_rejected():
    data = yaml.safe_load((REPO / "slurm" / "profiles" / "rivanna.yaml").read_text())
    data["gpus"]["a100"]["gres"] = "gpu:a100:1 --wrap=$(reboot)"
    with pytest.raises(ValueError, match="gpus.a100.gres"):
        parse_profile(data, "rivanna.yaml")


def test_gpu_type_missing_from_profile_writes_nothing(write_grid, tmp_path):
    grid = write_grid({"name": "x", "profile": "rivanna",
                       "experiment": {"model": ["small_lstm"], "gpu": ["a100", "tpu9"]}})
    with pytest.raises(GridError) as info:
        load_grid(grid)
    assert any("experiment.gpu" in p and "'tpu9'" in p and "a100" in p for p in info.value.problems)


def test_shipped_profiles_load():
    for path in (REPO / "slurm" / "profiles").glob("*.yaml"):
        profile = load_profile(path.stem)
        assert profile.gpus and profile.haproxy


def test_multi_node_jobs_ask_for_their_nodes(write_grid, tmp_path):
    grid = write_grid({"name": "mn", "profile": "rivanna", "experiment": {"model": ["small_lstm"], "gpu": ["a100"]},
                       "job": {"nodes": 2}})
    (experiment,) = generate(load_grid(grid), tmp_path / "s")
    assert "#SBATCH --nodes=2\n" in (tmp_path / "s" / experiment.id / "job.slurm").read_text()
