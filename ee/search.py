"""`osmi-ee search`: per configuration, the peak load under the validity rules and the objective.

Every combination of the grid's other axes is one configuration. For each, the
policy (ee/search_policy.py) names the next load; that step is an ordinary
experiment (same generate path: config.yaml and job script in its own folder,
listed in sweep.json, so `analyze` sees every step like any run), run by the
local executor; its summary decides the next step.

The experiments' own files are the truth: a step whose experiment already has
a final verdict (valid or invalid) is read, never run again, so a stopped search
resumes where it was. `<sweep>/search.json` (paths.SweepPaths.search_record) is
rewritten atomically after every step from those verdicts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from osmi_ee.ee.config import Grid
from osmi_ee.ee.expand import Experiment, expand, permutations
from osmi_ee.ee.outcome import recorded_state
from osmi_ee.ee.paths import SweepPaths, write_json
from osmi_ee.ee.search_policy import SearchSpace, decide, judge_summary
from osmi_ee.osmi.schema import SEARCH_SCHEMA

FINAL = ("valid", "invalid")  # verdicts a step keeps; anything else (failed, cancelled, ...) is run again


class SearchStopped(RuntimeError):
    """A step could not be run here (another runner holds it); the record so far is written."""


def space_of(grid: Grid) -> SearchSpace:
    search = grid.search
    assert search is not None and search.enabled
    integer = search.axis == "clients"
    return SearchSpace(start=search.start, max=search.max, integer=integer, resolution=search.resolution)


def configurations(grid: Grid) -> list[dict[str, Any]]:
    """Every combination of the axes but the searched one, in grid order."""
    axis = grid.search.axis
    return permutations({a: v for a, v in grid.axes.items() if a != axis})


def label(grid: Grid, config: dict[str, Any]) -> str:
    """The configuration in words: the axes that vary in the grid (else the model)."""
    shown = [a for a, values in grid.axes.items() if a != grid.search.axis and len(values) > 1] or ["model"]
    text = lambda v: v["name"] if isinstance(v, dict) else v  # noqa: E731 - a batching setting by its name
    return " ".join(f"{a}={text(config.get(a))}" for a in shown)


def step_experiment(grid: Grid, config: dict[str, Any], load: float) -> Experiment:
    """The experiment of one step: the grid's point at `config` with the searched axis at `load`,
    expanded like any grid (same params and id as a sweep listing that load would give)."""
    axis = grid.search.axis
    axes = {a: [load] if a == axis else [config[a]] for a in grid.axes}
    (experiment,) = expand(replace(grid, axes=axes))
    return experiment


def step_record(load: float, experiment_id: str, state: str, summary: dict[str, Any] | None,
                objective_p99_ms: float | None, phase: str) -> dict[str, Any]:
    """One step as search.json holds it: load, verdict with every reason, and the figures."""
    verdict = judge_summary(summary, state, objective_p99_ms)
    summary = summary or {}
    throughput = summary.get("throughput") or {}
    latency = summary.get("latency_ms") or {}
    return {"load": load, "experiment_id": experiment_id, "phase": phase, "state": state,
            "valid": state == "valid", "stable": (summary.get("measurement") or {}).get("stable"),
            "passed": verdict.passed, "reasons": list(verdict.reasons),
            "samples_per_s": throughput.get("samples_per_s"),
            "samples_per_s_ci95": throughput.get("samples_per_s_ci95"),
            "requests_per_s": throughput.get("requests_per_s"),
            "latency_p50_ms": latency.get("p50"), "latency_p99_ms": latency.get("p99"),
            "latency_max_ms": latency.get("max")}


RunStep = Callable[[SweepPaths, str], None]


def run_step_locally(sweep: SweepPaths, experiment_id: str) -> None:
    """The local executor on one experiment (raises local.Interrupted on SIGINT/SIGTERM)."""
    from osmi_ee.ee.local import run_local

    (outcome,) = run_local(sweep, only=[experiment_id])
    if outcome.skipped and outcome.state != "valid":
        raise SearchStopped(f"{experiment_id}: {outcome.reason}")


class PeakSearch:
    """One search over a grid's configurations, writing into `sweep`."""

    def __init__(self, grid: Grid, sweep_dir: Path, *, run_step: RunStep = run_step_locally,
                 say: Callable[[str], None] = print):
        self.grid, self.sweep = grid, SweepPaths(Path(sweep_dir).resolve())
        self.space = space_of(grid)
        self.objective = grid.objective.p99_ms if grid.objective else None
        self.run_step, self.say = run_step, say
        self.experiments: dict[str, Experiment] = {}  # every step's, in the order first tried
        self.entries: list[dict[str, Any]] = []

    def run(self) -> dict[str, Any]:
        """Searches every configuration; returns the record (also in search.json)."""
        configs = configurations(self.grid)
        for n, config in enumerate(configs, 1):
            self.entries.append({"label": label(self.grid, config), "params": config, "steps": [],
                                 "peak": None, "peak_experiment_id": None, "failed_at": None, "done": False})
            self._search(self.entries[-1], f"[{n}/{len(configs)}]")
        return self.write_record()

    def _search(self, entry: dict[str, Any], prefix: str) -> None:
        axis = self.grid.search.axis
        passed: dict[float, bool] = {}
        while True:
            decision = decide(self.space, passed)
            entry.update(peak=decision.peak, failed_at=decision.failed_at)
            if decision.next_load is None:
                entry["done"] = True
                peak_step = next((s for s in entry["steps"] if s["load"] == decision.peak), None)
                entry["peak_experiment_id"] = peak_step["experiment_id"] if peak_step else None
                self.write_record()
                self.say(f"{prefix} {entry['label']}: " + _peak_line(axis, decision.peak, peak_step,
                                                                       decision.failed_at, len(entry["steps"])))
                return
            load = decision.next_load
            experiment = step_experiment(self.grid, entry["params"], load)
            exp = self.sweep.experiment(experiment.id)
            state, _ = recorded_state(exp, held=None)
            reused = state in FINAL
            if not reused:
                self._generate(experiment)
                self.say(f"{prefix} {entry['label']}: {axis}={_num(load)} ({decision.phase}) running "
                         f"{experiment.id}")
                try:
                    self.run_step(self.sweep, experiment.id)
                finally:
                    state, _ = recorded_state(exp, held=False)
            else:
                self._generate(experiment)  # listed in sweep.json (a record from an older layout may lack it)
            step = step_record(load, experiment.id, state or "failed", exp.read_summary() if state else None,
                               self.objective, decision.phase)
            step["reused"] = reused
            entry["steps"].append(step)
            passed[load] = step["passed"]
            self.write_record()
            self.say(f"{prefix} {entry['label']}: {axis}={_num(load)} {_verdict_line(step)}")

    def _generate(self, experiment: Experiment) -> None:
        from osmi_ee.ee.generate import generate

        if experiment.id not in self.experiments:
            self.experiments[experiment.id] = experiment
            generate(self.grid, self.sweep.root, experiments=list(self.experiments.values()))

    def write_record(self) -> dict[str, Any]:
        search = self.grid.search
        record = {"schema": SEARCH_SCHEMA, "name": self.grid.name, "grid": str(self.grid.source),
                  "axis": search.axis, "start": search.start, "max": search.max, "resolution": search.resolution,
                  "objective": {"p99_ms": self.objective},
                  "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "configurations": self.entries}
        write_json(self.sweep.search_record, record)
        return record


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _speed(step: dict[str, Any]) -> str:
    if not step["valid"] or step["samples_per_s"] is None:
        return "no speed"
    ci = step.get("samples_per_s_ci95")
    half = f" ±{(ci[1] - ci[0]) / 2:,.1f}" if ci else ""
    p99 = step["latency_p99_ms"]
    return f"{step['samples_per_s']:,.1f}{half} samples/s, p99 {'-' if p99 is None else f'{p99:.1f}'} ms"


def _verdict_line(step: dict[str, Any]) -> str:
    head = "PASS" if step["passed"] else f"fail ({'; '.join(step['reasons'])})"
    return f"{head}: {step['state']}, {_speed(step)}" + (" [recorded earlier]" if step.get("reused") else "")


def _peak_line(axis: str, peak: float | None, step: dict[str, Any] | None, failed_at: float | None,
               runs: int) -> str:
    if peak is None:
        return f"no peak: the first load ({axis}={_num(failed_at)}) already fails; lower search.start ({runs} run(s))"
    above = f", {axis}={_num(failed_at)} fails" if failed_at is not None else " (search.max)"
    return f"peak {axis}={_num(peak)}{above}: {_speed(step) if step else ''} ({runs} run(s))"


def load_record(sweep_dir: Path) -> dict[str, Any] | None:
    """search.json if this sweep has one that is ours, else None."""
    import json

    try:
        record = json.loads(SweepPaths(Path(sweep_dir)).search_record.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SEARCH_SCHEMA else None


def main_search(grid: Grid, sweep_dir: Path) -> int:
    from osmi_ee.ee.local import Interrupted

    search = PeakSearch(grid, sweep_dir)
    try:
        record = search.run()
    except Interrupted as stop:
        search.write_record()
        print(f"osmi-ee search: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except SearchStopped as stop:
        search.write_record()
        print(f"osmi-ee search: stopped, {stop}; rerun to resume", file=sys.stderr)
        return 3
    found = sum(1 for e in record["configurations"] if e["peak"] is not None)
    runs = sum(1 for e in record["configurations"] for s in e["steps"] if not s.get("reused"))
    print(f"searched {len(record['configurations'])} configuration(s): {found} with a peak; "
          f"{runs} run(s) now; record in {search.sweep.search_record}")
    return 0
