"""A sweep as job arrays, checked without a cluster: the scripts `generate` writes
for Rivanna's grid (one per resource shape, valid bash, each task's lines those of
its own job.slurm), the index lists submit sends, the squeue records status reads
back, the submit-only job keys, and the folder `cms ee list` scans (with the real
`cms`). Sending arrays to a real Slurm is in test_slurm.py."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.arrays import PER_EXPERIMENT_FLAGS, expand_task_string, index_spec, load_arrays
from osmi_ee.ee.config import GridError, Job, load_grid
from osmi_ee.ee.expand import expand
from osmi_ee.ee.paths import SweepPaths
from osmi_ee.ee.slurm import array_args, squeue_ids

REPO = Path(__file__).resolve().parents[1]
RIVANNA = REPO / "experiments" / "rivanna.yaml"


def sbatch_lines(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]


def own_shape(script: Path) -> list[str]:
    return [line for line in sbatch_lines(script) if not line[len("#SBATCH "):].startswith(PER_EXPERIMENT_FLAGS)]


@pytest.fixture(scope="module")
def rivanna(tmp_path_factory):
    """`make generate EXPERIMENT=experiments/rivanna.yaml`, into a temporary folder."""
    out = tmp_path_factory.mktemp("rivanna") / "sweep"
    assert cli.main(["generate", "--grid", str(RIVANNA), "--out", str(out)]) == 0
    return SweepPaths(out)


def test_rivanna_is_one_array_per_resource_shape(rivanna):
    arrays, python = load_arrays(rivanna)
    ids = rivanna.experiment_ids()
    assert sorted(e for a in arrays for e in a.experiments) == sorted(ids)  # each experiment in one array
    shapes = {tuple(own_shape(rivanna.experiment(e).job_script)) for e in ids}
    assert len(arrays) == len(shapes) and len({a.shape for a in arrays}) == len(arrays)
    assert len(arrays) < len(ids) / 10  # 864 experiments are not 864 submissions
    assert Path(python).is_file()
    for array in arrays:
        script = rivanna.array_script(array.name)
        tasks = rivanna.array_tasks(array.name).read_text().splitlines()
        assert tasks == [str(rivanna.experiment(e).root) for e in array.experiments]
        assert own_shape(script) == list(array.shape)
        for eid in array.experiments:  # a task asks for exactly what its experiment's own job asks for
            assert own_shape(rivanna.experiment(eid).job_script) == own_shape(script), eid


def test_rivanna_arrays_ask_for_the_right_gpus(rivanna):
    grid = load_grid(RIVANNA)
    arrays, _ = load_arrays(rivanna)
    params = json.loads(rivanna.sweep.read_text())["params"]
    seen = set()
    for array in arrays:
        (gres,) = [line for line in array.shape if line.startswith("#SBATCH --gres=")]
        for eid in array.experiments:
            p = params[eid]
            if grid.job.nodes == 1:  # every shard on the one node: one GPU each
                want = grid.profile.gpus[p["gpu"]].gres.replace("{n}", str(p["servers"]))
                assert gres == f"#SBATCH --gres={want}", (array.name, eid)
            seen.add((p["gpu"], p["servers"]))
    assert seen == {(g, s) for g in grid.axes["gpu"] for s in grid.axes["servers"]}


def test_rivanna_array_scripts_pass_bash_n(rivanna):
    arrays, _ = load_arrays(rivanna)
    scripts = [rivanna.array_script(a.name) for a in arrays] + [rivanna.collect_script, rivanna.export_script]
    for script in scripts:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"
        assert os.access(script, os.X_OK) or script.suffix == ".slurm"
    text = rivanna.array_script(arrays[0].name).read_text()
    assert "exec bash job.slurm" in text and f"--output=slurm/logs/{arrays[0].name}-%A_%a.out" in text
    assert "#SBATCH --account=bii_dsc_community" in rivanna.collect_script.read_text()
    assert "--gres" not in rivanna.collect_script.read_text()


def test_multi_node_experiments_are_one_array_of_multi_node_tasks(tmp_path):
    """experiments/rivanna-multinode.yaml: each task asks for its 3 nodes and 4 GPUs on each."""
    grid = REPO / "experiments" / "rivanna-multinode.yaml"
    if not grid.exists():
        pytest.skip("no multi-node example grid in this tree")
    sweep = SweepPaths(tmp_path / "sweep")
    assert cli.main(["generate", "--grid", str(grid), "--out", str(sweep.root)]) == 0
    (array,), _ = load_arrays(sweep)
    assert "#SBATCH --nodes=3" in array.shape and "#SBATCH --gres=gpu:a100:4" in array.shape
    assert sorted(array.experiments) == sorted(sweep.experiment_ids())
    for eid in array.experiments:
        assert own_shape(sweep.experiment(eid).job_script) == list(array.shape)
    assert subprocess.run(["bash", "-n", str(sweep.array_script(array.name))]).returncode == 0


def test_index_lists_fold_runs_and_read_back():
    assert index_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert index_spec([3]) == "3"
    assert expand_task_string("5-6%2") == [5, 6]
    assert expand_task_string("1,3-5") == [1, 3, 4, 5]
    assert expand_task_string("0-15:4") == [0, 4, 8, 12]
    rng = random.Random(7)
    for _ in range(200):
        chosen = sorted(rng.sample(range(1000), rng.randint(1, 60)))
        assert expand_task_string(index_spec(chosen)) == chosen


def test_array_flags_follow_the_job_keys():
    assert array_args(Job(), [0, 1, 2]) == ["--array=0-2", "--no-requeue"]
    args = array_args(Job(max_running=4, retries=2), [1, 3], dependency="afterok:9")
    assert args[0] == "--array=1,3%4" and "--requeue" in args and "--dependency=afterok:9" in args
    assert any(a.startswith("--signal=B:USR1@") for a in args)


def test_squeue_records_map_back_to_array_tasks():
    running = {"job_id": 26, "array_job_id": 25, "array_task_id": 1, "array_task_string": "", "job_state": "RUNNING"}
    pending = {"job_id": 25, "array_job_id": 25, "array_task_id": None, "array_task_string": "5-6%2",
               "job_state": "PENDING"}
    newer = {"job_id": 40, "array_job_id": {"set": True, "number": 39}, "array_task_id": {"set": True, "number": 0},
             "job_state": ["RUNNING"]}
    plain = {"job_id": 12, "array_job_id": 0, "array_task_id": None, "array_task_string": "", "job_state": "PENDING"}
    assert squeue_ids(running) == ["26", "25_1"]
    assert squeue_ids(pending) == ["25", "25_5", "25_6"]
    assert squeue_ids(newer) == ["40", "39_0"]
    assert squeue_ids(plain) == ["12"]


def test_submit_keys_are_checked_and_leave_experiment_ids_alone(write_grid):
    data = {"name": "keys", "experiment": {"model": ["small_lstm"], "batch": [1, 2]}}
    path = write_grid(data)
    plain = [e.id for e in expand(load_grid(path))]
    tuned = load_grid(path, overrides=["job.max_running=4", "job.retries=2", "job.collect=true"])
    assert (tuned.job.max_running, tuned.job.retries, tuned.job.collect) == (4, 2, True)
    assert [e.id for e in expand(tuned)] == plain  # how a sweep is sent is no part of an experiment
    assert "max_running" not in tuned.settings()["job"]
    with pytest.raises(GridError) as info:
        load_grid(path, overrides=["job.max_running=0", "job.retries=11", "job.collect=maybe"])
    problems = " ".join(info.value.problems)
    for key, value in (("job.max_running", "0"), ("job.retries", "11"), ("job.collect", "'maybe'")):
        assert f"{key}:" in problems and f"(got {value})" in problems, problems


def cms_ee_list(sweep: SweepPaths, home: Path) -> subprocess.CompletedProcess:
    """The real `cms ee list`, run where a user would: in the sweep folder (it scans ./project)."""
    cms = Path(sys.executable).parent / "cms"
    home.mkdir(exist_ok=True)  # cms writes ~/.cloudmesh on first use
    return subprocess.run([str(cms), "ee", "list"], cwd=sweep.root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(home)})


def fake_finished_run(sweep: SweepPaths, eid: str, verdict: str) -> None:
    """What a job leaves: results, status, its Slurm log with progress lines, linked as latest.out."""
    exp = sweep.experiment(eid)
    exp.results.mkdir(parents=True, exist_ok=True)
    (exp.results / "summary.json").write_text(json.dumps({
        "schema": "osmi-ee/summary/1", "experiment_id": eid, "valid": verdict == "valid",
        "reasons": [] if verdict == "valid" else ["too few requests"],
        "requests": {"sent": 200, "ok": 200, "failed": 0}, "samples_ok": 200, "window_s": 2.0,
        "throughput": {"samples_per_s": 100.0, "samples_per_s_ci95": [95.0, 105.0], "requests_per_s": 100.0},
        "latency_ms": {"n": 200, "mean": 10.0, "p50": 10.0, "p90": 12.0, "p99": None, "max": 20.0},
        "backends": {"s0": {"requests": 200, "share": 1.0}}}))
    exp.status.write_text(verdict + "\n")
    log = exp.slurm_log("41")
    log.write_text("# cloudmesh status=running progress=0 msg=job-started pid=41\n"
                   "some output: with a colon\n"
                   f"# cloudmesh status={'done' if verdict == 'valid' else verdict} progress=100 "
                   f"msg={verdict} pid=41\n")
    exp.link_latest_log(log)


@pytest.mark.slow  # analyze draws its plots (~25 s here)
def test_cms_ee_list_reads_a_generated_and_an_analyzed_sweep(write_grid, tmp_path):
    path = write_grid({"name": "cms", "experiment": {"model": ["small_lstm"], "batch": [1, 2, 4]}})
    sweep = SweepPaths(tmp_path / "sweep")
    assert cli.main(["generate", "--grid", str(path), "--out", str(sweep.root)]) == 0
    ids = sweep.experiment_ids()
    listed = cms_ee_list(sweep, tmp_path / "home")
    assert listed.returncode == 0 and "Traceback" not in listed.stdout + listed.stderr, listed.stdout
    assert "total: 3" in listed.stdout, listed.stdout

    fake_finished_run(sweep, ids[0], "valid")
    fake_finished_run(sweep, ids[1], "invalid")
    assert cli.main(["analyze", "--grid", str(path), "--out", str(sweep.root)]) == 0
    assert sweep.plots.is_dir() and sweep.report_index.exists()  # the folders it once took for experiments
    listed = cms_ee_list(sweep, tmp_path / "home")
    assert listed.returncode == 0 and "Traceback" not in listed.stdout + listed.stderr, listed.stdout
    rows = [line for line in listed.stdout.splitlines() if line.startswith("| small_lstm")]
    assert len(rows) == 3, listed.stdout
    assert sum("done: valid" in r for r in rows) == 1 and sum("invalid: invalid" in r for r in rows) == 1
    assert "total: 3" in listed.stdout and "done: 1" in listed.stdout, listed.stdout

    # A new attempt moves logs/ away: latest.out (a hard link) still reads, then points at the new log.
    exp = sweep.experiment(ids[0])
    exp.start_attempt()
    assert "msg=valid" in exp.latest_log.read_text()


def test_regenerating_another_grid_drops_its_links(write_grid, tmp_path):
    out = tmp_path / "sweep"
    first = write_grid({"name": "v", "experiment": {"model": ["small_lstm"], "batch": [1, 2]}})
    assert cli.main(["generate", "--grid", str(first), "--out", str(out)]) == 0
    old = SweepPaths(out).experiment_ids()
    second = write_grid({"name": "v", "experiment": {"model": ["small_lstm"], "batch": [8]}}, "second.yaml")
    assert cli.main(["generate", "--grid", str(second), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    view = sorted(p.name for p in sweep.ee_view.iterdir())
    assert view == sweep.experiment_ids() and not set(old) & set(view)
    assert all((sweep.ee_view / eid / "config.yaml").is_file() for eid in view)
    arrays, _ = load_arrays(sweep)
    assert sorted(p.name for p in sweep.slurm_dir.glob("array-*")) == sorted(
        n for a in arrays for n in (f"{a.name}.slurm", f"{a.name}.tasks"))
