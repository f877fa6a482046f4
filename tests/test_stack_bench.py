"""The `stack` bench part: its in-process worker, how it picks the best concurrency,
its targets; and that the balancer's tuned config is one HAProxy accepts."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from osmi_ee.bench.common import QUICK
from osmi_ee.bench.stack import InProcess, _best
from osmi_ee.bench.targets import TARGETS, targets_met
from osmi_ee.osmi import haproxy
from osmi_ee.osmi.procs import ProcessGroup


def test_best_is_the_concurrency_with_the_highest_median():
    rows = {1: [{"samples_per_s": v} for v in (100, 110, 90)],
            2: [{"samples_per_s": v} for v in (300, 10, 10)],  # one lucky run does not win
            4: [{"samples_per_s": v} for v in (150, 160, 140)]}
    assert _best(rows) == (4, 150)


def test_stack_targets_are_checked_per_model_measured():
    bounds = TARGETS["stack_efficiency"]
    r = {"stack_efficiency": {"small_lstm": bounds["small_lstm"] + 0.01, "medium_cnn": bounds["medium_cnn"] - 0.01}}
    met = targets_met(r)
    assert met[f"stack_efficiency_small_lstm_ge_{bounds['small_lstm']}"] is True
    assert met[f"stack_efficiency_medium_cnn_ge_{bounds['medium_cnn']}"] is False
    only_one = targets_met({"stack_efficiency": {"small_lstm": 0.5}})
    assert [k for k in only_one if k.startswith("stack_")] == [f"stack_efficiency_small_lstm_ge_{bounds['small_lstm']}"]
    assert not any(k.startswith("stack_") for k in targets_met({}))


def test_in_process_worker_calls_the_model_and_stops_with_the_group(tmp_path, models_dir):
    group = ProcessGroup()
    try:
        worker = InProcess(group, models_dir, "small_lstm", 4, tmp_path / "inprocess.log")
        assert worker.call_s > 0
        two = worker.measure(2, 0.3)
        assert two["callers"] == 2 and two["calls"] >= 2
        assert two["samples_per_s"] == pytest.approx(two["calls_per_s"] * 4)
        assert two["calls_per_s"] == pytest.approx(two["calls"] / two["wall_s"])
    finally:
        group.stop(grace_s=5)
    assert not worker.child.alive()


def test_quick_sizes_keep_the_stack_part_short():
    assert QUICK.stack_rounds == 1 and QUICK.stack_duration_s <= 1.0 and len(QUICK.stack_concurrency) <= 2


def test_tuned_balancer_config_is_valid_haproxy(tmp_path, require_haproxy):
    config = haproxy.render_config(18080, 18081, [haproxy.Backend("s0", "127.0.0.1", 18082)], timeout_s=10)
    assert "tune.bufsize" in config and "tune.h2.initial-window-size" in config
    (tmp_path / "haproxy.cfg").write_text(config)
    check = subprocess.run([shutil.which("haproxy"), "-c", "-f", str(tmp_path / "haproxy.cfg")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
