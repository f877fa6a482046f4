"""The line `osmi-ee run` ends with when points landed unstable."""

from __future__ import annotations

import json
from pathlib import Path

from osmi_ee.ee.cli import unstable_note
from osmi_ee.ee.paths import SweepPaths


def write(sweep: SweepPaths, exp_id: str, stable: bool, other_cores: float) -> None:
    exp = sweep.experiment(exp_id)
    exp.results.mkdir(parents=True)
    exp.summary.write_text(json.dumps({
        "schema": "osmi-ee/summary/1", "valid": stable, "measurement": {"stable": stable},
        "machine_load": {"cpu_count": 2, "loadavg_start": [9.3, 5, 2], "loadavg_end": [9.3, 5, 2],
                         "other_processes_cores": other_cores, "cpu_steal_fraction": 0.0}}))


def test_unstable_points_are_reported_with_the_busy_machine(tmp_path: Path) -> None:
    sweep = SweepPaths(tmp_path)
    write(sweep, "a", True, 0.0)
    write(sweep, "b", False, 1.6)
    note = unstable_note(sweep, ["a", "b"])
    assert note and note.startswith("1 of 2 point(s) landed unstable")
    assert "the machine is busy: other processes used 1.6 of 2 cores (load average 9.3)" in note
    assert unstable_note(sweep, ["a"]) is None


def test_unstable_on_a_quiet_machine_says_so(tmp_path: Path) -> None:
    sweep = SweepPaths(tmp_path)
    write(sweep, "b", False, 0.1)
    assert "no sign of a busy machine" in unstable_note(sweep, ["b"])


def test_local_runs_interleave_repeats(tmp_path: Path) -> None:
    from osmi_ee.ee.local import run_order

    ids = ["a-r1", "a-r2", "b-r1", "b-r2"]
    params = {i: {"repeat": int(i[-1])} for i in ids}
    (tmp_path / "sweep.json").write_text(json.dumps({"experiments": ids, "params": params}))
    assert run_order(SweepPaths(tmp_path), ids) == ["a-r1", "b-r1", "a-r2", "b-r2"]
