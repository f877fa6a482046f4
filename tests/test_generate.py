"""Sweep generation: layout, atomic and all-or-nothing writes, script safety,
and the cloudmesh-ee pitfalls we work around (each with its own test)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from osmi_ee.ee import cli
from osmi_ee.ee.config import load_grid
from osmi_ee.ee.generate import generate
from osmi_ee.ee.render import TemplateError, render

GRID = {"name": "g", "experiment": {"model": ["small_lstm"], "servers": [1, 2], "gpu": ["fake"]}}


def test_layout_and_sweep_json(write_grid, tmp_path):
    sweep = tmp_path / "sweep"
    experiments = generate(load_grid(write_grid(GRID)), sweep)
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert manifest["experiments"] == [e.id for e in experiments]
    for e in experiments:
        d = sweep / e.id
        assert (d / "config.yaml").is_file() and (d / "job.slurm").is_file()
        assert (d / "logs").is_dir() and (d / "results").is_dir()
        assert not list(d.glob(".*.tmp"))


def test_job_script_is_valid_bash_with_sbatch_lines(write_grid, tmp_path):
    experiments = generate(load_grid(write_grid(GRID)), tmp_path / "s")
    script = (tmp_path / "s" / experiments[1].id / "job.slurm").read_text()
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert script.startswith("#!/bin/bash\n")
    assert "#SBATCH --gres=gpu:2" in script  # {n} = servers
    assert f"#SBATCH --job-name={experiments[1].id}" in script
    assert "#SBATCH --time=00:30:00" in script


def test_bad_grid_writes_nothing(write_grid, tmp_path, capsys):
    sweep = tmp_path / "out"
    bad = write_grid({"name": "g", "experiment": {"model": ["nope"]}})
    rc = cli.main(["generate", "--grid", str(bad), "--out", str(sweep)])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "experiment.model" in err and "'nope'" in err
    assert not sweep.exists()


def test_regenerate_keeps_results(write_grid, tmp_path):
    grid = load_grid(write_grid(GRID))
    experiments = generate(grid, tmp_path / "s")
    marker = tmp_path / "s" / experiments[0].id / "results" / "summary.json"
    marker.write_text("{}")
    generate(grid, tmp_path / "s")
    assert marker.read_text() == "{}"


# --- cloudmesh-ee pitfalls, one test each -------------------------------------------------

def test_ee_environment_is_not_copied_into_config(write_grid, tmp_path, monkeypatch):
    monkeypatch.setenv("OSMI_SECRET_TOKEN", "hunter2")
    experiments = generate(load_grid(write_grid(GRID)), tmp_path / "s")
    text = (tmp_path / "s" / experiments[0].id / "config.yaml").read_text()
    assert "hunter2" not in text and "OSMI_SECRET_TOKEN" not in text
    assert set(yaml.safe_load(text)) == {"name", "profile", "experiment", "measure", "serve", "job",
                                         "ee", "sweep"}


def test_ee_leftover_placeholder_is_an_error():
    with pytest.raises(TemplateError, match=r"\{undefined\.key\}"):
        render("echo {job.dir} {undefined.key}\n", {"job": {"dir": "/x"}})


def test_ee_bash_braces_survive_rendering():
    text = render('echo "${HOME}" ${name} {job.dir}\n', {"job": {"dir": "/x"}, "name": {"a": "b"}})
    assert text == 'echo "${HOME}" ${name} /x\n'


def test_ee_values_are_shell_quoted(write_grid, tmp_path):
    # A sweep folder whose name would execute if pasted raw into the script.
    evil = tmp_path / "a b;$(touch PWNED)`touch PWNED2`"
    experiments = generate(load_grid(write_grid(GRID)), evil)
    script = evil / experiments[0].id / "job.slurm"
    # Run only the script's first lines (up to `cd`): they hold the quoted path.
    head = script.read_text().split("mkdir -p logs results")[0] + 'pwd\n'
    out = subprocess.run(["bash", "-c", head], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(evil / experiments[0].id)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_ee_repeated_values_keep_their_type(write_grid):
    from osmi_ee.ee.expand import permutations

    perms = permutations({"batch": [1, 32], "model": ["a"]})
    assert perms == [{"batch": 1, "model": "a"}, {"batch": 32, "model": "a"}]


def test_cli_help_for_every_command():
    for command in ("generate", "run", "submit", "status", "analyze", "models"):
        with pytest.raises(SystemExit) as info:
            cli.main([command, "--help"])
        assert info.value.code == 0


def test_submit_without_slurm_is_a_clear_error(write_grid, tmp_path, monkeypatch, capsys):
    grid = write_grid(GRID)
    assert cli.main(["generate", "--grid", str(grid), "--out", str(tmp_path / "s")]) == 0
    monkeypatch.setenv("PATH", "/nonexistent")
    rc = cli.main(["submit", "--grid", str(grid), "--out", str(tmp_path / "s")])
    assert rc == 2
    assert "sbatch not found" in capsys.readouterr().err


# --- hostile input: a GridError before anything is written; the renderer's own backstops ----------

def test_bad_extra_sbatch_is_reported_not_a_traceback(write_grid, tmp_path, capsys):
    profile = {"gpus": {"cpu": {}}, "scheduler": {"extra_sbatch": ["--exclusive\ntouch /tmp/pwned"]}}
    bad = write_grid({"name": "g", "profile": profile, "experiment": {"model": ["small_lstm"]}})
    rc = cli.main(["generate", "--grid", str(bad), "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "profile.scheduler.extra_sbatch[0]" in err and "touch /tmp/pwned" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_duplicate_key_writes_nothing(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nexperiment: {model: [small_lstm]}\nmeasure: {requests: 5}\nmeasure: {requests: 6}\n")
    assert cli.main(["generate", "--grid", str(grid), "--out", str(tmp_path / "out")]) == 2
    assert "measure: duplicate key on line 4 (first on line 3)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sbatch_lines_refuse_unchecked_values(write_grid):
    # A Profile built in code skips validation; the renderer still never writes a bad line.
    from dataclasses import replace

    from osmi_ee.ee.expand import expand
    from osmi_ee.ee.profiles import GpuType
    from osmi_ee.ee.render import sbatch_lines

    grid = load_grid(write_grid(GRID))
    for bad in ({"mem": "4G\ntouch /tmp/pwned"}, {"cpus_per_task": "2 --wrap=x"}, {"gres": "gpu:{n}\nx"}):
        profile = replace(grid.profile, gpus={"fake": GpuType(**bad)})
        (experiment, *_) = expand(replace(grid, profile=profile))
        with pytest.raises(TemplateError, match="unsafe #SBATCH line"):
            sbatch_lines(experiment)


def test_render_refuses_a_value_holding_a_placeholder():
    # cloudmesh-ee would expand {job.python} inside the quoted dir, closing its quotes.
    with pytest.raises(TemplateError, match="job.dir"):
        render("d={job.dir}\np={job.python}\n", {"job": {"dir": "'/x{job.python}'", "python": "'$(reboot)'"}})


def test_job_scripts_of_shipped_profiles_have_only_directives_up_top(write_grid, tmp_path):
    experiments = generate(load_grid(write_grid(GRID)), tmp_path / "s")
    for e in experiments:
        head = (tmp_path / "s" / e.id / "job.slurm").read_text().split("set -uo pipefail\n")[0]
        assert all(line.startswith("#SBATCH --") for line in head.splitlines()[4:])
