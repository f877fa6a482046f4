"""Experiments -> files: one directory per experiment, plus sweep.json.

Everything is computed and checked in memory first, so bad input writes
nothing. Files are written atomically. An experiment directory that already
exists keeps its results: its id hashes its whole config, so the same id
means the same experiment.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

from osmi_ee.ee.config import AXES, Grid
from osmi_ee.ee.expand import Experiment, expand
from osmi_ee.ee.paths import SweepPaths, write_atomic, write_json
from osmi_ee.ee.render import render, variables

DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "slurm" / "job.in.slurm"


def experiment_config_text(experiment: Experiment, sweep_dir: Path) -> str:
    config = experiment.config()
    # cloudmesh-ee's per-permutation keys, so `cms ee` tooling still finds its way.
    config["ee"] = {"identifier": experiment.id, "time": experiment.grid.job.time}
    config["sweep"] = {"dir": str(sweep_dir), "experiment_id": experiment.id}
    return "# Resolved osmi-ee experiment config (generated; edit the grid instead).\n" + \
        yaml.safe_dump(config, sort_keys=False)


def generate(grid: Grid, sweep_dir: Path, template: Path = DEFAULT_TEMPLATE,
             python: str = sys.executable) -> list[Experiment]:
    """Writes the sweep for `grid` under `sweep_dir`; returns its experiments."""
    sweep_dir = sweep_dir.resolve()
    paths = SweepPaths(sweep_dir)
    template_text = template.read_text()
    experiments = expand(grid)
    rendered = []
    for experiment in experiments:  # render all before writing any
        exp_dir = paths.experiment(experiment.id).root
        script = render(template_text, variables(experiment, exp_dir, python))
        rendered.append((experiment, script, experiment_config_text(experiment, sweep_dir)))

    for experiment, script, config_text in rendered:
        exp = paths.experiment(experiment.id)
        exp.logs.mkdir(parents=True, exist_ok=True)  # log dir before any sbatch
        exp.results.mkdir(parents=True, exist_ok=True)
        write_atomic(exp.config, config_text)
        write_atomic(exp.job_script, script)
        exp.job_script.chmod(0o755)

    write_json(paths.sweep, {
        "name": grid.name,
        "grid": str(grid.source.resolve()),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": grid.profile.name,
        "axes": list(AXES),
        "experiments": [e.id for e in experiments],
        "params": {e.id: e.params for e in experiments},
    })
    return experiments
