"""Fill the job template (slurm/*.in.slurm) for one experiment; pure.

Rendering is cloudmesh-ee's (`ExperimentExecutor.generate`). Around it we fix
three of its known problems: values are shell-quoted here (it pastes raw
text), unknown placeholders are an error (it leaves them silently), and we
pass only dotted keys, so bash's `${VAR}` is never rewritten (it replaces any
`{key}` whose key is a config leaf).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

from osmi_ee.ee.expand import Experiment
from osmi_ee.ee.profiles import SAFE_DIRECTIVE_RE

PLACEHOLDER_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+\}")


class TemplateError(ValueError):
    pass


def sbatch_lines(experiment: Experiment) -> list[str]:
    """The #SBATCH directives of one experiment, from its profile and GPU type."""
    profile = experiment.grid.profile
    gpu = profile.gpus[experiment.params["gpu"]]
    scheduler = profile.scheduler
    lines = [
        f"--job-name={experiment.id}",
        "--output=logs/slurm-%j.out",  # relative: sbatch runs with --chdir=<experiment dir>
        f"--time={experiment.grid.job.time}",
        f"--nodes={experiment.grid.job.nodes}",
        "--ntasks=1",
        f"--cpus-per-task={gpu.cpus_per_task}",
        f"--mem={gpu.mem}",
    ]
    partition = gpu.partition or scheduler.get("partition", "")
    for flag, value in (("partition", partition), ("account", scheduler.get("account", "")),
                        ("constraint", gpu.constraint), ("reservation", gpu.reservation)):
        if value:
            lines.append(f"--{flag}={value}")
    if gpu.gres:
        lines.append(f"--gres={gpu.gres.replace('{n}', str(experiment.params['servers']))}")
    for extra in scheduler.get("extra_sbatch", []) or []:
        if not SAFE_DIRECTIVE_RE.match(str(extra)) or not str(extra).startswith("--"):
            raise TemplateError(f"profile scheduler.extra_sbatch: unsafe flag {extra!r}")
        lines.append(str(extra))
    return [f"#SBATCH {line}" for line in lines]


def variables(experiment: Experiment, experiment_dir: Path, python: str) -> dict[str, Any]:
    """Template variables: nested dict whose leaves are final, quoted strings."""
    grid = experiment.grid
    modules = grid.profile.scheduler.get("modules", []) or []
    # The server launch goes into the script, where a reader (and a test) can see
    # it, e.g. that every GPU shard's container gets --nv. Empty: the node decides.
    command = [] if grid.serve.server == "osmi" else grid.profile.server_command
    command = [w.replace("{models_dir}", grid.serve.models_dir) for w in command]
    setup = "\n".join(f"module load {shlex.quote(str(m))}" for m in modules)
    return {
        "sbatch": {"lines": "\n".join(sbatch_lines(experiment))},
        "job": {
            "dir": shlex.quote(str(experiment_dir)),
            "python": shlex.quote(python),
            "setup": setup,
            "id": shlex.quote(experiment.id),
            "server_command": " ".join(shlex.quote(w) for w in command),
        },
    }


def render(template: str, values: dict[str, Any]) -> str:
    """Substitutes {a.b} placeholders; any placeholder left over is an error."""
    from cloudmesh.ee.experimentexecutor import ExperimentExecutor

    # cloudmesh-ee prints as it works; keep our output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        text, _ = ExperimentExecutor(verbose=False).generate(template, values)
    left = sorted(set(PLACEHOLDER_RE.findall(text)))
    if left:
        raise TemplateError(f"template placeholders with no value: {', '.join(left)}")
    return text
