"""The real osmi-client, run by the bench against bare servers.

Each run gets a folder with a tiny experiment config.yaml (model, batch, warm-up),
so the client starts exactly as in a job: `osmi-client --config ... --target ...`
with its bound on the command line; records and summary land where a job's would
(<folder>/results/).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from osmi_ee.bench.common import MODEL, die_with_parent
from osmi_ee.ee.paths import ExperimentPaths
from osmi_ee.osmi.client import client_argv
from osmi_ee.osmi.procs import Child, ProcessGroup


class Clients:
    def __init__(self, group: ProcessGroup, work: Path, logs: Path) -> None:
        self.group, self.work, self.logs = group, work, logs

    def prepare(self, tag: str, *, batch: int = 1, warmup: int = 5, warmup_s: float = 0.0,
                model: str = MODEL, streams: int = 1) -> ExperimentPaths:
        """The folder of run `tag`, with its config.yaml (`streams`: the experiment's `clients`)."""
        paths = ExperimentPaths(self.work / tag)
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.config.write_text(yaml.safe_dump({
            "name": "bench", "experiment": {"model": model, "batch": batch, "clients": streams},
            "measure": {"warmup_requests": warmup, "warmup_s": warmup_s, "timeout_s": 60.0}}, sort_keys=False))
        return paths

    def start(self, paths: ExperimentPaths, k: int, target: str, *, duration_s: float) -> Child:
        """Client k of a barrier-released group (the caller writes the `go` file)."""
        argv = client_argv(paths.config, target, client_id=k, duration_s=duration_s, streams=str(k))
        return self.group.start(f"client {paths.root.name}-{k}", argv, self.logs / f"client-{paths.root.name}-{k}.log")

    def run(self, target: str, tag: str, timeout_s: float = 300, *, requests: int, small_parent: bool = False,
            **settings: Any) -> tuple[dict[str, Any], ExperimentPaths]:
        """One client, started at once and waited for: (its summary, its folder)."""
        paths = self.prepare(tag, **settings)
        streams = settings.get("streams", 1)  # > 1: multiplexed in this one process, `requests` per stream
        argv = client_argv(paths.config, target, client_id=0, requests=requests, barrier=False,
                           streams=f"0-{streams - 1}" if streams > 1 else "0")
        if small_parent:
            # The client's max_rss_mb is getrusage's ru_maxrss, which Linux carries over
            # fork + exec from the parent's memory (a 100 MB parent: >= 100 MB, whatever
            # the client uses). Spawned by a bash that forks it, the parent is bash.
            argv = ["bash", "-c", '"$@"; exit $?', "osmi-client", *argv]
        # Own process group, killed on the way out whatever happens (the bash in
        # between means PR_SET_PDEATHSIG would reach bash only).
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True, preexec_fn=die_with_parent)
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        finally:
            if process.returncode is None:  # not reaped yet: the group id is still ours
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"osmi-client {tag} failed ({process.returncode}):\n{stderr[-3000:]}")
        summary = json.loads(paths.client_summary(0).read_text())
        if summary["failed"]:
            raise RuntimeError(f"osmi-client {tag}: {summary['failed']} requests failed: {summary['errors']}")
        return summary, paths
