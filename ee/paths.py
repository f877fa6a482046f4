"""The only place that names files: every path of a sweep and its experiments.

    <sweep>/sweep.json                       the grid as validated + experiment ids
    <sweep>/jobs.json                        scheduler job ids per experiment (submit)
    <sweep>/dataset.csv|.parquet, plots/     written by analyze, with dataset_summary.csv
    <sweep>/perf_analyzer.csv                (repeats with 95% CI), perf_analyzer's CSV layout
    <sweep>/report/index.html                and the HTML report
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
