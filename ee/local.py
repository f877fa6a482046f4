"""The local executor: runs each experiment's job script with bash, one at a time.

The script is the same one sbatch would get, so a local run exercises the
cluster path too. Experiments whose status is already `valid` are skipped
unless forced, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from tqdm import tqdm

from osmi_ee.ee.paths import SweepPaths


def run_local(sweep: SweepPaths, *, force: bool = False, only: list[str] | None = None) -> Counter:
    """Runs the sweep's experiments; returns a count of final statuses."""
    ids = [i for i in sweep.experiment_ids() if not only or i in only]
    counts: Counter = Counter()
    bar = tqdm(ids, desc="experiments", unit="exp", file=sys.stderr, dynamic_ncols=True)
    for experiment_id in bar:
        exp = sweep.experiment(experiment_id)
        if not force and exp.read_status() == "valid":
            counts["skipped (valid)"] += 1
            continue
        bar.set_postfix_str(experiment_id)
        exp.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OSMI_EE_EXECUTOR": "local"}
        with open(exp.job_log, "wb") as log:
            rc = subprocess.call(["bash", str(exp.job_script)], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=exp.root, env=env)
        status = exp.read_status() or "failed"
        if status == "running":  # the runner died before writing its verdict
            status = "failed"
        counts[status] += 1
        if status != "valid":
            tqdm.write(f"{experiment_id}: {status} (exit {rc}); see {exp.job_log}", file=sys.stderr)
    return counts
