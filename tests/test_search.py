"""`osmi-ee search`: the grid's `objective:` and `search:` sections, the search over fake
runs (every step recorded, resumed without rerunning), and one short real search end to
end (osmi-model-server, HAProxy, real clients) down to the report's curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.config import GridError, load_grid
from osmi_ee.ee.paths import SweepPaths, write_atomic, write_json
from osmi_ee.ee.search import PeakSearch, configurations
from osmi_ee.osmi.schema import SEARCH_SCHEMA


def search_grid(models_dir: Path | str = "build/models", **over) -> dict:
    data = {
        "name": "search-test",
        "experiment": {"model": ["small_lstm"], "servers": [1], "batch": [1]},
        "search": {"axis": "clients", "start": 1, "max": 2},
        # 2 s measured, cut into 2 windows; loose stability so a busy test machine
        # does not decide the verdict (the rule itself is unit-tested elsewhere).
        "measure": {"warmup_requests": 2, "duration_s": 2, "stability_windows": 2, "stability_max_s": 8,
                    "stability_tolerance": 0.5, "min_requests": 20, "timeout_s": 30},
        "serve": {"server": "osmi", "models_dir": str(models_dir), "intra_op_threads": 1,
                  "startup_timeout_s": 120},
    }
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    return data


# ------------------------------------------------------------------ the grid schema


def test_search_grid_is_validated_and_the_axis_is_not_expanded(write_grid):
    grid = load_grid(write_grid(search_grid(experiment={"servers": [1, 2]}, objective={"p99_ms": 20})))
    assert grid.search.axis == "clients" and grid.objective.p99_ms == 20.0
    assert grid.axes["clients"] == [1]  # a placeholder: each step sets its own
    assert [c["servers"] for c in configurations(grid)] == [1, 2]
    assert all("clients" not in c for c in configurations(grid))


@pytest.mark.parametrize("over, key, value", [
    ({"search": {"axis": "batch"}}, "search.axis", "'batch'"),
    ({"search": {"start": 0}}, "search.start", "0"),
    ({"search": {"start": 1.5}}, "search.start", "1.5"),
    ({"search": {"start": 8, "max": 4}}, "search.max", "4"),
    ({"search": {"enabled": "yes"}}, "search.enabled", "'yes'"),
    ({"search": {"steps": 3}}, "search.steps", "3"),
    ({"objective": {"p99_ms": -1}}, "objective.p99_ms", "-1"),
    ({"objective": {"p50_ms": 3}}, "objective.p50_ms", "3"),
    ({"experiment": {"clients": [1, 2]}}, "experiment.clients", "[1, 2]"),
    ({"search": {"axis": "rate", "start": 10, "max": 100}}, "experiment.scenario", "None"),
])
def test_bad_search_sections_name_file_key_and_value(write_grid, tmp_path, over, key, value):
    path = write_grid(search_grid(**over))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert any(p.startswith(f"{key}:") and f"(got {value})" in p for p in err.value.problems), err.value.problems
    assert str(path) in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_rate_search_needs_poisson_and_accepts_reals(write_grid):
    grid = load_grid(write_grid(search_grid(experiment={"scenario": ["poisson"]},
                                            search={"axis": "rate", "start": 5.0, "max": 40, "resolution": 2.5})))
    assert grid.axes["rate"] == [5.0] and grid.search.resolution == 2.5


def test_a_disabled_search_expands_like_any_grid(write_grid):
    grid = load_grid(write_grid(search_grid(experiment={"clients": [1, 4]}, search={"enabled": False})))
    assert grid.axes["clients"] == [1, 4]


# ------------------------------------------------------------------ the search loop (fake runs)


def fake_run(capacity: int, ran: list[int]):
    """A step runner that writes what a real job would: status and a summary whose p99 grows with the
    clients; VALID up to `capacity` clients, INVALID beyond."""

    def run(sweep: SweepPaths, experiment_id: str) -> None:
        exp = sweep.experiment(experiment_id)
        clients = yaml_clients(exp.config)
        ran.append(clients)
        valid = clients <= capacity
        write_json(exp.summary, {"schema": "osmi-ee/summary/1", "valid": valid,
                                 "reasons": [] if valid else ["7 request(s) failed"],
                                 "throughput": {"samples_per_s": 100.0 * clients if valid else None,
                                                "samples_per_s_ci95": [95.0 * clients, 105.0 * clients]
                                                if valid else None, "requests_per_s": None},
                                 "latency_ms": {"p50": 2.0 * clients, "p99": 3.0 * clients, "max": 4.0 * clients},
                                 "measurement": {"stable": True}})
        write_atomic(exp.status, "valid\n" if valid else "invalid\n")

    return run


def yaml_clients(config: Path) -> int:
    import yaml

    return yaml.safe_load(config.read_text())["experiment"]["clients"]


def test_search_records_every_step_and_resumes_without_rerunning(write_grid, tmp_path):
    grid = load_grid(write_grid(search_grid(search={"max": 64}, objective={"p99_ms": 31})))
    ran: list[int] = []
    said: list[str] = []
    record = PeakSearch(grid, tmp_path / "sweep", run_step=fake_run(40, ran), say=said.append).run()
    # p99 = 3 x clients <= 31 holds up to 10 clients: doubling to 16, then bisection
    assert ran == [1, 2, 4, 8, 16, 12, 10, 11]
    (entry,) = record["configurations"]
    assert entry["peak"] == 10 and entry["failed_at"] == 11 and entry["done"]
    assert [s["load"] for s in entry["steps"]] == ran
    assert "over the objective" in entry["steps"][-1]["reasons"][0]
    sweep = SweepPaths(tmp_path / "sweep")
    on_disk = json.loads(sweep.search_record.read_text())
    assert on_disk["schema"] == SEARCH_SCHEMA and on_disk["configurations"][0]["peak"] == 10
    listed = json.loads(sweep.sweep.read_text())["experiments"]
    assert listed == [s["experiment_id"] for s in entry["steps"]]  # every step is an experiment of the sweep
    assert any("peak clients=10" in line for line in said)

    again: list[int] = []
    record = PeakSearch(grid, tmp_path / "sweep", run_step=fake_run(40, again), say=said.append).run()
    assert again == [] and record["configurations"][0]["peak"] == 10
    assert all(s["reused"] for s in record["configurations"][0]["steps"])


def test_invalid_steps_fail_and_bound_the_peak(write_grid, tmp_path):
    grid = load_grid(write_grid(search_grid(search={"max": 64})))
    ran: list[int] = []
    record = PeakSearch(grid, tmp_path / "sweep", run_step=fake_run(5, ran), say=lambda _: None).run()
    (entry,) = record["configurations"]
    assert entry["peak"] == 5
    invalid = [s for s in entry["steps"] if not s["valid"]]
    assert invalid and all(s["samples_per_s"] is None and "7 request(s) failed" in s["reasons"] for s in invalid)


def test_rate_search_steps_are_open_loop_experiments_and_bisect_to_the_resolution(write_grid, tmp_path):
    import yaml

    grid = load_grid(write_grid(search_grid(experiment={"scenario": ["poisson"]},
                                            search={"axis": "rate", "start": 10, "max": 160, "resolution": 5})))
    rates: list[float] = []

    def run(sweep: SweepPaths, experiment_id: str) -> None:
        exp = sweep.experiment(experiment_id)
        params = yaml.safe_load(exp.config.read_text())["experiment"]
        assert params["scenario"] == "poisson" and params["clients"] == 1
        rates.append(params["rate"])
        valid = params["rate"] <= 57
        write_json(exp.summary, {"schema": "osmi-ee/summary/1", "valid": valid, "reasons": [],
                                 "throughput": {"samples_per_s": params["rate"] if valid else None},
                                 "latency_ms": {"p50": 1.0, "p99": None, "max": 2.0}, "measurement": {"stable": True}})
        write_atomic(exp.status, "valid\n" if valid else "invalid\n")

    record = PeakSearch(grid, tmp_path / "sweep", run_step=run, say=lambda _: None).run()
    (entry,) = record["configurations"]
    assert rates[:4] == [10, 20, 40, 80]
    assert entry["peak"] <= 57 < entry["peak"] + 5 and entry["failed_at"] - entry["peak"] <= 5


def test_report_draws_the_search_without_speeds_for_invalid_steps(write_grid, tmp_path):
    from osmi_ee.analysis import search_charts

    grid = load_grid(write_grid(search_grid(search={"max": 16})))
    PeakSearch(grid, tmp_path / "sweep", run_step=fake_run(5, []), say=lambda _: None).run()
    (chart,) = search_charts.charts(tmp_path / "sweep")
    assert chart.section == "search" and len(chart.figures) == 1
    section = search_charts.section(tmp_path / "sweep")
    rows = section["table"].rows
    assert [r[1] for r in rows] == ["1", "2", "4", "8", "6", "5 (peak)"]
    assert all(r[5] == "– (no speed)" for r in rows if r[3] == "invalid")
    assert section["strong"][0].endswith("peak clients=5, 6 step(s)")


# ------------------------------------------------------------------ end to end


@pytest.mark.e2e
@pytest.mark.slow  # two real runs and an analysis: ~60 s on a quiet 2-core machine, 105 s at load 9
@pytest.mark.usefixtures("require_haproxy")
def test_real_search_records_steps_resumes_and_reports_the_curve(write_grid, tmp_path, models_dir, capsys):
    path = write_grid(search_grid(models_dir))
    out = tmp_path / "sweep"
    assert cli.main(["search", "--grid", str(path), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    record = json.loads(sweep.search_record.read_text())
    (entry,) = record["configurations"]
    steps = entry["steps"]
    assert [s["load"] for s in steps] == [1, 2]
    for step in steps:
        summary = sweep.experiment(step["experiment_id"]).read_summary()
        assert summary["params"]["clients"] == step["load"]
        assert step["valid"] == summary["valid"] and step["state"] in ("valid", "invalid")
    assert all(s["passed"] for s in steps), [s["reasons"] for s in steps]
    assert entry["peak"] == 2 and entry["done"]
    first = capsys.readouterr().out
    assert "peak clients=2" in first

    # again, now under an objective no run can meet: nothing is rerun, the verdicts change
    assert cli.main(["search", "--grid", str(path), "--out", str(out), "objective.p99_ms=0.001",
                     "--analyze"]) == 0
    record = json.loads(sweep.search_record.read_text())
    (entry,) = record["configurations"]
    assert [s["load"] for s in entry["steps"]] == [1] and entry["steps"][0]["reused"]
    assert entry["peak"] is None and "objective" in entry["steps"][0]["reasons"][0]
    assert sweep.experiment(steps[0]["experiment_id"]).attempt_numbers() == []  # never run twice
    html = sweep.report_index.read_text()
    assert "Peak search" in html and "fig-search_peak.png" in html
    assert (sweep.report / "fig-search_peak.png").stat().st_size > 1000
