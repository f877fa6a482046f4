"""End to end through real model servers, real HAProxy and real client processes.

No mocks: `osmi-ee generate` + `run` execute each experiment's job script with
bash, exactly as sbatch would, and the tests read the files the job wrote.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.paths import SweepPaths

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_haproxy")]


def grid(models_dir: Path, **over) -> dict:
    data = {
        "name": "e2e",
        "experiment": {"model": ["small_lstm"], "servers": [1, 2], "clients": [2], "batch": [4]},
        # 3 windows of 40 requests at least (2 clients x 60 / 3); a loose stability bound, so a
        # busy test machine does not make the verdict flaky (the rule itself is unit-tested).
        "measure": {"warmup_requests": 2, "requests": 60, "timeout_s": 30, "stability_tolerance": 0.5},
        "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 120},
    }
    for section, values in over.items():
        data[section] = {**data.get(section, {}), **values}
    return data


def run_sweep(write_grid, tmp_path, data) -> tuple[int, SweepPaths, Path]:
    path = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 0
    rc = cli.main(["run", "--grid", str(path), "--out", str(out)])
    return rc, SweepPaths(out), path


def summaries(sweep: SweepPaths) -> list[dict]:
    return [json.loads(sweep.experiment(i).summary.read_text()) for i in sweep.experiment_ids()]


def leftover_processes(sweep: SweepPaths) -> str:
    """Processes whose command line mentions the sweep (servers, haproxy, clients)."""
    out = subprocess.run(["pgrep", "-af", str(sweep.root)], capture_output=True, text=True)
    return out.stdout.strip()


def test_sweep_is_valid_balanced_and_analyzed(write_grid, tmp_path, models_dir, capsys):
    rc, sweep, path = run_sweep(write_grid, tmp_path, grid(models_dir))
    assert rc == 0
    results = summaries(sweep)
    assert [s["valid"] for s in results] == [True, True], [s["reasons"] for s in results]
    for s in results:
        # Every request accounted for at both ends: clients, balancer, each shard.
        sent = s["requests"]["sent"]
        assert sent >= 120 and s["requests"] == {"sent": sent, "ok": sent, "failed": 0}
        assert s["samples_ok"] == 4 * sent
        assert s["throughput"]["samples_per_s"] == pytest.approx(4 * sent / s["window_s"])
        low, high = s["throughput"]["samples_per_s_ci95"]
        assert low <= s["throughput"]["samples_per_s"] <= high
        assert 0 < s["latency_ms"]["p50"] and s["latency_ms"]["p99"] is None  # < 1,000 requests
        assert sum(b["requests"] for b in s["backends"].values()) == sent
        assert s["accounting"]["balancer_forwarded"] == sent
        assert s["accounting"]["server_served"] == s["accounting"]["balancer_per_backend"]
        assert s["attempt"]["number"] == 1
        assert s["server_kind"] == "osmi-model-server"
    two = next(s for s in results if s["params"]["servers"] == 2)
    shares = [b["share"] for b in two["backends"].values()]
    assert len(shares) == 2 and all(0.4 <= x <= 0.6 for x in shares), shares
    assert not leftover_processes(sweep)

    # Records: one row per request, warm-up marked and excluded.
    exp = sweep.experiment(sweep.experiment_ids()[0])
    frame = pd.read_parquet(exp.client_records(0))
    own = next(s for s in results if s["experiment_id"] == exp.root.name)
    assert int((frame.phase == 0).sum()) == 2 and int((frame.phase == 1).sum()) == own["clients"][0]["sent"]
    env = json.loads(exp.env.read_text())
    assert env["haproxy"].startswith("HAProxy version")
    assert "mode http" in exp.haproxy_config.read_text() and "proto h2" in exp.haproxy_config.read_text()
    assert (exp.root / "status").read_text().strip() == "valid"
    job_log = exp.job_log.read_text()
    assert "# cloudmesh status=done progress=100" in job_log

    capsys.readouterr()
    assert cli.main(["analyze", "--grid", str(path), "--out", str(sweep.root)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"dataset: {sweep.dataset_csv}"
    dataset = pd.read_csv(sweep.dataset_csv)
    assert len(dataset) == 2 and dataset["valid"].all()
    assert (dataset["samples_per_s"] > 0).all()


def test_failed_requests_make_the_run_invalid(write_grid, tmp_path, models_dir):
    # A deadline no real answer can meet: every measured request fails for real.
    data = grid(models_dir, experiment={"servers": [1]}, measure={"timeout_s": 0.0002, "requests": 5})
    rc, sweep, _ = run_sweep(write_grid, tmp_path, data)
    assert rc != 0
    (s,) = summaries(sweep)
    assert s["valid"] is False
    assert s["throughput"]["samples_per_s"] is None
    assert s["requests"]["sent"] >= 10 and s["requests"]["failed"] > 0
    assert s["requests"]["sent"] == s["requests"]["ok"] + s["requests"]["failed"]
    assert any("DEADLINE_EXCEEDED" in r for r in s["reasons"]), s["reasons"]
    assert sweep.experiment(sweep.experiment_ids()[0]).read_status() == "invalid"
    assert not leftover_processes(sweep)


def test_wrong_output_shape_makes_the_run_invalid(write_grid, tmp_path):
    """A served model that answers (b, 2, 13) instead of small_lstm's (b, 2, 12)."""
    import tensorflow as tf

    class Wrong(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 48], tf.float32, name="inputs")])
        def serve(self, inputs):
            return {"outputs": tf.zeros([tf.shape(inputs)[0], 2, 13])}

    models = tmp_path / "wrong-models"
    module = Wrong()
    tf.saved_model.save(module, str(models / "small_lstm" / "1"), signatures={"serving_default": module.serve})
    rc, sweep, _ = run_sweep(write_grid, tmp_path, grid(models, experiment={"servers": [1]},
                                                          measure={"requests": 5}))
    assert rc != 0
    (s,) = summaries(sweep)
    assert not s["valid"] and s["requests"]["failed"] == s["requests"]["sent"] >= 10
    assert any("[4, 2, 13]" in r and "[4, 2, 12]" in r for r in s["reasons"]), s["reasons"]


