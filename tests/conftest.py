"""Shared fixtures: one tiny exported small_lstm per test session, grid writing; and
what the session starts it stops (a Slurm test cluster it had to start)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """small_lstm exported once (8 samples, 1 epoch): enough to serve real answers."""
    from osmi_ee.osmi.export import export_models

    out = tmp_path_factory.mktemp("models")
    export_models(["small_lstm"], out, samples=8, epochs=1, batch_size=4, progress=False)
    return out


@pytest.fixture
def write_grid(tmp_path):
    """Writes a grid mapping as YAML in tmp_path and returns its path."""

    def write(data: dict, name: str = "grid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def during_window():
    """`with during_window(exp, fault, delay_s) as hit:` runs `fault(exp)` in a thread
    `delay_s` after the experiment's measured window opens (its barrier's `go` file);
    `hit` then holds what the fault returned (whether it found its target)."""

    @contextlib.contextmanager
    def inject(exp, fault, delay_s: float = 1.5):
        hit: list = []

        def run() -> None:
            deadline = time.monotonic() + 120
            while not (exp.barrier / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(delay_s)
            hit.append(fault(exp))

        thread = threading.Thread(target=run)
        thread.start()
        try:
            yield hit
        finally:
            thread.join()

    return inject


@pytest.fixture
def require_haproxy():
    if not shutil.which("haproxy"):
        pytest.fail("HAProxy is not installed: `make test` installs it (apt-get install haproxy)")


def pytest_sessionfinish(session, exitstatus):
    # The Slurm fixtures start a test cluster when none runs; leave the machine as we found it.
    # (Imported by the Slurm tests only: no import, nothing was started.)
    cluster = sys.modules.get("tests.slurm_cluster")
    if cluster is not None:
        try:
            cluster.stop_started_cluster()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"\nconftest: could not stop the Slurm test cluster this session started: {exc}",
                  file=sys.stderr)
