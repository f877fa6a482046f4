"""A sweep as Slurm job arrays: one array per resource shape.

Experiments whose #SBATCH lines agree but for their own job name and output
(render.sbatch_lines) share one array script. `generate` writes it with a task
list (line i+1 = the experiment folder of array index i); `submit` sends only
the indices still to run, as one `sbatch --array=...%K` per shape. A task runs
its experiment's own job.slurm, which still works alone (`sbatch`, `bash`).

An array task's SLURM_JOB_ID is its own number (SLURM_ARRAY_JOB_ID and
SLURM_ARRAY_TASK_ID name the array and index), so the task writes its output to
the experiment's logs/slurm-<SLURM_JOB_ID>.out, exactly as a single job does:
the runner keeps it as this attempt's log and links it to latest.out.

Retries (job.retries > 0): the array is requeueable, so Slurm requeues a task
after a node failure or preemption; Slurm warns the task's shell before the
time limit (--signal) and the shell requeues the task itself. A restarted task
with a verdict of valid or invalid never runs again, nor one past its retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from osmi_ee.ee.config import Grid
from osmi_ee.ee.expand import Experiment
from osmi_ee.ee.paths import SweepPaths, write_atomic, write_json
from osmi_ee.ee.render import sbatch_lines

# Lines that name one experiment: the rest is its resource shape.
PER_EXPERIMENT_FLAGS = ("--job-name=", "--output=", "--error=")
# Slurm's MaxArraySize defaults to 1001 (indices 0..1000): a bigger shape becomes several arrays.
MAX_ARRAY_TASKS = 1000
# Slurm signals a requeueable task's shell this long before its time limit (it may come up
# to a minute earlier: Slurm checks limits about every 30-60 s).
REQUEUE_WARNING_S = 120
# How Slurm ends a task that did not fail by itself: these the shell or Slurm requeue (job.retries).
INFRASTRUCTURE_STATES = ("TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL")
# The small jobs around the sweep (analyze after it, export before it): no GPU.
HELPER_JOB = {"collect": ("01:00:00", 1, "4G"), "export": ("01:00:00", 2, "6G")}  # time, cpus, memory


@dataclass(frozen=True)
class JobArray:
    name: str  # file stem under <sweep>/slurm/
    shape: tuple[str, ...]  # its #SBATCH lines, shared by every task
    experiments: tuple[str, ...]  # experiment id of array index i

    def indices(self, experiment_ids: Iterable[str]) -> list[int]:
        wanted = set(experiment_ids)
        return [i for i, eid in enumerate(self.experiments) if eid in wanted]


def shape(experiment: Experiment) -> tuple[str, ...]:
    """The experiment's #SBATCH lines without those that name it alone."""
    return tuple(line for line in sbatch_lines(experiment)
                 if not line.removeprefix("#SBATCH ").startswith(PER_EXPERIMENT_FLAGS))


def group_arrays(experiments: Sequence[Experiment]) -> list[JobArray]:
    """One array per shape (several past MAX_ARRAY_TASKS), in the experiments' order."""
    shapes: dict[tuple[str, ...], list[str]] = {}
    for experiment in experiments:
        shapes.setdefault(shape(experiment), []).append(experiment.id)
    arrays = []
    for lines, ids in shapes.items():
        digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:8]
        for k, start in enumerate(range(0, len(ids), MAX_ARRAY_TASKS)):
            name = f"array-{digest}" + (f"-{k}" if k else "")
            arrays.append(JobArray(name, lines, tuple(ids[start:start + MAX_ARRAY_TASKS])))
    return arrays


def index_spec(indices: Iterable[int]) -> str:
    """sbatch's --array list for these indices, runs folded: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(set(indices)):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def expand_task_string(spec: str) -> list[int]:
    """Slurm's array_task_string ('5-6%2', '1,3-5', '0-15:4') -> its indices."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        if lo.isdigit() and (hi == "" or hi.isdigit()) and (step == "" or step.isdigit()):
            out.extend(range(int(lo), int(hi or lo) + 1, int(step or 1) or 1))
    return out


