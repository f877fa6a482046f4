"""Hostile strings in every string field of a grid and of its inline profile:
each is either rejected with a GridError (and nothing is written), or ends up
in job.slurm as inert data: the script passes `bash -n`, and running it (with
a stand-in python) runs no injected command and hands each value on unchanged."""

from __future__ import annotations

import copy
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osmi_ee.ee import cli
from osmi_ee.ee.config import GridError, load_grid
from osmi_ee.ee.generate import generate

# Where an injected command would leave its trace; unique per test run.
MARKER = Path(tempfile.gettempdir()) / f"osmi-ee-injected-{uuid.uuid4().hex}"
PAYLOADS = [
    f"$(touch {MARKER})", f"`touch {MARKER}`", f";touch {MARKER};", f"\ntouch {MARKER}\n",
    f"' ; touch {MARKER} ; '", f'" ; touch {MARKER} ; "', f"&& touch {MARKER}", f"|touch {MARKER}",
    f"$(touch${{IFS}}{MARKER})", f"\r\ntouch {MARKER} #", f"{{job.dir}}$(touch {MARKER})",
    f"x\x00;touch {MARKER}", f"--x=1 --wrap='touch {MARKER}'", f"é😀 ;touch {MARKER}",
]
NOISE = st.text(st.sampled_from(list("$`;|&<>(){}[]'\"\\\n\r\t *?~#!=,:/.-_aZ09") + ["é", "😀", "\u2028"]),
                max_size=4)
VALUES = st.tuples(NOISE, st.sampled_from(PAYLOADS), NOISE).map("".join)

BASE: dict[str, Any] = {
    "name": "inj",
    "description": "injection test",
    "profile": {
        "name": "inj",
        "description": "inline profile",
        "scheduler": {"partition": "p", "account": "a", "extra_sbatch": ["--exclusive"],
                      "modules": ["cuda/12.2"]},
        "gpus": {"g1": {"gres": "gpu:{n}", "cpus_per_task": 2, "mem": "4G", "partition": "q",
                        "constraint": "c", "reservation": "r", "price_per_gpu_hour": 1.0}},
        "server": {"command": ["tensorflow_model_server", "--model_base_path={models_dir}"]},
        "haproxy": ["haproxy", "-V"],
    },
    "experiment": {"model": ["small_lstm"], "gpu": ["g1"], "scenario": ["closed"]},
    "serve": {"server": "auto", "models_dir": "models"},
    "job": {"time": "00:10:00", "clients_launcher": "auto"},
}
# Every string field (and a few numeric ones given a string); "GPU-NAME" renames the GPU type.
FIELDS = [
    ("name",), ("description",), ("profile",), ("experiment", "model", 0), ("experiment", "gpu", 0),
    ("experiment", "scenario", 0), ("serve", "server"), ("serve", "models_dir"), ("job", "time"),
    ("job", "clients_launcher"), ("profile", "name"), ("profile", "description"),
    ("profile", "scheduler", "partition"), ("profile", "scheduler", "account"),
    ("profile", "scheduler", "extra_sbatch", 0), ("profile", "scheduler", "modules", 0),
    ("profile", "gpus", "g1", "gres"), ("profile", "gpus", "g1", "cpus_per_task"),
    ("profile", "gpus", "g1", "mem"), ("profile", "gpus", "g1", "partition"),
    ("profile", "gpus", "g1", "constraint"), ("profile", "gpus", "g1", "reservation"),
    ("profile", "gpus", "g1", "price_per_gpu_hour"), ("profile", "server", "command", 0),
    ("profile", "server", "command", 1), ("profile", "haproxy", 0), ("profile", "haproxy", 1),
    ("GPU-NAME",),
]


def with_value(field: tuple, value: str) -> dict[str, Any]:
    grid = copy.deepcopy(BASE)
    if field == ("GPU-NAME",):
        grid["profile"]["gpus"] = {value: grid["profile"]["gpus"]["g1"]}
        grid["experiment"]["gpu"] = [value]
        return grid
    node = grid
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    return grid


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    """A stand-in python and `module` command that record their arguments, NUL-separated."""
    bin_dir = tmp_path_factory.mktemp("stubs")
    for name, out in (("python", "argv.bin"), ("module", "module.bin")):
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" >> {out}\n")
        stub.chmod(0o755)
    return bin_dir


def nul_split(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\0")[:-1] if path.exists() else []


def check_inert(grid_data: dict[str, Any], stubs: Path) -> str:
    """Generates grid_data; returns "rejected" or "inert", failing on anything else."""
    MARKER.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        path = tmp_dir / "grid.yaml"
        path.write_text(yaml.safe_dump(grid_data, sort_keys=False))
        out = tmp_dir / "sweep"
        try:
            grid = load_grid(path)
        except GridError as exc:
            assert exc.problems and all(line.startswith(f"{path}: ") for line in str(exc).splitlines())
            # The CLI says the same and writes nothing.
            assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 2
            assert not out.exists()
            return "rejected"
        (experiment,) = generate(grid, out, python=str(stubs / "python"))
        exp_dir = out / experiment.id
        script = exp_dir / "job.slurm"
        text = script.read_text()
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
        # The directive block is directives only: no value started a line of its own.
        head = text.split("set -uo pipefail\n")[0].splitlines()[4:]
        assert head and all(line.startswith("#SBATCH --") and " " not in line[8:] for line in head), head
        env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_dir), "LC_ALL": "C"}
        ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                             cwd=tmp_dir, timeout=30)
        assert ran.returncode == 0, ran.stderr
        assert not MARKER.exists(), f"injected command ran: {text}"
        # Each value reached its program exactly as written.
        command = [] if grid.serve.server == "osmi" else grid.profile.server_command
        command = [w.replace("{models_dir}", grid.serve.models_dir) for w in command]
        assert nul_split(exp_dir / "argv.bin") == ["-m", "osmi_ee.osmi.run", "--config", "config.yaml",
                                                   "--", *command]
        modules = [w for m in grid.profile.scheduler.modules for w in ("load", m)]
        assert nul_split(exp_dir / "module.bin") == modules
        return "inert"


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_hostile_strings_are_rejected_or_inert(stubs, field, value):
    check_inert(with_value(field, value), stubs)


def test_base_grid_is_inert_and_runs(stubs):
    assert check_inert(copy.deepcopy(BASE), stubs) == "inert"


@pytest.mark.parametrize("models_dir", [
    f"m;touch {MARKER};", f"m`touch {MARKER}`", f"m' ; touch {MARKER} ; '", f'm" && touch {MARKER} "',
    "m é😀 (x) [y] *?", "m{x}",
])
def test_quoted_paths_are_inert(stubs, models_dir):
    # Printable paths are accepted: they reach the script only shell-quoted.
    assert check_inert(with_value(("serve", "models_dir"), models_dir), stubs) == "inert"


@pytest.mark.parametrize("field", [f for f in FIELDS if f not in {("description",), ("profile", "description")}])
def test_newline_payload_is_rejected_in_every_script_field(stubs, field):
    assert check_inert(with_value(field, f"x\ntouch {MARKER}"), stubs) == "rejected"


def test_placeholder_in_models_dir_is_rejected(write_grid):
    # cloudmesh-ee would expand {job.dir} inside the quoted path and unquote the rest.
    with pytest.raises(GridError, match="serve.models_dir"):
        load_grid(write_grid(with_value(("serve", "models_dir"), "/m/{job.dir}")))


def teardown_module() -> None:
    MARKER.unlink(missing_ok=True)
