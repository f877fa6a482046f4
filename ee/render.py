"""Fill the job template (slurm/*.in.slurm) for one experiment; pure.

Rendering is cloudmesh-ee's (`ExperimentExecutor.generate`). Around it we fix
four of its known problems: values are shell-quoted here (it pastes raw
text), unknown placeholders are an error (it leaves them silently), we pass
only dotted keys, so bash's `${VAR}` is never rewritten (it replaces any
`{key}` whose key is a config leaf), and a value holding a `{key}` is an
error (its replace runs over earlier values too: the pasted quoted value of
`{key}` would close the quotes around the first one).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from osmi_ee.ee.expand import Experiment
from osmi_ee.osmi.placement import placement_of

PLACEHOLDER_RE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+\}")


class TemplateError(ValueError):
    pass


# Every line we write after "#SBATCH ": a flag and an unquoted value. Bash reads
# these lines as comments, so only a newline could make one run; sbatch reads
# them, so no space may add a flag. Profiles are checked on load; this is the backstop.
_SBATCH_LINE_RE = re.compile(r"--[a-z][a-z0-9-]*(?:=[A-Za-z0-9_.,:=/@+%-]*)?")


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
        # One task (the runner) on one node; on several, one per node, so each node's
        # share of CPUs and memory is allocated for its launcher steps (osmi.node_fleet).
        "--ntasks=1" if experiment.grid.job.nodes == 1 else "--ntasks-per-node=1",
        f"--cpus-per-task={gpu.cpus_per_task}",
        f"--mem={gpu.mem}",
    ]
    partition = gpu.partition or scheduler.partition
    for flag, value in (("partition", partition), ("account", scheduler.account),
                        ("constraint", gpu.constraint), ("reservation", gpu.reservation)):
        if value:
            lines.append(f"--{flag}={value}")
    if gpu.gres:  # per node: {n} is the most shards one node runs
        lines.append(f"--gres={gpu.gres.replace('{n}', str(placement_of(experiment.grid, experiment.params).gpus_per_node))}")
    lines.extend(scheduler.extra_sbatch)
    for line in lines:
        if not _SBATCH_LINE_RE.fullmatch(line):
            raise TemplateError(f"profile {profile.name!r}: unsafe #SBATCH line {line!r}")
    return [f"#SBATCH {line}" for line in lines]


def variables(experiment: Experiment, experiment_dir: Path, python: str) -> dict[str, Any]:
    """Template variables: nested dict whose leaves are final, quoted strings."""
    grid = experiment.grid
    # The server launch goes into the script, where a reader (and a test) can see
    # it, e.g. that every GPU shard's container gets --nv. Empty: the node decides.
    server = experiment.params.get("server") or grid.serve.server  # the `server` axis, else serve.server
    command = {"osmi": [], "triton": grid.profile.triton_command}.get(server, grid.profile.server_command)
    command = [w.replace("{models_dir}", grid.serve.models_dir) for w in command]
    setup = "\n".join(f"module load {shlex.quote(m)}" for m in grid.profile.scheduler.modules)
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


def _pasted_placeholders(values: Any, parent: str = "") -> list[str]:
    """Leaf keys whose value holds a {a.b} placeholder."""
    found = []
    for k, v in values.items():
        name = f"{parent}.{k}" if parent else str(k)
        if isinstance(v, Mapping):
            found += _pasted_placeholders(v, name)
        elif PLACEHOLDER_RE.search(str(v)):
            found.append(name)
    return found


def render(template: str, values: dict[str, Any]) -> str:
    """Substitutes {a.b} placeholders; any placeholder left over is an error."""
    from cloudmesh.ee.experimentexecutor import ExperimentExecutor

    # cloudmesh-ee replaces key after key over the whole text, so a later key would
    # be expanded inside an earlier, quoted value: its quotes would close that one's.
    pasted = _pasted_placeholders(values) if isinstance(values, Mapping) else []
    if pasted:
        raise TemplateError(f"values hold a template placeholder: {', '.join(pasted)}")
    # cloudmesh-ee prints as it works; keep our output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        text, _ = ExperimentExecutor(verbose=False).generate(template, values)
    left = sorted(set(PLACEHOLDER_RE.findall(text)))
    if left:
        raise TemplateError(f"template placeholders with no value: {', '.join(left)}")
    return text


class Renderer:
    """`render` for many value sets of one template: the same text, far fewer
    cloudmesh-ee calls.

    cloudmesh-ee's `generate` flattens the values into a FlatDict and runs one
    `str.replace` per key over the whole template, per call: about 0.3 ms, or
    seconds for a 10,000-experiment sweep. Value sets with the same keys differ
    only in the text pasted in, so we render the template through cloudmesh-ee
    once per set of keys with a unique marker as every value, and fill the
    markers of that "compiled" text for each value set in one pass.

    This is exactly cloudmesh-ee's result whenever pasting cannot create a new
    placeholder, which its sequential replace would then expand too: no value
    holds a brace, and no marker sits on a template line between a `{` and a
    `}`. Anything else (and any value set cloudmesh-ee itself would reject)
    goes through `render` as before (which refuses a value holding a
    placeholder). Leftover placeholders are checked on every final text, as
    `render` does.
    """

    _MARK = "\x00osmi-ee:{}\x00"
    _MARK_RE = re.compile("\x00osmi-ee:([0-9]+)\x00")

    def __init__(self, template: str):
        self.template = template
        self._compiled: dict[tuple[str, ...], str | None] = {}

    def __call__(self, values: dict[str, Any]) -> str:
        leaves: list[tuple[str, Any]] = []
        if "\x00" in self.template or not self._flatten(values, "", leaves):
            return render(self.template, values)
        texts = [str(v) for _, v in leaves]
        if any("{" in t or "}" in t for t in texts):
            return render(self.template, values)
        key = tuple(k for k, _ in leaves)
        compiled = self._compiled.get(key, "")
        if compiled == "":
            compiled = self._compiled[key] = self._compile(values)
        if compiled is None:
            return render(self.template, values)
        text = self._MARK_RE.sub(lambda m: texts[int(m.group(1))], compiled)
        left = sorted(set(PLACEHOLDER_RE.findall(text)))
        if left:
            raise TemplateError(f"template placeholders with no value: {', '.join(left)}")
        return text

    @staticmethod
    def _flatten(values: Any, parent: str, out: list[tuple[str, Any]]) -> bool:
        """cloudmesh-ee's flattening (FlatDict, sep "."), leaves in order; False
        where it would fail or we would not copy it exactly."""
        from collections.abc import MutableMapping

        if not isinstance(values, MutableMapping):
            return False
        for k, v in values.items():
            if not isinstance(k, str):
                return False
            name = f"{parent}.{k}" if parent else k
            if isinstance(v, MutableMapping):
                if not Renderer._flatten(v, name, out):
                    return False
            else:
                out.append((name, v))
        return True

    def _compile(self, values: dict[str, Any]) -> str | None:
        """The template rendered by cloudmesh-ee with marker i as the i-th leaf
        value; None when filling markers could differ from cloudmesh-ee."""
        from cloudmesh.ee.experimentexecutor import ExperimentExecutor

        counter = iter(range(1 << 30))

        def marked(node: Any) -> Any:
            return {k: marked(v) if isinstance(v, dict) else self._MARK.format(next(counter))
                    for k, v in node.items()}

        if any(not isinstance(v, dict) for v in self._mappings(values)):
            return None  # other mapping types: keep cloudmesh-ee's own handling
        with contextlib.redirect_stdout(io.StringIO()):
            compiled, _ = ExperimentExecutor(verbose=False).generate(self.template, marked(values))
        for line in compiled.splitlines():
            for m in self._MARK_RE.finditer(line):
                if "{" in line[: m.start()] and "}" in line[m.end():]:
                    return None
        return compiled

    @staticmethod
    def _mappings(values: Any) -> list[Any]:
        from collections.abc import MutableMapping

        found = [values]
        for v in values.values():
            if isinstance(v, MutableMapping):
                found.extend(Renderer._mappings(v))
        return found
