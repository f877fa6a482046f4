"""Grid validation: every problem named with file, key and value; defaults; profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from osmi_ee.ee.config import GridError, load_experiment_config, load_grid
from osmi_ee.ee.expand import expand

GOOD = {"name": "g", "experiment": {"model": ["small_lstm", "medium_cnn"], "servers": [1, 2],
                                   "clients": [1, 4], "batch": [1, 16]}}


def test_good_grid_expands_to_cartesian_product(write_grid):
    grid = load_grid(write_grid(GOOD))
    experiments = expand(grid)
    assert len(experiments) == 16
    assert len({e.id for e in experiments}) == 16
    first = experiments[0]
    assert first.params == {"model": "small_lstm", "servers": 1, "clients": 1, "batch": 1,
                            "gpu": "cpu", "scenario": "closed", "rate": None, "repeat": 1}
    assert first.id.startswith("small_lstm-s1-c1-b1-cpu-r1-")
    # Types survive (cloudmesh-ee's string expansion would give '1').
    assert all(isinstance(e.params["batch"], int) for e in experiments)


def test_scenarios_and_rates(write_grid):
    grid = load_grid(write_grid({"name": "g", "experiment": {
        "model": "small_lstm", "scenario": ["closed", "poisson"], "rate": [10, 20.5]}}))
    experiments = expand(grid)
    # closed ignores the rate: one closed point, two poisson points
    assert [(e.params["scenario"], e.params["rate"]) for e in experiments] == [
        ("closed", None), ("poisson", 10), ("poisson", 20.5)]
    assert experiments[2].id.startswith("small_lstm-s1-c1-b1-cpu-poisson-q20.5-r1-")
    with pytest.raises(GridError, match="needs a target rate"):
        load_grid(write_grid({"name": "g", "experiment": {"model": "small_lstm", "scenario": "poisson"}}))
    with pytest.raises(GridError, match="unknown load scenario"):
        load_grid(write_grid({"name": "g", "experiment": {"model": "small_lstm", "scenario": "burst"}}))


def test_ids_are_stable_and_depend_on_settings(write_grid):
    a = [e.id for e in expand(load_grid(write_grid(GOOD)))]
    b = [e.id for e in expand(load_grid(write_grid(GOOD)))]
    assert a == b
    changed = {**GOOD, "measure": {"requests": 7}}
    c = [e.id for e in expand(load_grid(write_grid(changed)))]
    assert set(a).isdisjoint(c)


def test_unknown_model_is_rejected_with_key_and_value(write_grid):
    path = write_grid({"name": "g", "experiment": {"model": ["small_lstm", "huge_gpt"]}})
    with pytest.raises(GridError) as info:
        load_grid(path)
    message = str(info.value)
    assert str(path) in message
    assert "experiment.model" in message and "'huge_gpt'" in message
    assert "small_lstm, medium_cnn, large_tcnn" in message


@pytest.mark.parametrize("section, bad, key", [
    ({"experiment": {"model": "small_lstm", "servers": [0]}}, 0, "experiment.servers"),
    ({"experiment": {"model": "small_lstm", "batch": ["x"]}}, "'x'", "experiment.batch"),
    ({"experiment": {"model": "small_lstm", "gpu": ["h100"]}}, "'h100'", "experiment.gpu"),
    ({"experiment": {"model": "small_lstm", "colour": [1]}}, "[1]", "experiment.colour"),
    ({"experiment": {"model": "small_lstm"}, "measure": {"timeout_s": -1}}, -1, "measure.timeout_s"),
    ({"experiment": {"model": "small_lstm"}, "serve": {"server": "triton"}}, "'triton'", "serve.server"),
    ({"experiment": {"model": "small_lstm"}, "job": {"time": 600}}, 600, "job.time"),
    ({"experiment": {"model": "small_lstm"}, "profile": "nowhere"}, "'nowhere'", "profile"),
    ({"experiment": {"model": "small_lstm"}, "typo": 1}, 1, "typo"),
])
def test_bad_values_name_key_and_value(write_grid, section, bad, key):
    with pytest.raises(GridError) as info:
        load_grid(write_grid({"name": "g", **section}))
    assert any(p.startswith(key) and str(bad) in p for p in info.value.problems), info.value.problems


def test_all_problems_reported_at_once(write_grid):
    path = write_grid({"name": "bad name", "experiment": {"model": ["x"], "clients": [0]},
                       "measure": {"requests": 10, "duration_s": 2}})
    with pytest.raises(GridError) as info:
        load_grid(path)
    assert len(info.value.problems) == 4


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(GridError, match="cannot read"):
        load_grid(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(broken)


def test_shipped_grids_are_valid():
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "experiments").glob("*.yaml")):
        assert expand(load_grid(path)), path


def test_generated_config_reads_back_with_same_schema(write_grid, tmp_path):
    from osmi_ee.ee.generate import generate

    experiments = generate(load_grid(write_grid(GOOD)), tmp_path / "sweep")
    exp = experiments[5]
    grid, params, raw = load_experiment_config(tmp_path / "sweep" / exp.id / "config.yaml")
    assert params == exp.params
    assert raw["ee"]["identifier"] == exp.id
    assert grid.measure == exp.grid.measure