_TASK_BODY = r'''set -uo pipefail

tasks={tasks}
retries=${{1:-0}}  # job.retries, given by submit
restarts=${{SLURM_RESTART_COUNT:-0}}
experiment_dir=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$tasks")
if [[ -z $experiment_dir || ! -f $experiment_dir/job.slurm ]]; then
    echo "osmi-ee: array task $SLURM_ARRAY_TASK_ID: no experiment on line $((SLURM_ARRAY_TASK_ID + 1)) of $tasks" >&2
    exit 1
fi
mkdir -p "$experiment_dir/logs"
log=$experiment_dir/logs/slurm-$SLURM_JOB_ID.out
if (( restarts > 0 )); then  # requeued: node failure, preemption, time limit, scontrol requeue
    verdict=$(cat "$experiment_dir/status" 2>/dev/null)
    if [[ $verdict == valid || $verdict == invalid ]]; then
        echo "osmi-ee: $experiment_dir already has its verdict ($verdict): a requeue does not run it again" >&2
        exit 0
    fi
    if (( restarts > retries )); then
        echo "osmi-ee: $experiment_dir was requeued $restarts times, job.retries is $retries: not run again" >&2
        exit 1
    fi
    # The requeued attempt wrote under this job id too: keep its log (the runner archives it).
    [[ -e $log ]] && mv -f "$log" "$experiment_dir/logs/slurm-$SLURM_JOB_ID.$((restarts - 1)).out"
fi
# The task's own log, where the runner (this attempt's log) and `cms ee list` find it.
exec >"$log" 2>&1
echo "# osmi-ee array $SLURM_ARRAY_JOB_ID task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID, restart $restarts): $experiment_dir"
cd "$experiment_dir" || exit 1
if (( restarts >= retries )); then
    exec bash job.slurm
fi
# Slurm sends USR1 here {warning} s before the time limit (--signal=B:USR1@{warning}): requeue
# the task instead of letting it end TIMEOUT. A handler (not an ignore) for TERM keeps this
# shell waiting for the runner's teardown when the task is cancelled.
trap 'echo "osmi-ee: time limit near: requeue (restart $((restarts + 1)) of $retries)"
      scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"' USR1
trap ':' TERM
bash job.slurm &
job=$!
while :; do
    wait "$job"
    rc=$?
    kill -0 "$job" 2>/dev/null || break  # a signal ended `wait` early: the job still runs
done
exit "$rc"
'''


def array_script_text(array: JobArray, sweep: SweepPaths, sweep_name: str) -> str:
    tasks = sweep.array_tasks(array.name)
    header = [
        "#!/bin/bash",
        f"# osmi-ee job array {array.name} of sweep {sweep_name}: the {len(array.experiments)} experiment(s)",
        "# that share the #SBATCH lines below. Written by `osmi-ee generate`; `osmi-ee submit` sends it as",
        f"#   cd {sweep.root.name} && sbatch --array=<indices>[%<job.max_running>] "
        f"{sweep.array_script(array.name).relative_to(sweep.root)} <job.retries>",
        f"# Task i runs the experiment folder on line i+1 of {tasks.name} with its own job.slurm.",
        f"#SBATCH --job-name={sweep_name}-{array.name}",
        f"#SBATCH --output={_relative(sweep, sweep.slurm_logs)}/{array.name}-%A_%a.out",  # from the sweep folder
        *array.shape,
    ]
    body = _TASK_BODY.format(tasks=shlex.quote(str(tasks)), warning=REQUEUE_WARNING_S)
    return "\n".join(header) + "\n" + body


def _relative(sweep: SweepPaths, path: Path) -> str:
    """A path in #SBATCH lines: relative to the sweep folder (submit runs sbatch with
    --chdir there), so no character of the sweep's own path reaches sbatch's parser."""
    return str(path.relative_to(sweep.root))


def _helper_lines(grid: Grid, sweep: SweepPaths, kind: str) -> list[str]:
    time, cpus, mem = HELPER_JOB[kind]
    scheduler = grid.profile.scheduler
    lines = [f"--job-name={grid.name}-{kind}", f"--output={_relative(sweep, sweep.slurm_logs)}/{kind}-%j.out",
             f"--time={time}", "--nodes=1", "--ntasks=1", f"--cpus-per-task={cpus}", f"--mem={mem}"]
    for flag, value in (("partition", scheduler.partition), ("account", scheduler.account)):
        if value:
            lines.append(f"--{flag}={value}")
    lines.extend(scheduler.extra_sbatch)
    return [f"#SBATCH {line}" for line in lines]


