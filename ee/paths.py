"""The only place that names files: every path of a sweep and its experiments.

    <sweep>/sweep.json                       the grid as validated + experiment ids
    <sweep>/jobs.json                        scheduler job ids per experiment (submit)
    <sweep>/dataset.csv|.parquet, plots/     written by analyze, with dataset_summary.csv
    <sweep>/perf_analyzer.csv                (repeats with 95% CI), perf_analyzer's CSV layout
    <sweep>/report/index.html                and the HTML report
    <sweep>/search.json                      `osmi-ee search`: every step per configuration, and its peak
    <sweep>/<id>/config.yaml                 resolved config of one experiment
    <sweep>/<id>/job.slurm                   rendered job script (runs under Slurm or bash)
    <sweep>/<id>/status                      one word: running | valid | invalid | failed | cancelled
    <sweep>/<id>/.lock                       flock held by the local runner and its job while it runs
    <sweep>/<id>/logs/                       job, server-<k>, haproxy, client-<k> logs   } this
    <sweep>/<id>/results/                    summary.json, requests-client<k>.parquet,    } attempt
                                             env.json, telemetry.parquet, backends.json, } only
                                             configs, barrier/
    <sweep>/<id>/attempts/<n>/               earlier attempts (status, results/, logs/), kept for
                                             audit and never read by the verdict, status or analysis
    <sweep>/<id>/latest.out                  this attempt's job log (a hard link into logs/): the
                                             `*.out` that `cms ee list` reads progress lines from
    <sweep>/project/<id>                     a link to each experiment: the folder `cms ee list` scans
                                             (its default name), with nothing else in it
    <sweep>/slurm/array-<shape>.slurm|.tasks one job array per resource shape (submit), and its task
                                             list: line i+1 = the experiment dir of array index i
    <sweep>/slurm/arrays.json                the arrays: name, #SBATCH shape, experiment ids
    <sweep>/slurm/collect.slurm              the job that runs `analyze` after the sweep (job.collect)
    <sweep>/slurm/export.slurm               the job that exports missing models (submit --export-models)
    <sweep>/slurm/submissions.json           every sbatch of the sweep: arrays, export, collect
    <sweep>/slurm/logs/                      their Slurm output (an array task's own log is its
                                             experiment's logs/slurm-<SLURM_JOB_ID>.out)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def job_script(self) -> Path:
        return self.root / "job.slurm"

    @property
    def status(self) -> Path:
        return self.root / "status"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def summary(self) -> Path:
        return self.results / "summary.json"

    @property
    def env(self) -> Path:
        return self.results / "env.json"

    @property
    def model_config(self) -> Path:
        return self.results / "models.config"

    @property
    def monitoring_config(self) -> Path:
        """TF-Serving's --monitoring_config_file: turns on the shards' request counters."""
        return self.results / "monitoring.config"

    @property
    def batching_parameters(self) -> Path:
        """TF-Serving's --batching_parameters_file (osmi-model-server reads it too), when batching is on."""
        return self.results / "batching_parameters.txt"

    @property
    def triton_repository(self) -> Path:
        """Triton's --model-repository for serve.server triton: <model>/config.pbtxt, <model>/1/."""
        return self.results / "triton-models"

    @property
    def haproxy_config(self) -> Path:
        return self.results / "haproxy.cfg"

    @property
    def backends(self) -> Path:
        return self.results / "backends.json"

    @property
    def telemetry(self) -> Path:
        return self.results / "telemetry.parquet"

    @property
    def barrier(self) -> Path:
        """Clients report ready here and wait for the `go` file (works across nodes)."""
        return self.results / "barrier"

    @property
    def job_log(self) -> Path:
        return self.logs / "job.out"

    def slurm_log(self, job_id: str) -> Path:
        """A Slurm job's output; job_id is SLURM_JOB_ID (an array task's own number)."""
        return self.logs / f"slurm-{job_id}.out"

    @property
    def latest_log(self) -> Path:
        """This attempt's job log as `cms ee list` looks for it: a `*.out` in the experiment
        folder. A hard link, so it never dangles when logs/ moves to attempts/."""
        return self.root / "latest.out"

    def link_latest_log(self, log: Path) -> None:
        """Points latest_log at `log` (in logs/), replacing the link atomically."""
        tmp = self.root / f".{self.latest_log.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(log, tmp)
        except OSError:  # no log file (bash job.slurm by hand) or no hard links here
            return
        os.replace(tmp, self.latest_log)

    def server_log(self, k: int) -> Path:
        return self.logs / f"server-{k}.log"

    @property
    def haproxy_log(self) -> Path:
        return self.logs / "haproxy.log"

    def client_log(self, k: int) -> Path:
        return self.logs / f"client-{k}.log"

    def client_records(self, k: int) -> Path:
        return self.results / f"requests-client{k}.parquet"

    def all_client_records(self) -> list[Path]:
        """Every client's records of this attempt, in client order."""
        return sorted(self.results.glob("requests-client*.parquet"),
                      key=lambda p: int(p.stem.removeprefix("requests-client") or 0))

    def client_summary(self, k: int) -> Path:
        return self.results / f"client-{k}.json"

    def node_report(self, node: str) -> Path:
        """Multi-node: what a node's shard launcher started (ports, pids, GPUs) or why it could not."""
        return self.results / "nodes" / f"{node}.json"

    @property
    def nodes_stop(self) -> Path:
        """Multi-node: the runner's word to every node's shard launcher to stop its shards."""
        return self.results / "nodes" / "stop"

    def node_log(self, node: str, role: str) -> Path:
        """Multi-node: the srun step that runs `role` (shards, clients) on `node`."""
        return self.logs / f"{role}-{node}.log"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def attempt(self, n: int) -> Path:
        return self.attempts / str(n)

    def attempt_numbers(self) -> list[int]:
        """Numbers of the archived attempts, oldest first."""
        if not self.attempts.is_dir():
            return []
        return sorted(int(p.name) for p in self.attempts.iterdir() if p.name.isdigit())

    def start_attempt(self, keep_logs: set[str] = frozenset()) -> int:
        """Moves whatever an earlier attempt left (status, results/, logs/) to
        attempts/<n>/ and returns this attempt's number: from here on results/ and
        logs/ hold only this attempt's files. `keep_logs` names log files that
        belong to this attempt already (the executor opened them before we ran)."""
        if self.results.is_dir() and not any(self.results.iterdir()):
            self.results.rmdir()  # made by the job script: nothing of an earlier attempt
        leftovers = [p for p in (self.status, self.results) if p.exists()]
        if self.logs.is_dir():
            leftovers += [p for p in self.logs.iterdir() if p.name not in keep_logs]
        numbers = self.attempt_numbers()
        n = (numbers[-1] if numbers else 0) + 1  # what the leftovers were
        if not leftovers:
            return n
        archive = self.attempt(n)
        (archive / "logs").mkdir(parents=True, exist_ok=True)
        for p in leftovers:
            os.replace(p, archive / ("logs" if p.parent == self.logs else "") / p.name)
        return n + 1

    def read_status(self) -> str | None:
        try:
            return self.status.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def lock(self) -> Path:
        """flock'ed by whoever runs the experiment (osmi-ee run and its job): one at a time."""
        return self.root / ".lock"

    def read_summary(self) -> dict[str, Any] | None:
        """results/summary.json if it is complete: a JSON object with its schema key.
        None when missing, truncated or not ours: such a result proves nothing."""
        try:
            summary = json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(summary, dict) or not isinstance(summary.get("schema"), str):
            return None
        return summary


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def sweep(self) -> Path:
        return self.root / "sweep.json"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs.json"

    @property
    def search_record(self) -> Path:
        """`osmi-ee search`: per configuration, every step (load, verdict, figures) and the peak."""
        return self.root / "search.json"

    @property
    def dataset_csv(self) -> Path:
        return self.root / "dataset.csv"

    @property
    def dataset_parquet(self) -> Path:
        return self.root / "dataset.parquet"

    @property
    def dataset_summary(self) -> Path:
        """One row per configuration over its repeats."""
        return self.root / "dataset_summary.csv"

    @property
    def perf_analyzer_csv(self) -> Path:
        """The configurations in perf_analyzer's CSV layout."""
        return self.root / "perf_analyzer.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report / "index.html"

    @property
    def ee_view(self) -> Path:
        """`cms ee list` scans every folder in the one it is given and reads each one's
        config.yaml: this folder holds only links to the experiments (plots/, report/,
        slurm/ would crash it). `project` is its default, so `cms ee list` in <sweep> works."""
        return self.root / "project"

    @property
    def slurm_dir(self) -> Path:
        return self.root / "slurm"

    def array_script(self, name: str) -> Path:
        return self.slurm_dir / f"{name}.slurm"

    def array_tasks(self, name: str) -> Path:
        return self.slurm_dir / f"{name}.tasks"

    @property
    def arrays(self) -> Path:
        return self.slurm_dir / "arrays.json"

    @property
    def collect_script(self) -> Path:
        return self.slurm_dir / "collect.slurm"

    @property
    def export_script(self) -> Path:
        return self.slurm_dir / "export.slurm"

    @property
    def submissions(self) -> Path:
        return self.slurm_dir / "submissions.json"

    @property
    def slurm_logs(self) -> Path:
        return self.slurm_dir / "logs"

    def experiment(self, experiment_id: str) -> ExperimentPaths:
        return ExperimentPaths(self.root / experiment_id)

    def experiment_ids(self) -> list[str]:
        return list(json.loads(self.sweep.read_text())["experiments"])


def default_sweep_dir(grid_name: str) -> Path:
    """runs/<grid name> under $OSMI_EE_RUNS (default: ./runs)."""
    return Path(os.environ.get("OSMI_EE_RUNS", "runs")) / grid_name


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path | str, write: Callable[[str], Any]) -> None:
    """Calls write(tmp) on a temp file in the same folder, then renames it onto
    `path`: readers never see half a file, even if the writer dies mid-way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path | str, data: str | bytes) -> None:
    """`data` into `path`, atomically (see atomic_write)."""
    if isinstance(data, bytes):
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_text(data))


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