def test_missing_model_fails_with_clear_reason(write_grid, tmp_path):
    rc, sweep, _ = run_sweep(write_grid, tmp_path, grid(tmp_path / "empty", experiment={"servers": [1]}))
    assert rc != 0
    (s,) = summaries(sweep)
    assert not s["valid"] and any("no exported model" in r for r in s["reasons"])
    assert sweep.experiment(sweep.experiment_ids()[0]).read_status() == "failed"


def test_open_loop_poisson_keeps_its_arrival_rate(write_grid, tmp_path, models_dir):
    target = 40.0  # requests/s, both clients together
    data = grid(models_dir, experiment={"servers": [1], "scenario": ["poisson"], "rate": [target],
                                        "batch": [1]},
                measure={"requests": 80, "stability_windows": 1, "stability_max_windows": 1})
    rc, sweep, _ = run_sweep(write_grid, tmp_path, data)
    (s,) = summaries(sweep)
    assert rc == 0 and s["valid"], s["reasons"]
    assert s["params"]["scenario"] == "poisson" and s["params"]["rate"] == target
    arrival = s["arrival"]
    assert abs(arrival["achieved_rate"] - target) / target <= 0.05, arrival
    # 160 requests at 40/s: the window is about 4 s long, not as short as the server allows.
    assert 3.5 <= s["window_s"] <= 6.0
    frame = pd.read_parquet(sweep.experiment(sweep.experiment_ids()[0]).client_records(0))
    measured = frame[frame.phase == 1]
    gaps = measured.start_ns.diff().dropna() / 1e9
    assert gaps.std() > 0.3 * gaps.mean()  # irregular (Poisson) gaps, not a metronome


def test_server_killed_mid_run_is_invalid_and_listed_not_plotted(write_grid, during_window, tmp_path, models_dir,
                                                                 capsys):
    data = grid(models_dir, experiment={"servers": [2], "clients": [2]},
                measure={"duration_s": 6, "requests": None})
    path = write_grid(data)
    out = tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 0
    sweep = SweepPaths(out)
    exp = sweep.experiment(sweep.experiment_ids()[0])

    def kill_one_server(exp) -> bool:
        pids = subprocess.run(["pgrep", "-f", f"model_config_file={exp.model_config}"],
                              capture_output=True, text=True).stdout.split()
        if pids:
            subprocess.run(["kill", "-9", pids[-1]])
        return bool(pids)

    with during_window(exp, kill_one_server) as hit:
        rc = cli.main(["run", "--grid", str(path), "--out", str(out)])
    assert hit == [True], "no server process found to kill"
    assert rc != 0
    (s,) = summaries(sweep)
    assert not s["valid"] and s["throughput"]["samples_per_s"] is None
    assert any("exited during the measured window" in r for r in s["reasons"]), s["reasons"]
    assert not leftover_processes(sweep)

    capsys.readouterr()
    assert cli.main(["analyze", "--grid", str(path), "--out", str(out)]) == 0
    dataset = pd.read_csv(sweep.dataset_csv)
    assert not dataset["valid"].any() and dataset["samples_per_s"].isna().all()
    html = (out / "report" / "index.html").read_text()
    invalid_table = html[html.index('<h2 id="invalid">'):html.index('<h2 id="repeats">')]
    assert exp.root.name in invalid_table and "exited during the measured window" in invalid_table


def test_adaptive_stability_windows_stop_early_when_stable(write_grid, tmp_path, models_dir):
    # Windows of 1 s; stop once 2 consecutive agree within 100% (a loose bound: this
    # checks the stopping mechanics, not this busy machine's steadiness), at most 6.
    data = grid(models_dir, experiment={"servers": [1], "clients": [1]},
                measure={"duration_s": 2, "requests": None, "stability_windows": 2,
                         "stability_tolerance": 1.0, "stability_max_windows": 6})
    rc, sweep, _ = run_sweep(write_grid, tmp_path, data)
    (s,) = summaries(sweep)
    assert rc == 0 and s["valid"], s["reasons"]
    assert s["measurement"]["stable"] is True
    assert 2 <= len(s["measurement"]["windows"]) < 6
    assert s["window_s"] < 5.5  # stopped before the 6-window limit
