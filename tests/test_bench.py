"""`make bench` machinery: a quick smoke of the whole run, the raw-record
aggregation it times, and the generation fast paths it relies on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from osmi_ee.analysis.records import aggregate_records

REPO = Path(__file__).resolve().parents[1]

NUMBERS = ("client_cpu_us_per_req", "raw_cpu_us_per_req", "anchor_cpu_us_per_req", "client_startup_s",
           "client_rss_mb", "lb_efficiency", "backend_share_min", "generate_perms_per_s", "analyze_s_63M",
           "raw_vs_client_ratio", "anchor_vs_client_ratio", "client_requests", "raw_requests",
           "anchor_requests", "client_mux_cpu_us_per_req", "raw_mux_cpu_us_per_req", "client_mux_vs_raw_mux")
TARGETS = ("client_le_1.3x_raw", "client_le_third_of_anchor", "client_le_third_of_anchor_at_payload",
           "client_mux_le_third_of_anchor",
           "lb_efficiency_ge_0.95", "generate_10k_lt_5s",
           "analyze_lt_30s", "startup_lt_0.5s", "rss_lt_150mb")


# The bench's own measurements; `load` and `repro` run whole sweeps through the runner
# (what the e2e tests cover) and take minutes, so this smoke leaves them out.
OWN_PARTS = "analyze,generate,startup,cpu,lb"


def test_quick_bench_reports_every_figure(tmp_path, models_dir, require_haproxy):
    out = tmp_path / "bench.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp_path)}  # work dir in tmp_path
    run = subprocess.run(
        [sys.executable, "-m", "osmi_ee.bench", "--quick", f"--parts={OWN_PARTS}", f"--out={out}",
         f"--models-dir={models_dir}", f"--data-dir={tmp_path / 'data'}", f"--logs-dir={tmp_path / 'logs'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])  # the last stdout line is the JSON
    assert json.loads(out.read_text()) == figures
    for key in NUMBERS:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures.get(key))
    assert figures["machine"]["nproc"] >= 1
    optional = {"client_mux_le_1.5x_perf_analyzer"}  # only where `make triton` installed perf_analyzer
    assert set(TARGETS) <= set(figures["targets_met"]) <= set(TARGETS) | optional
    assert ("client_mux_le_1.5x_perf_analyzer" in figures["targets_met"]) == ("perf_analyzer_cpu_us_per_req"
                                                                              in figures)
    assert all(isinstance(v, bool) for v in figures["targets_met"].values())
    assert figures["generate_perms"] == 200
    assert figures["analyze_records"] == 8 * 2048
    assert 0 < figures["backend_share_min"] <= 0.5
    assert figures["anchor_responses_kept"] >= figures["anchor_requests"]
    assert "[bench]" in run.stderr  # progress goes to stderr, not stdout
    assert not list(tmp_path.glob("osmi-bench-*"))
    # nothing left running: every server, HAProxy and client we started is gone
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert not leftovers
    # The bench's servers came up through osmi.fleet, as a job's do: each wrote its log.
    assert (tmp_path / "logs" / "server-0.log").exists() and (tmp_path / "logs" / "haproxy.log").exists()


def test_bench_lives_outside_osmi():
    """osmi (what a job imports) needs neither the bench nor the analysis."""
    code = ("import sys, osmi_ee.osmi.run, osmi_ee.osmi.client; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('osmi_ee.')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "bench" not in out.stdout and "analysis" not in out.stdout, out.stdout


# --------------------------------------------------------------------- aggregate_records


def _write_records(path: Path, phase, latency_ns, code) -> None:
    n = len(phase)
    pq.write_table(pa.table({
        "client": pa.array(np.zeros(n, np.int32)),
        "seq": pa.array(np.arange(n, dtype=np.int32)),
        "phase": pa.array(np.asarray(phase, np.int8)),
        "start_ns": pa.array(np.arange(n, dtype=np.int64) * 1000),
        "latency_ns": pa.array(np.asarray(latency_ns, np.int64)),
        "code": pa.array(np.asarray(code, np.int16)),
        "delay_ns": pa.array(np.zeros(n, np.int64)),
    }), path)


def test_aggregate_records_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    sweep = tmp_path / "sweep"
    expected = {}
    ids = ["two-clients", "all-failed", "no-results", "one-client"]
    for eid in ids:
        (sweep / eid / "results").mkdir(parents=True)
    # two clients: warm-up and failures mixed in; only measured ok records count
    lat_all, sent, ok = [], 0, 0
    for k in range(2):
        n = 1000 + 37 * k
        phase = (np.arange(n) >= 20).astype(np.int8)
        latency = rng.integers(1_000_000, 9_000_000, n)
        code = np.where(rng.random(n) < 0.05, 14, 0)
        _write_records(sweep / "two-clients" / "results" / f"requests-client{k}.parquet", phase, latency, code)
        measured = phase == 1
        sent += int(measured.sum())
        ok += int((measured & (code == 0)).sum())
        lat_all.append(latency[measured & (code == 0)])
    expected["two-clients"] = (sent, ok, np.percentile(np.concatenate(lat_all) / 1e6, [50, 90, 99]))
    _write_records(sweep / "all-failed" / "results" / "requests-client0.parquet", [0, 1, 1], [5, 6, 7], [0, 4, 4])
    expected["all-failed"] = (2, 0, [math.nan] * 3)
    expected["no-results"] = (0, 0, [math.nan] * 3)
    latency = rng.integers(1, 10**9, 501)
    _write_records(sweep / "one-client" / "results" / "requests-client0.parquet", np.ones(501), latency, np.zeros(501))
    # 501 requests: p50 and p90 have enough behind them, a p99 would need 1,000
    expected["one-client"] = (501, 501, [*np.percentile(latency / 1e6, [50, 90]), math.nan])
    (sweep / "sweep.json").write_text(json.dumps({"name": "t", "axes": [], "experiments": ids}))

    frame = aggregate_records(sweep, workers=1)
    assert list(frame["experiment_id"]) == ids
    for _, row in frame.iterrows():
        sent, ok, pcts = expected[row["experiment_id"]]
        assert (row["sent"], row["ok"], row["failed"]) == (sent, ok, sent - ok)
        got = [row["latency_p50_ms"], row["latency_p90_ms"], row["latency_p99_ms"]]
        np.testing.assert_array_equal(got, pcts)  # exactly numpy's, NaN where nothing was ok
    assert frame.loc[frame["experiment_id"] == "two-clients", "client_files"].item() == 2
    pooled = aggregate_records(sweep, workers=2)
    assert pooled.equals(frame)


def test_aggregate_records_agrees_with_the_runners_metrics(tmp_path):
    from osmi_ee.osmi.metrics import latency_stats_ms

    (tmp_path / "r" / "results").mkdir(parents=True)
    n = 1777  # enough for the runner to report a p99 (metrics.min_samples(99) = 1,000)
    latency = np.random.default_rng(0).integers(10**5, 10**8, n)
    _write_records(tmp_path / "r" / "results" / "requests-client0.parquet", np.ones(n), latency, np.zeros(n))
    (tmp_path / "sweep.json").write_text(json.dumps({"experiments": ["r"]}))
    row = aggregate_records(tmp_path).iloc[0]
    stats = latency_stats_ms(latency)
    assert [row["latency_p50_ms"], row["latency_p90_ms"], row["latency_p99_ms"]] == \
        [stats["p50"], stats["p90"], stats["p99"]]


# --------------------------------------------------------------------- generation fast paths


GRID = """
name: fast
profile: localhost
experiment:
  model: [small_lstm, large_tcnn]
  servers: [1, 3]
  clients: [1, 2]
  batch: [1, 7]
  gpu: [cpu, fake]
  scenario: [closed, poisson]
  rate: [10, 2.5]
  repeat: [1, 2]