def collect_script_text(grid: Grid, sweep: SweepPaths, python: str) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# osmi-ee: analyze sweep {grid.name} once its arrays have ended (job.collect: true);",
        "# submit sends it with --dependency=afterany:<every array of the sweep>.",
        *_helper_lines(grid, sweep, "collect"),
        "set -uo pipefail",
        *(f"module load {shlex.quote(m)}" for m in grid.profile.scheduler.modules),
        f"exec {shlex.quote(python)} -m osmi_ee.analysis.cli {shlex.quote(str(sweep.root))}",
    ]) + "\n"


def export_script_text(grid: Grid, sweep: SweepPaths, python: str) -> str:
    command = [python, "-m", "osmi_ee.ee.cli", "models", "--grid", str(grid.source.resolve()),
               *grid.overrides]
    return "\n".join([
        "#!/bin/bash",
        f"# osmi-ee: export the models of sweep {grid.name} (`osmi-ee submit --export-models`);",
        "# the arrays wait for it with --dependency=afterok.",
        *_helper_lines(grid, sweep, "export"),
        "set -uo pipefail",
        *(f"module load {shlex.quote(m)}" for m in grid.profile.scheduler.modules),
        "exec " + " ".join(shlex.quote(w) for w in command),
    ]) + "\n"


def write_arrays(grid: Grid, sweep: SweepPaths, experiments: Sequence[Experiment], python: str) -> list[JobArray]:
    """The array scripts, task lists, arrays.json and the helper jobs; stale arrays removed."""
    arrays = group_arrays(experiments)
    sweep.slurm_logs.mkdir(parents=True, exist_ok=True)
    for array in arrays:
        lines = "".join(f"{sweep.experiment(eid).root}\n" for eid in array.experiments)
        write_atomic(sweep.array_tasks(array.name), lines)
        write_atomic(sweep.array_script(array.name), array_script_text(array, sweep, grid.name))
        sweep.array_script(array.name).chmod(0o755)
    write_atomic(sweep.collect_script, collect_script_text(grid, sweep, python))
    write_atomic(sweep.export_script, export_script_text(grid, sweep, python))
    keep = {sweep.array_script(a.name) for a in arrays} | {sweep.array_tasks(a.name) for a in arrays}
    for stale in [*sweep.slurm_dir.glob("array-*.slurm"), *sweep.slurm_dir.glob("array-*.tasks")]:
        if stale not in keep:  # a shape of an earlier generate: its index would run other experiments
            stale.unlink()
    write_json(sweep.arrays, {"python": python,
                              "arrays": [{"name": a.name, "shape": list(a.shape), "experiments": list(a.experiments)}
                                         for a in arrays]})
    return arrays


def load_arrays(sweep: SweepPaths) -> tuple[list[JobArray], str]:
    """The arrays `generate` wrote, and the python its job scripts run."""
    data = json.loads(sweep.arrays.read_text())
    arrays = [JobArray(a["name"], tuple(a["shape"]), tuple(a["experiments"])) for a in data["arrays"]]
    return arrays, data["python"]


def write_ee_view(sweep: SweepPaths, experiment_ids: Sequence[str]) -> None:
    """<sweep>/project/<id> -> ../<id> for each experiment, nothing else (see SweepPaths.ee_view).
    One listdir and one symlink per new experiment: a 10,000-experiment generate stays fast."""
    view = sweep.ee_view
    view.mkdir(exist_ok=True)
    existing = set(os.listdir(view))
    wanted = set(experiment_ids)
    for name in existing - wanted:  # an experiment of an earlier grid
        if os.path.islink(f"{view}/{name}"):
            os.unlink(f"{view}/{name}")
    for eid in experiment_ids:
        if eid not in existing:
            os.symlink(f"../{eid}", f"{view}/{eid}")
