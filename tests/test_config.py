"""Grid validation: every problem named with file, key and value; defaults; profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
    ({"experiment": {"model": "small_lstm"}, "serve": {"server": "torchserve"}}, "'torchserve'", "serve.server"),
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


# --- strict input: patterns in full, names not paths, no duplicate keys, bounded numbers ---------

INLINE = {"name": "inl", "gpus": {"g1": {"gres": "gpu:{n}", "cpus_per_task": 2, "mem": "4G"}},
          "scheduler": {"extra_sbatch": ["--exclusive"]}}


def _problems(path, **kwargs) -> list[str]:
    with pytest.raises(GridError) as info:
        load_grid(path, **kwargs)
    assert all(line.startswith(f"{path}: ") for line in str(info.value).splitlines())  # names the file
    return info.value.problems


@pytest.mark.parametrize("section, key, bad", [
    ({"name": "g\n"}, "name", "g\n"),
    ({"name": "g", "job": {"time": "00:10:00\n"}}, "job.time", "00:10:00\n"),
    ({"name": "g", "job": {"time": "00:99:00"}}, "job.time", "00:99:00"),
])
def test_trailing_newline_in_name_or_time_is_rejected(write_grid, section, key, bad):
    problems = _problems(write_grid({"experiment": {"model": "small_lstm"}, **section}))
    assert any(p.startswith(f"{key}: ") and p.endswith(f"(got {bad!r})") for p in problems), problems


@pytest.mark.parametrize("ref", ["../../../tmp/x", "/etc/passwd", "slurm/profiles/localhost",
                                 "localhost.yaml", "..", "local\nhost", 7, ["localhost"]])
def test_profile_is_a_name_never_a_path(write_grid, tmp_path, ref):
    # A readable, valid profile file outside the profiles folder must not be loaded.
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(INLINE))
    problems = _problems(write_grid({"name": "g", "profile": ref, "experiment": {"model": "small_lstm"}}))
    assert any(p.startswith("profile: ") and "no path" in p and repr(ref) in p for p in problems), problems


def test_profile_file_is_given_explicitly(write_grid, tmp_path):
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({**INLINE, "name": "mine"}))
    grid = load_grid(write_grid({"name": "g", "experiment": {"model": "small_lstm", "gpu": "g1"}}),
                     profile_file=tmp_path / "mine.yaml")
    assert grid.profile.name == "mine" and list(grid.profile.gpus) == ["g1"]
    # Same rules for a file as inline; problems name the profile file and key.
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"gpus": {"g1": {"cpus_per_task": "2\nreboot"}}}))
    problems = _problems(write_grid({"name": "g", "experiment": {"model": "small_lstm"}}),
                         profile_file=tmp_path / "bad.yaml")
    assert problems == [f"profile: {tmp_path / 'bad.yaml'}: gpus.g1.cpus_per_task: an integer from 1 to 1024 "
                        f"(got '2\\nreboot')"]


@pytest.mark.parametrize("where", ["inline", "file"])
def test_newline_in_cpus_per_task_is_rejected(write_grid, tmp_path, where):
    profile = {"gpus": {"g1": {"cpus_per_task": "2\ntouch /tmp/pwned", "mem": "4G"}}}
    if where == "file":
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    grid = {"name": "g", "profile": "p" if where == "file" else profile,
            "experiment": {"model": "small_lstm", "gpu": "g1"}}
    problems = _problems(write_grid(grid), profiles_dir=tmp_path)
    key = "profile.gpus.g1.cpus_per_task" if where == "inline" else f"profile: {tmp_path / 'p.yaml'}: gpus.g1.cpus_per_task"
    assert any(p.startswith(key) and "touch /tmp/pwned" in p for p in problems), problems


@pytest.mark.parametrize("key, value", [
    ("gres", "gpu:1 --wrap=x"), ("mem", "4G\n"), ("mem", 4096), ("partition", "a;b"),
    ("constraint", "$(x)"), ("reservation", "`x`"), ("price_per_gpu_hour", float("nan")),
    ("price_per_gpu_hour", "1"), ("gpus_per_node", 0), ("cpus_per_task", True), ("cpus_per_task", 10**6),
])
def test_every_gpu_type_field_is_typed(write_grid, key, value):
    profile = {"gpus": {"g1": {key: value}}}
    problems = _problems(write_grid({"name": "g", "profile": profile, "experiment": {"model": "small_lstm"}}))
    assert any(p.startswith(f"profile.gpus.g1.{key}: ") and repr(value) in p for p in problems), problems


@pytest.mark.parametrize("extra", ["--exclusive --wrap=reboot", "--exclusive\nreboot", "exclusive",
                                   "--time=99:00:00", "--gres=gpu:8", 5])
def test_bad_extra_sbatch_is_a_grid_error(write_grid, extra):
    profile = {**INLINE, "scheduler": {"extra_sbatch": [extra]}}
    problems = _problems(write_grid({"name": "g", "profile": profile, "experiment": {"model": "small_lstm"}}))
    assert any(p.startswith("profile.scheduler.extra_sbatch[0]: ") and repr(extra) in p for p in problems)


def test_duplicate_keys_are_rejected_naming_key_and_line(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nmeasure:\n  requests: 5\nexperiment:\n  model: small_lstm\n"
                    "measure:\n  duration_s: 3\n")
    assert _problems(grid) == ["measure: duplicate key on line 6 (first on line 2); each key may appear once"]
    # Nested keys too, named by their path; and in profile files.
    (tmp_path / "p.yaml").write_text("gpus:\n  g1:\n    mem: 4G\n    mem: 8G\n")
    grid.write_text("name: g\nprofile: p\nexperiment: {model: small_lstm, gpu: g1}\n")
    (problem,) = _problems(grid, profiles_dir=tmp_path)
    assert problem.startswith(f"profile: {tmp_path / 'p.yaml'}: gpus.g1.mem: duplicate key on line 4")


def test_duplicate_key_in_generated_config_is_rejected(write_grid, tmp_path):
    from osmi_ee.ee.generate import generate

    (exp,) = generate(load_grid(write_grid({"name": "g", "experiment": {"model": "small_lstm"}})), tmp_path / "s")
    config = tmp_path / "s" / exp.id / "config.yaml"
    config.write_text(config.read_text() + "measure: {}\n")
    with pytest.raises(GridError, match=r"measure: duplicate key on line \d+ \(first on line \d+\)"):
        load_experiment_config(config)


def test_yaml_merge_keys_may_override(write_grid, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nexperiment: {model: small_lstm}\nx: &m {requests: 5, timeout_s: 9}\n"
                    "measure:\n  <<: *m\n  requests: 7\n")
    problems = _problems(grid)
    assert problems == ["x: unknown key; known keys: name, description, profile, experiment, measure, serve, "
                        "job, objective, search (got {'requests': 5, 'timeout_s': 9})"]


@pytest.mark.parametrize("section, key, bad", [
    ({"measure": {"duration_s": float("inf")}}, "measure.duration_s", "inf"),
    ({"measure": {"duration_s": float("nan")}}, "measure.duration_s", "nan"),
    ({"measure": {"duration_s": 86401}}, "measure.duration_s", "86401"),
    ({"measure": {"timeout_s": 1e300}}, "measure.timeout_s", "1e+300"),
    ({"measure": {"warmup_s": float("inf")}}, "measure.warmup_s", "inf"),
    ({"measure": {"requests": 10**12}}, "measure.requests", str(10**12)),
    ({"measure": {"seed": -1}}, "measure.seed", "-1"),
    ({"measure": {"stability_tolerance": float("nan")}}, "measure.stability_tolerance", "nan"),
    ({"serve": {"startup_timeout_s": float("inf")}}, "serve.startup_timeout_s", "inf"),
    ({"job": {"nodes": 10**6}}, "job.nodes", str(10**6)),
    ({"experiment": {"model": "small_lstm", "servers": [1000]}}, "experiment.servers", "1000"),
    ({"experiment": {"model": "small_lstm", "clients": [100000]}}, "experiment.clients", "100000"),
    ({"experiment": {"model": "small_lstm", "batch": [1e8]}}, "experiment.batch", "100000000.0"),
    ({"experiment": {"model": "small_lstm", "batch": [10**8]}}, "experiment.batch", "100000000"),
    ({"experiment": {"model": "small_lstm", "scenario": "poisson", "rate": [float("inf")]}},
     "experiment.rate", "inf"),
])
def test_non_finite_and_huge_numbers_are_rejected(write_grid, section, key, bad):
    grid = {"name": "g", "experiment": {"model": "small_lstm"}, **section}
    problems = _problems(write_grid(grid))
    assert any(p.startswith(f"{key}: ") and p.endswith(f"(got {bad})") for p in problems), problems


def test_yaml_inf_literal_is_rejected(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nexperiment: {model: small_lstm}\nmeasure: {duration_s: .inf}\n")
    assert _problems(grid) == ["measure.duration_s: a number > 0, at most 86400, or null (got inf)"]


def test_servers_capped_by_gpus_per_node(write_grid):
    profile = {"gpus": {"g1": {"gres": "gpu:{n}", "gpus_per_node": 4}}}
    base = {"name": "g", "profile": profile}
    assert load_grid(write_grid({**base, "experiment": {"model": "small_lstm", "servers": [1, 4]}}))
    problems = _problems(write_grid({**base, "experiment": {"model": "small_lstm", "servers": [2, 8]}}))
    assert problems == ["job.nodes: 8 shards at 4 per node (GPU type 'g1' has 4 per node) need 2 nodes (got 1)"]
    # More nodes hold more shards (osmi.placement).
    assert load_grid(write_grid({**base, "experiment": {"model": "small_lstm", "servers": [2, 8]},
                                 "job": {"nodes": 2}}))


def test_bad_profile_does_not_add_spurious_gpu_problems(write_grid):
    profile = {"gpus": {"a100": {"mem": "lots"}}}
    problems = _problems(write_grid({"name": "g", "profile": profile,
                                     "experiment": {"model": "small_lstm", "gpu": ["a100"]}}))
    assert problems == ["profile.gpus.a100.mem: a quoted Slurm memory size: digits and an optional K, M, G "
                        "or T, e.g. \"64G\" (got 'lots')"]


def test_batch_is_checked_against_the_message_and_server_limits(write_grid):
    heavy = {"name": "g", "experiment": {"model": ["large_tcnn"], "batch": [4096]},
             "serve": {"server": "tfserving"}}
    with pytest.raises(GridError) as err:
        load_grid(write_grid(heavy))
    assert "large_tcnn request of 4096 samples" in str(err.value) and "MiB limit" in str(err.value)
    ours = {"name": "g", "experiment": {"model": ["small_lstm"], "batch": [2048]}}
    with pytest.raises(GridError) as err:
        load_grid(write_grid(ours))
    assert "experiment.batch" in str(err.value) and "at most 1024" in str(err.value)
    assert load_grid(write_grid({**ours, "serve": {"server": "tfserving"}})).axes["batch"] == [2048]
