"""Each analysis stage alone, on input built by hand: the dataset from result
files, the figures from a dataset, the report from figures, the recommender
and perf_analyzer.csv from an aggregate table."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from osmi_ee.analysis import aggregate as aggregate_module
from osmi_ee.analysis import cli
from osmi_ee.analysis.aggregate import AGGREGATE_COLUMNS, aggregate
from osmi_ee.analysis.charts import Chart
from osmi_ee.analysis.collect import collect
from osmi_ee.analysis.dataset import COLUMNS, dictionary_markdown, empty_metrics, frame
from osmi_ee.analysis.distribution_charts import backend_shares, latency_distribution, tail_points
from osmi_ee.analysis.load_charts import latency_vs_throughput, throughput_vs_batch, throughput_vs_clients
from osmi_ee.analysis.panels import Palette
from osmi_ee.analysis.perf_analyzer import HEADER, perf_analyzer_table
from osmi_ee.analysis.recommend import recommend
from osmi_ee.analysis.report import write_report

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
AXES = ["model", "servers", "clients", "batch", "scenario", "repeat"]


# --------------------------------------------------------------------------
# Dataset from result files


def write_run(sweep: Path, eid: str, params: dict[str, Any], *, valid: bool = True,
              streams: int = 2, cpu_s: list[float] | None = None, backends: dict[str, int] | None = None) -> str:
    results = sweep / eid / "results"
    results.mkdir(parents=True)
    config = ["experiment:", *(f"  {k}: {'null' if v is None else v}" for k, v in params.items()),
              "measure:", f"  streams: {streams}", "  min_backend_share: 0.4", "  # a comment",
              "  timeout_s: 30.0", "serve:", "  server: auto"]
    (sweep / eid / "config.yaml").write_text("\n".join(config) + "\n")
    backends = backends or {"s0": 150, "s1": 150}
    cpu_s = cpu_s if cpu_s is not None else [0.1] * params["clients"]
    clients = [{"client": k, "sent": 300 // len(cpu_s), "ok": 300 // len(cpu_s), "failed": 0,
                "exit_code": 0, "streams": streams, "cpu_s_measured": c} for k, c in enumerate(cpu_s)]
    (results / "summary.json").write_text(json.dumps({
        "schema": "osmi-ee/summary/1", "params": params, "valid": valid,
        "reasons": [] if valid else ["client 1 exited with code -9"],
        "requests": {"sent": 300, "ok": 300, "failed": 0}, "samples_ok": 300, "window_s": 3.0,
        "throughput": {"samples_per_s": 100.0, "requests_per_s": 100.0, "samples_per_s_ci95": [95.0, 105.0]},
        "latency_ms": {"p50": 20.0, "p90": 30.0, "p99": None, "mean": 21.0, "max": 50.0},
        "backends": {k: {"requests": v, "share": v / 300} for k, v in backends.items()},
        "telemetry": {"servers": {"s0": {"cpu_percent_mean": 180.0, "rss_mb_max": 512.0}}},
        "clients": clients, "server_kind": "osmi-model-server",
        "server_version": "osmi-model-server 0.1.0 (TensorFlow 2.21.0)"}))
    return eid


@pytest.fixture
def small_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    base = {"model": "small_lstm", "servers": 2, "batch": 1, "repeat": 1}
    ids = [write_run(sweep, "closed", {**base, "clients": 3, "scenario": "closed"}, cpu_s=[0.1, 0.2, 0.3]),
           write_run(sweep, "open", {**base, "clients": 2, "scenario": "poisson"}),
           write_run(sweep, "bad", {**base, "clients": 2, "scenario": "closed"}, valid=False,
                     backends={"s0": 290, "s1": 10})]
    (sweep / "sweep.json").write_text(json.dumps({"name": "t", "axes": AXES, "experiments": ids}))
    return sweep


def test_dataset_new_columns_from_result_files(small_sweep: Path) -> None:
    df = collect(small_sweep).set_index("experiment_id")
    closed = df.loc["closed"]
    assert (closed["streams"], closed["concurrency"]) == (2, 6)  # clients × measure.streams
    assert closed["client_cpu_us_per_request"] == pytest.approx((0.1 + 0.2 + 0.3) / 300 * 1e6)
    assert closed["min_backend_share"] == 0.4
    assert (closed["backend_s0_requests"], closed["backend_s1_requests"]) == (150, 150)
    assert closed["server_rss_mib_max"] == 512.0 and closed["server_cpu_percent_mean"] == 180.0
    assert math.isnan(closed["latency_p99_ms"])  # not reported for lack of samples stays empty
    assert pd.isna(df.loc["open", "concurrency"])  # open loop: no fixed concurrency
    bad = df.loc["bad"]
    assert math.isnan(bad["client_cpu_us_per_request"]) and math.isnan(bad["samples_per_s"])
    assert (bad["backend_s0_requests"], bad["backend_s1_requests"]) == (290, 10)


def test_dataset_columns_follow_the_one_list(small_sweep: Path) -> None:
    df = collect(small_sweep)
    names = [c.name for c in COLUMNS]
    assert list(df.columns) == ["experiment_id", *AXES, *names, "backend_s0_requests", "backend_s1_requests"]
    table = dictionary_markdown()
    for name in names:
        assert f"| `{name}` |" in table
    assert "| `server_rss_mib_max` | MiB |" in table
    assert "percent of one core" in table


# --------------------------------------------------------------------------
# Figures from a dataset


def hand_dataset(with_ci: bool = True) -> pd.DataFrame:
    """medium_cnn before small_lstm (grid order, not alphabetical); servers 1 and 2;
    concurrency 1, 2, 4; p99 only where enough requests were measured."""
    rows = []
    for model, speed in (("medium_cnn", 10.0), ("small_lstm", 100.0)):
        for servers in (1, 2):
            for clients in (1, 2, 4):
                m = empty_metrics("ok", "")
                sps = speed * servers * clients ** 0.5
                m.update(valid=True, samples_per_s=sps, concurrency=clients, streams=1,
                         latency_p50_ms=5.0 * clients, latency_p90_ms=8.0 * clients,
                         latency_p99_ms=10.0 * clients if clients > 1 else math.nan,
                         min_backend_share=0.5, backend_count=servers)
                if with_ci:
                    m.update(samples_per_s_ci95_low=sps * 0.95, samples_per_s_ci95_high=sps * 1.05)
                backends = {f"s{k}": 100 for k in range(servers)}
                if servers == 2 and clients == 4 and model == "small_lstm":
                    backends = {"s0": 180, "s1": 20}  # s1 starved: below 0.5 × 1/2
                    m.update(valid=False, status="invalid", reason="backend s1 got 10.0%",
                             samples_per_s=math.nan)
                params = {"model": model, "servers": servers, "clients": clients, "batch": 1, "repeat": 1}
                rows.append({"experiment_id": f"{model}-s{servers}-c{clients}", "_params": params,
                             "_backends": backends, **m})
    return frame(rows, ["model", "servers", "clients", "batch", "repeat"])


def visible_axes(fig: Figure) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_latency_vs_throughput_joins_increasing_concurrency() -> None:
    df = hand_dataset()
    table = aggregate(df)
    palette = Palette(df["servers"])
    (fig,) = latency_vs_throughput(table, palette)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["medium_cnn, batch=1", "small_lstm, batch=1"]
    medium = table[(table["model"] == "medium_cnn") & (table["servers"] == 1)].sort_values("concurrency")
    p50 = [ln for ln in axes[0].get_lines() if ln.get_linestyle() == "-" and ln.get_color() == palette(1)]
    assert len(p50) == 1
    assert list(p50[0].get_xdata()) == pytest.approx(medium["samples_per_s_mean"].tolist())
    assert list(p50[0].get_ydata()) == [5.0, 10.0, 20.0]
    p99 = [ln for ln in axes[0].get_lines() if ln.get_linestyle() == "--" and ln.get_color() == palette(1)]
    assert list(p99[0].get_ydata()) == [20.0, 40.0]  # concurrency 1 has no p99: no point, no zero
    assert [t.get_text() for t in axes[0].texts][:3] == ["1", "2", "4"]


def test_one_colour_per_server_count_in_every_panel_and_figure() -> None:
    df = hand_dataset()
    table = aggregate(df)
    palette = Palette(df["servers"])
    assert palette(1) != palette(2)
    for figures in (throughput_vs_clients(table, palette), latency_vs_throughput(table, palette)):
        for ax in visible_axes(figures[0]):
            drawn = {ln.get_color() for ln in ax.get_lines() if np.asarray(ln.get_xdata()).size > 1}
            assert drawn and drawn <= {palette(1), palette(2)}


def test_no_empty_panels_and_bars_named_only_when_drawn() -> None:
    for with_ci, note in ((True, True), (False, False)):
        table = aggregate(hand_dataset(with_ci))
        for build in (throughput_vs_clients, throughput_vs_batch):
            (fig,) = build(table, Palette(table["servers"]))
            assert all(ax.get_lines() or ax.containers for ax in visible_axes(fig))
            heading = fig.get_suptitle()
            assert ("95% confidence interval" in heading) is note
            assert "min–max" not in heading


def test_backend_share_chart_draws_the_validity_threshold() -> None:
    df = hand_dataset()
    (fig,) = backend_shares(df, Palette(df["servers"]))
    (ax,) = visible_axes(fig)
    vertical = {round(float(ln.get_xdata()[0]), 6) for ln in ax.get_lines()}
    assert {0.5, 0.25} <= vertical  # fair share 1/2; min_backend_share 0.5 × 1/2
    assert "min_backend_share × 1/N = 0.25" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1].endswith("[invalid]")  # the most imbalanced run on top


def test_latency_cdf_has_a_log_tail_view() -> None:
    df = hand_dataset()
    rng = np.random.default_rng(3)
    latencies = {eid: rng.lognormal(2.0, 0.5, 5000) for eid in df["experiment_id"]}
    (fig,) = latency_distribution(df, latencies, Palette(df["servers"]))
    axes = visible_axes(fig)
    assert len(axes) == 4  # two models: CDF and tail each
    assert axes[1].get_yscale() == "log" and axes[1].get_xscale() == "log"
    x, p = tail_points(np.arange(1.0, 1001.0))
    assert p[0] == 1.0 and p[-1] == pytest.approx(1 / 1000)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(p) < 0)


# --------------------------------------------------------------------------
# Report from figures


def test_report_from_hand_made_figures(tmp_path: Path) -> None:
    df = hand_dataset()
    df.loc[0, "reason"] = "<script>x</script>"
    df.loc[0, ["valid", "status"]] = [False, "invalid"]
    table = aggregate(df)
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([1, 2], [3, 4])
    charts = [Chart("latency_vs_throughput", "latency-throughput", "Latency vs throughput", [fig]),
              Chart("backend_shares", "backends", "Per-backend share", [Figure()], message="no runs")]
    index = write_report(tmp_path, df, table, charts, recommend(table, 50.0), slo_p99_ms=50.0)
    page = index.read_text()
    assert re.findall(r'<img src="([^"]+)"', page) == ["fig-latency_vs_throughput.png"]
    assert (tmp_path / "report" / "fig-latency_vs_throughput.png").read_bytes().startswith(b"\x89PNG")
    assert "Per-backend share: no runs." in page
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert page.index('<h2 id="recommendation">') < page.index('<h2 id="latency-throughput">')
    assert page.index('<h2 id="invalid">') < page.index('<h2 id="repeats">')
    assert "No run manifest (env.json) found" in page
    assert "≤ 50 ms (given)" in page and 'href="../perf_analyzer.csv"' in page


# --------------------------------------------------------------------------
# Recommender and perf_analyzer.csv from an aggregate table


def hand_table() -> pd.DataFrame:
    rows = [  # model, servers, samples/s, CI, worst p99, cost, all valid
        ("m", 1, 100.0, (90.0, 110.0), 20.0, 5.0, True),
        ("m", 2, 105.0, (100.0, 110.0), 25.0, 9.0, True),   # overlaps the first: a tie
        ("m", 4, 300.0, (290.0, 310.0), 80.0, 8.0, True),   # fastest, misses a 50 ms SLO
        ("m", 8, 999.0, (990.0, 1010.0), 1.0, 1.0, False),  # a repeat was invalid: never picked
    ]
    out = pd.DataFrame([{
        "model": m, "servers": s, "n_runs": 1, "n": 1, "n_invalid": 0 if ok else 1, "n_missing": 0,
        "n_unstable": 0, "all_valid": ok, "concurrency": 4 * s, "samples_per_s_mean": sps,
        "samples_per_s_ci95_low": ci[0], "samples_per_s_ci95_high": ci[1],
        "latency_p50_ms_mean": p99 / 2, "latency_p90_ms_mean": p99 * 0.8,
        "latency_p99_ms_mean": p99 if s != 2 else math.nan, "latency_p99_ms_max": p99,
        "latency_mean_ms_mean": p99 / 1.8, "cost_per_million_samples": cost,
    } for m, s, sps, ci, p99, cost, ok in rows])
    return out.reindex(columns=["model", "servers", *AGGREGATE_COLUMNS])


def test_recommender_from_an_aggregate_table() -> None:
    rec = recommend(hand_table(), 50.0)["m"]
    assert (rec["eligible"], rec["meeting_slo"]) == (3, 2)
    assert rec["fastest"]["config"] == {"model": "m", "servers": 2} and rec["fastest"]["samples_per_s"] == 105.0
    assert [t["config"]["servers"] for t in rec["tied"]] == [1]
    assert rec["cheapest"]["config"]["servers"] == 1
    assert recommend(hand_table())["m"]["fastest"]["config"]["servers"] == 4


def test_perf_analyzer_csv_layout(tmp_path: Path) -> None:
    out = perf_analyzer_table(hand_table())
    assert tuple(out.columns[: len(HEADER)]) == HEADER
    assert HEADER[:2] == ("Concurrency", "Inferences/Second") and HEADER[-5:] == (
        "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency")
    assert list(out.columns[len(HEADER):]) == ["model", "servers"]
    assert out["servers"].tolist() == [1, 2, 4]  # the configuration with an invalid repeat is left out
    first = out.iloc[0]
    assert (first["Concurrency"], first["Inferences/Second"]) == (4, 100.0)
    assert (first["p50 latency"], first["p99 latency"], first["Avg latency"]) == (10000, 20000, 11111)
    out.to_csv(tmp_path / "pa.csv", index=False)
    lines = (tmp_path / "pa.csv").read_text().splitlines()
    assert lines[0].startswith("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,")
    assert lines[2] == "8,105.0,,,,,,,,12500,20000,,,13889,m,2"  # p95 never measured; p99 not reported


# --------------------------------------------------------------------------
# The pipeline's shape


def test_analyze_aggregates_once(small_sweep: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def counted(df: pd.DataFrame) -> pd.DataFrame:
        calls.append(len(df))
        return aggregate(df)

    monkeypatch.setattr(cli, "aggregate", counted)
    monkeypatch.setattr(aggregate_module, "aggregate", counted)
    assert cli.main([str(small_sweep)]) == 0
    assert calls == [3]
    assert "perf_analyzer:" in capsys.readouterr().out


def test_every_analysis_module_stays_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in ANALYSIS.glob("*.py")}
    assert sizes and max(sizes.values()) <= 400, sizes


def test_scaling_panels_follow_the_grid() -> None:
    from osmi_ee.analysis.efficiency_charts import scaling

    (fig,) = scaling(aggregate(hand_dataset()))
    assert [ax.get_title() for ax in visible_axes(fig)] == ["medium_cnn, batch=1", "small_lstm, batch=1"]