measure:
  duration_s: 2.5
job:
  time: "01:00:00"
"""


def test_generation_fast_paths_are_byte_identical(tmp_path):
    """Renderer and ConfigTexts (what make `generate` fast) give exactly what
    cloudmesh-ee's per-experiment render and a full yaml.safe_dump give."""
    from osmi_ee.ee.config import load_grid
    from osmi_ee.ee.expand import expand
    from osmi_ee.ee.generate import DEFAULT_TEMPLATE, ConfigTexts, experiment_config_text
    from osmi_ee.ee.render import Renderer, render, variables

    (tmp_path / "g.yaml").write_text(GRID)
    grid = load_grid(tmp_path / "g.yaml")
    sweep = tmp_path / "a sweep's dir"
    template = DEFAULT_TEMPLATE.read_text()
    fast_render, fast_config = Renderer(template), ConfigTexts(sweep)
    experiments = expand(grid)
    assert len(experiments) > 50
    for e in experiments:
        values = variables(e, sweep / e.id, "/opt/py thon/bin/python")
        assert fast_render(values) == render(template, values)
        assert fast_config(e) == experiment_config_text(e, sweep)
    assert len(fast_render._compiled) == 1  # cloudmesh-ee rendered the template once


@pytest.mark.parametrize("template, values", [
    ("a {x.y} b {sep} {expand_os}\n", {"x": {"y": "1"}}),  # FlatDict's own attributes are keys too
    ("{x.y}{x.z}\n", {"x": {"y": "{x.z}", "z": "Q"}}),  # a value holding a placeholder
    ("{{x.y}z}\n", {"x": {"y": "x."}, "x.z": 1}),  # pasting makes a new placeholder
    ("${HOME} {x.y} {x.y}\n", {"x": {"y": 3}}),
    ("{x.y}\n{a.b}\n", {"x": {"y": "p\nq"}, "a": {"b": ""}}),
    ("{x.y}\n", {"x": {"y": [1, 2]}}),
])
def test_renderer_matches_cloudmesh_ee_on_corner_cases(template, values):
    from osmi_ee.ee.render import Renderer, TemplateError, render

    def result(fn):
        try:
            return fn()
        except TemplateError as exc:
            return ("error", str(exc))

    assert result(lambda: Renderer(template)(values)) == result(lambda: render(template, values))


def test_renderer_still_reports_leftover_placeholders():
    from osmi_ee.ee.render import Renderer, TemplateError

    with pytest.raises(TemplateError, match=r"\{undefined\.key\}"):
        Renderer("echo {job.dir} {undefined.key}\n")({"job": {"dir": "/x"}})


# --------------------------------------------------------------------- the search part's dense check


def test_dense_peak_is_the_highest_count_that_passed():
    from osmi_ee.bench.search import highest_passing

    # ladder 1, 2, 4, 8 with 8 failing; the bracket 5..7 run densely: 5 passed, 6 and 7 did not
    passes = {1: True, 2: True, 4: True, 8: False, 5: True, 6: False, 7: False}
    assert highest_passing(passes) == 5
    assert highest_passing({**passes, 7: True}) == 7  # not monotone: the highest that passed still counts
    assert highest_passing({1: False, 2: False}) is None


def test_search_agrees_with_the_dense_peak_within_one_step():
    from osmi_ee.bench.search import agrees

    assert agrees(5, 5) and agrees(6, 5) and agrees(4, 5)
    assert not agrees(7, 5) and not agrees(3, 5)
    assert agrees(None, None)
    assert not agrees(None, 1) and not agrees(1, None)
