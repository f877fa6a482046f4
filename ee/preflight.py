"""Before `submit` spends an allocation: does every job find what it needs?

Checked here, on the submitting machine (Slurm clusters share the file
system): the exported models of each model swept, the server and balancer
commands of the profile (on PATH, or their image files when they run in a
container), the python the job scripts run, the array scripts, and that the
sweep and each experiment folder are writable. Every problem is reported at
once; nothing is queued while any remains.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from osmi_ee.ee.config import Grid
from osmi_ee.ee.paths import SweepPaths

IMAGE_SUFFIXES = (".sif", ".simg", ".img", ".sqsh")  # Apptainer/Singularity/enroot images named in a command


def _command_problems(what: str, command: Sequence[str], modules: Sequence[str]) -> list[str]:
    """The command's program on PATH (unless the job loads modules that may bring it), and any
    image file it names (`apptainer exec <image> ...`) present."""
    problems = []
    if command and not (shutil.which(command[0]) or modules):
        problems.append(f"{what}: {command[0]!r} is not on PATH (command: {shlex.join(command)})")
    for word in command[1:]:
        if word.endswith(IMAGE_SUFFIXES) and not Path(word).is_file():
            problems.append(f"{what}: image {word} does not exist (command: {shlex.join(command)})")
    return problems


def _models_problems(grid: Grid, models: set[str], export_hint: str) -> list[str]:
    from osmi_ee.osmi.export import exported_models

    models_dir = Path(grid.serve.models_dir)
    missing = sorted(models - set(exported_models(models_dir)))
    if not missing:
        return []
    return [f"no exported model for {', '.join(missing)} in {models_dir} (serve.models_dir): "
            f"export them first with `{export_hint}`, or let a job do it: `osmi-ee submit --export-models`"]


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def check(grid: Grid, sweep: SweepPaths, experiment_ids: Sequence[str], python: str, *,
          models_exported_by_job: bool = False, export_hint: str = "make models") -> list[str]:
    """Every reason the jobs of `experiment_ids` would fail before measuring; [] if none."""
    problems: list[str] = []
    modules = grid.profile.scheduler.modules
    if not (Path(python).is_file() and os.access(python, os.X_OK)):
        problems.append(f"the job scripts run {python}, which is not an executable file here; "
                        "run `make generate` again with the python that has osmi-ee installed")
    if not models_exported_by_job:
        problems += _models_problems(grid, _swept_models(sweep, experiment_ids), export_hint)
    if grid.serve.server == "tfserving":
        command = grid.profile.server_command or ["tensorflow_model_server"]
        problems += _command_problems("the model server (serve.server: tfserving)", command, modules)
    problems += _command_problems("the balancer (profile haproxy)", grid.profile.haproxy, modules)
    for folder in (sweep.root, sweep.slurm_logs):
        if not _writable(folder):
            problems.append(f"{folder} is not writable")
    unwritable = [eid for eid in experiment_ids
                  if not all(_writable(p) for p in (sweep.experiment(eid).root, sweep.experiment(eid).logs))]
    if unwritable:
        problems.append(f"{len(unwritable)} experiment folder(s) not writable (or their logs/), "
                        f"e.g. {sweep.experiment(unwritable[0]).root}")
    missing = [eid for eid in experiment_ids if not sweep.experiment(eid).job_script.is_file()]
    if missing:
        problems.append(f"{len(missing)} experiment(s) have no job script, e.g. "
                        f"{sweep.experiment(missing[0]).job_script}: run `make generate` again")
    return problems


def _swept_models(sweep: SweepPaths, experiment_ids: Sequence[str]) -> set[str]:
    """The models these experiments serve (from sweep.json's parameters)."""
    params = json.loads(sweep.sweep.read_text()).get("params", {})
    return {params[eid]["model"] for eid in experiment_ids if eid in params}
