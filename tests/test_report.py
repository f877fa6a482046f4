"""Dataset additions, repeats with confidence intervals, the recommender and the
HTML report, on a small synthetic sweep (no TensorFlow, no servers)."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import markupsafe
import numpy as np
import pandas as pd
import pytest

from osmi_ee.analysis import cli
from osmi_ee.analysis.aggregate import aggregate
from osmi_ee.analysis.charts import build_charts
from osmi_ee.analysis.collect import collect
from osmi_ee.analysis.dataset import cost_per_million_samples, write_dataset
from osmi_ee.analysis.panels import MAX_PAGES, MAX_PANELS, pages
from osmi_ee.analysis.recommend import recommend as recommend_table
from osmi_ee.analysis.records import LatencySamples
from osmi_ee.analysis.report import write_report
from osmi_ee.osmi.stats import mean_ci, t_quantile

AXES = ["model", "servers", "clients", "batch", "gpu", "scenario", "rate", "repeat"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRICE = {"a100": 2.0, "cpu": None}  # $ per GPU-hour, as the profile gives it
BAD_REASON = 'client 3: <script>alert("x")</script> & deadline exceeded'


def exp_id(p: dict[str, Any]) -> str:
    rate = "" if p.get("rate") is None else f"-q{p['rate']}"
    return (f"{p['model']}-s{p['servers']}-c{p['clients']}-b{p['batch']}-{p['gpu']}"
            f"-{p.get('scenario', 'closed')}{rate}-r{p['repeat']}")


def config_yaml(p: dict[str, Any]) -> str:
    def price(gpu: str) -> str:
        return "null" if PRICE[gpu] is None else str(PRICE[gpu])

    lines = ["name: t", "profile:", "  name: test", "  gpus:"]
    for gpu in PRICE:
        lines += [f"    {gpu}:", "      gres: ''", f"      price_per_gpu_hour: {price(gpu)}"]
    lines.append("experiment:")
    lines += [f"  {k}: {'null' if v is None else v}" for k, v in p.items()]
    lines += ["measure:", "  streams: 1", "  min_backend_share: 0.5"]
    return "\n".join(lines) + "\n"


def summary(p: dict[str, Any], *, sps: float, p99: float, valid: bool = True,
            reasons: list[str] | None = None, telemetry: Any = "gpu",
            stable: bool | None = True) -> dict[str, Any]:
    sent = 200
    backends = {f"s{i}": sent // p["servers"] for i in range(p["servers"])}
    out: dict[str, Any] = {
        "schema": "osmi-ee/summary/1",
        "experiment_id": exp_id(p),
        "params": p,
        "valid": valid,
        "reasons": reasons or [],
        "requests": {"sent": sent, "ok": sent, "failed": 0},
        "samples_ok": sent * p["batch"],
        "window_s": 2.0,
        "throughput": {"samples_per_s": sps, "requests_per_s": sps / p["batch"]},
        "latency_ms": {"mean": p99 / 2, "p50": p99 / 2, "p90": p99 * 0.8, "p99": p99, "max": p99 * 1.2},
        "backends": {k: {"requests": v, "share": v / sent} for k, v in backends.items()},
        "server_kind": "osmi-model-server",
        "measurement": {"mode": "duration", "stable": stable, "tolerance": 0.1, "windows": []},
    }
    if p.get("scenario") == "poisson":
        out["arrival"] = {"target_rate": float(p["rate"]), "achieved_rate": p["rate"] * 0.99, "late": 1}
    if telemetry == "gpu":
        out["telemetry"] = {
            "interval_s": 0.5,
            "servers": {f"s{i}": {"cpu_percent_mean": 90.0 + 10 * i, "rss_mb_max": 600.0 + i}
                        for i in range(p["servers"])},
            "gpus": {f"gpu{i}": {"name": "NVIDIA A100", "util_percent_mean": 80.0,
                                 "mem_used_mb_max": 1234.0, "power_w_mean": 300.0}
                     for i in range(p["servers"])},
            "energy_j": 600.0,
            "energy_j_per_sample": 0.25,
        }
    elif telemetry == "cpu":
        out["telemetry"] = {"interval_s": 0.5, "servers": {"s0": {"cpu_percent_mean": 50.0,
                                                                  "rss_mb_max": 700.0}},
                            "gpus": None, "energy_j": None, "energy_j_per_sample": None}
    elif telemetry is None:
        out["telemetry"] = None
    return out


def write_records(results: Path, p99: float, n: int = 60) -> None:
    rng = np.random.default_rng(1)
    lat = rng.uniform(p99 * 0.3, p99, n) * 1e6
    pd.DataFrame({
        "client": np.zeros(n, np.int32), "seq": np.arange(n, dtype=np.int32),
        "phase": np.r_[np.zeros(3), np.ones(n - 3)].astype(np.int8),
        "start_ns": np.arange(n, dtype=np.int64) * 10**7,
        "latency_ns": lat.astype(np.int64), "code": np.zeros(n, np.int16),
    }).to_parquet(results / "requests-client0.parquet", index=False)


def write_exp(sweep: Path, p: dict[str, Any], summ: dict[str, Any] | None) -> str:
    eid = exp_id(p)
    results = sweep / eid / "results"
    results.mkdir(parents=True)
    (sweep / eid / "config.yaml").write_text(config_yaml(p))
    if summ is not None:
        (results / "summary.json").write_text(json.dumps(summ))
        if summ["valid"]:
            write_records(results, summ["latency_ms"]["p99"])
    return eid


def small(servers: int, clients: int, repeat: int = 1, **kw: Any) -> dict[str, Any]:
    p = {"model": "small_lstm", "servers": servers, "clients": clients, "batch": 16,
         "gpu": "a100", "scenario": "closed", "rate": None, "repeat": repeat}
    p.update(kw)
    return p


def make_sweep(root: Path) -> dict[str, Any]:
    sweep = root / "sweep"
    sweep.mkdir()
    order: list[str] = []
    ids: dict[str, Any] = {"dir": sweep}

    def add(p: dict[str, Any], summ: dict[str, Any] | None) -> str:
        order.append(write_exp(sweep, p, summ))
        return order[-1]

    add(small(1, 1), summary(small(1, 1), sps=400.0, p99=10.0))
    for r, (sps, p99) in enumerate([(1000.0, 30.0), (1100.0, 32.0), (1200.0, 34.0)], 1):
        p = small(1, 4, r)
        ids.setdefault("repeats", []).append(add(p, summary(p, sps=sps, p99=p99)))
    ids["unstable"] = add(small(2, 1), summary(small(2, 1), sps=700.0, p99=12.0, stable=False))
    add(small(2, 4), summary(small(2, 4), sps=2000.0, p99=40.0))
    ids["invalid"] = add(small(2, 8), summary(small(2, 8), sps=9999.0, p99=1.0, valid=False,
                                              reasons=[BAD_REASON, "backend s1 got 0.0% of the requests"]))
    ids["missing"] = add(small(1, 8), None)
    for rate in (50, 100):  # open loop, batch 1: never averaged with the closed runs
        p = small(1, 4, batch=1, scenario="poisson", rate=rate)
        add(p, summary(p, sps=rate * 0.97, p99=5.0))
    # medium_cnn on the CPU "gpu" (no price): one without telemetry, one CPU-only.
    m = {"model": "medium_cnn", "clients": 1, "batch": 1, "gpu": "cpu", "scenario": "closed",
         "rate": None, "repeat": 1}
    ids["no_telemetry"] = add({**m, "servers": 1}, summary({**m, "servers": 1}, sps=10.0, p99=100.0,
                                                           telemetry=None, stable=None))
    ids["cpu_only"] = add({**m, "servers": 2}, summary({**m, "servers": 2}, sps=18.0, p99=110.0,
                                                       telemetry="cpu"))
    (sweep / "sweep.json").write_text(json.dumps({"name": "t", "profile": "test", "axes": AXES,
                                                  "experiments": order}))
    ids["order"] = order
    return ids


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ids = make_sweep(tmp_path_factory.mktemp("report"))
    sweep = ids["dir"]
    df = collect(sweep)
    (sweep / "report").mkdir()
    (sweep / "report" / "fig-stale.png").write_bytes(PNG_MAGIC)  # from an older run
    index = report(df, sweep)
    return {**ids, "df": df, "index": index, "html": index.read_text()}


def recommend(df: pd.DataFrame, slo_p99_ms: float | None = None) -> dict[Any, dict[str, Any]]:
    """The recommender on the aggregate of a dataset, as osmi-analyze runs it."""
    return recommend_table(aggregate(df), slo_p99_ms)


def report(df: pd.DataFrame, sweep: Path, slo_p99_ms: float | None = None) -> Path:
    """Every stage after collect, as osmi-analyze runs them (without plots/)."""
    table = aggregate(df)
    valid = df[df["valid"]]["experiment_id"].tolist()
    charts = build_charts(df, table, LatencySamples(sweep, valid))
    return write_report(sweep, df, table, charts, recommend_table(table, slo_p99_ms), slo_p99_ms=slo_p99_ms)


def row(df: pd.DataFrame, eid: str) -> pd.Series:
    return df[df["experiment_id"] == eid].iloc[0]


# --------------------------------------------------------------------------
# Dataset additions


def test_new_columns(built: dict[str, Any]) -> None:
    df = built["df"]
    r = row(df, built["repeats"][0])
    assert r["price_per_gpu_hour"] == 2.0
    assert r["cost_per_million_samples"] == pytest.approx(2.0 * 1 / 3600 / 1000.0 * 1e6)
    assert r["server_cpu_percent_mean"] == 90.0 and r["server_rss_mib_max"] == 600.0
    assert r["gpu_util_percent_mean"] == 80.0 and r["gpu_power_w_mean"] == 300.0
    assert r["energy_j_per_sample"] == 0.25
    assert r["stable"] is True or r["stable"] == True  # noqa: E712 (pandas BooleanDtype)
    two = row(df, built["unstable"])
    assert two["server_cpu_percent_mean"] == 95.0 and two["server_rss_mib_max"] == 601.0
    assert two["stable"] == False  # noqa: E712
    assert two["cost_per_million_samples"] == pytest.approx(2.0 * 2 / 3600 / 700.0 * 1e6)
    # Not measured is NA/NaN, never 0.
    none = row(df, built["no_telemetry"])
    assert pd.isna(none["stable"])
    for col in ("server_cpu_percent_mean", "gpu_util_percent_mean", "energy_j_per_sample",
                "target_rate", "achieved_rate", "price_per_gpu_hour", "cost_per_million_samples"):
        assert math.isnan(none[col]), col
    cpu = row(df, built["cpu_only"])
    assert cpu["server_cpu_percent_mean"] == 50.0 and math.isnan(cpu["gpu_util_percent_mean"])
    assert math.isnan(cpu["energy_j_per_sample"])
    # An invalid run has telemetry but no speed, so no cost and no energy per sample.
    bad = row(df, built["invalid"])
    assert math.isnan(bad["samples_per_s"]) and math.isnan(bad["cost_per_million_samples"])
    assert math.isnan(bad["energy_j_per_sample"]) and bad["price_per_gpu_hour"] == 2.0
    poisson = df[df["scenario"] == "poisson"]
    assert sorted(poisson["target_rate"]) == [50.0, 100.0]
    assert sorted(poisson["achieved_rate"]) == [49.5, 99.0]
    assert df[df["scenario"] == "closed"]["target_rate"].isna().all()


def test_new_columns_round_trip(built: dict[str, Any], tmp_path: Path) -> None:
    df = built["df"]
    _, parquet_path = write_dataset(df, tmp_path)
    assert df["stable"].dtype == "boolean"
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), df)


def test_cost_formula_edge_cases() -> None:
    assert cost_per_million_samples(3.6, 2, 1000.0) == pytest.approx(2.0)
    assert cost_per_million_samples(0.0, 1, 10.0) == 0.0
    for args in ((math.nan, 1, 10.0), (2.0, 1, math.nan), (2.0, 1, 0.0), (2.0, None, 10.0),
                 (-1.0, 1, 10.0)):
        assert math.isnan(cost_per_million_samples(*args)), args


# --------------------------------------------------------------------------
# Repeats and confidence intervals


def test_t_quantiles_match_tables() -> None:
    for dof, expected in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (9, 2.2622), (29, 2.0452)):
        assert t_quantile(0.95, dof) == pytest.approx(expected, abs=1e-4)
    assert math.isnan(t_quantile(0.95, 0))


def test_mean_ci_known_sample() -> None:
    mean, std, low, high = mean_ci([1000.0, 1100.0, 1200.0])
    half = 4.302652729749464 * 100.0 / math.sqrt(3)
    assert (mean, std) == (pytest.approx(1100.0), pytest.approx(100.0))
    assert (low, high) == (pytest.approx(1100.0 - half), pytest.approx(1100.0 + half))
    one = mean_ci([5.0])
    assert one[0] == 5.0 and all(math.isnan(v) for v in one[1:])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_aggregate_repeats_and_invalid(built: dict[str, Any]) -> None:
    agg = aggregate(built["df"])
    assert "repeat" not in agg.columns
    assert len(agg) == len(built["df"]) - 2  # three repeats -> one row
    closed = agg[agg["scenario"] == "closed"]
    rep = closed[(closed["model"] == "small_lstm") & (closed["servers"] == 1) & (closed["clients"] == 4)]
    assert len(rep) == 1
    rep = rep.iloc[0]
    half = 4.302652729749464 * 100.0 / math.sqrt(3)
    assert (rep["n"], rep["n_invalid"], rep["n_missing"], rep["all_valid"]) == (3, 0, 0, True)
    assert rep["samples_per_s_mean"] == pytest.approx(1100.0)
    assert rep["samples_per_s_ci95_half"] == pytest.approx(half)
    assert rep["samples_per_s_ci95_low"] == pytest.approx(1100.0 - half)
    assert rep["latency_p99_ms_mean"] == pytest.approx(32.0) and rep["latency_p99_ms_max"] == 34.0
    assert rep["cost_per_million_samples"] == pytest.approx(2.0 / 3600 / 1100.0 * 1e6)
    single = closed[(closed["servers"] == 1) & (closed["clients"] == 1) & (closed["model"] == "small_lstm")].iloc[0]
    assert single["n"] == 1 and math.isnan(single["samples_per_s_ci95_low"])
    bad = agg[(agg["servers"] == 2) & (agg["clients"] == 8)].iloc[0]
    assert (bad["n"], bad["n_invalid"], bad["all_valid"]) == (0, 1, False)
    assert math.isnan(bad["samples_per_s_mean"])
    miss = agg[(agg["servers"] == 1) & (agg["clients"] == 8)].iloc[0]
    assert (miss["n"], miss["n_missing"], miss["all_valid"]) == (0, 1, False)
    # The two poisson rates are two configurations, not averaged with anything.
    assert sorted(agg[agg["scenario"] == "poisson"]["samples_per_s_mean"]) == [48.5, 97.0]
    assert (agg.loc[agg["model"] == "small_lstm", "n_unstable"].sum()) == 1


# --------------------------------------------------------------------------
# Recommender


def config_of(choice: dict[str, Any]) -> tuple[Any, ...]:
    c = choice["config"]
    return c["servers"], c["clients"], c["batch"], c["scenario"]


def test_recommend_for_given_slo(built: dict[str, Any]) -> None:
    df = built["df"]
    rec = recommend(df, 50.0)
    small_rec = rec["small_lstm"]
    assert small_rec["slo_p99_ms"] == 50.0
    assert config_of(small_rec["fastest"]) == (2, 4, 16, "closed")
    assert small_rec["fastest"]["samples_per_s"] == 2000.0
    # Cheapest per sample: 1 GPU at 1100/s beats 2 GPUs at 2000/s.
    assert config_of(small_rec["cheapest"]) == (1, 4, 16, "closed")
    assert small_rec["cheapest"]["cost_per_million_samples"] == pytest.approx(2.0 / 3600 / 1100.0 * 1e6)
    assert small_rec["fastest"]["config"].get("repeat") is None
    # Tighter: the 3-repeat config's worst p99 (34 ms) misses a 33 ms SLO.
    tight = recommend(df, 33.0)["small_lstm"]
    assert config_of(tight["fastest"]) == (2, 1, 16, "closed")
    # The invalid run's 9999 samples/s (p99 1 ms) never wins, even with a 2 ms SLO.
    strict = recommend(df, 2.0)["small_lstm"]
    assert strict["fastest"] is None and strict["meeting_slo"] == 0
    # No price for the CPU type: no cheapest pick, but still a fastest one.
    assert rec["medium_cnn"]["fastest"] is None  # p99 100 and 110 ms miss 50 ms
    medium = recommend(df, 200.0)["medium_cnn"]
    assert config_of(medium["fastest"]) == (2, 1, 1, "closed")
    assert medium["cheapest"] is None and medium["priced"] is False


def test_recommend_without_objective_names_the_fastest_and_says_so(built: dict[str, Any]) -> None:
    rec = recommend(built["df"])
    small = rec["small_lstm"]
    assert small["slo_p99_ms"] is None and small["slo_source"].startswith("none")
    assert small["meeting_slo"] == small["eligible"]  # no objective: nothing is true by construction
    assert config_of(small["fastest"]) == (2, 4, 16, "closed")


def test_overlapping_intervals_are_a_tie(tmp_path: Path) -> None:
    base = {"model": "small_lstm", "servers": 1, "clients": 1, "batch": 16, "gpu": "a100",
            "scenario": "closed", "repeat": 1}
    runs = [({**base, "clients": 1}, 1000.0, [950.0, 1050.0]),
            ({**base, "clients": 2}, 1020.0, [1000.0, 1040.0]),  # overlaps the fastest: a tie
            ({**base, "clients": 4}, 800.0, [780.0, 820.0])]  # clearly slower
    for p, sps, ci in runs:
        summ = summary(p, sps=sps, p99=10.0)
        summ["throughput"]["samples_per_s_ci95"] = ci
        write_exp(tmp_path, p, summ)
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "t", "experiments": [exp_id(p) for p, _, _ in runs]}))
    rec = recommend(collect(tmp_path))["small_lstm"]
    assert rec["fastest"]["config"]["clients"] == 2
    assert [t["config"]["clients"] for t in rec["tied"]] == [1]
    assert rec["fastest"]["separable"] is True
    # The same speeds with intervals that do not overlap: no tie.
    for p, sps, ci in runs[:2]:
        summ = summary(p, sps=sps, p99=10.0)
        summ["throughput"]["samples_per_s_ci95"] = [sps - 5, sps + 5]
        (tmp_path / exp_id(p) / "results" / "summary.json").write_text(json.dumps(summ))
    assert recommend(collect(tmp_path))["small_lstm"]["tied"] == []


# --------------------------------------------------------------------------
# HTML report


def test_report_images_exist_and_are_png(built: dict[str, Any]) -> None:
    page, report_dir = built["html"], built["index"].parent
    assert built["index"] == built["dir"] / "report" / "index.html"
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) >= 8
    for src in srcs:
        assert "/" not in src and not src.startswith("http")  # relative, same folder
        data = (report_dir / html.unescape(src)).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), src
    assert sorted(p.name for p in report_dir.glob("*.png")) == sorted(set(srcs))  # stale one removed
    for name in ("latency_vs_throughput", "throughput_vs_clients", "throughput_vs_rate", "scaling",
                 "latency_vs_clients", "latency_vs_rate", "latency_cdf", "heatmap", "backend_shares",
                 "energy"):
        assert any(name in s for s in srcs), name


def table(page: str, table_id: str) -> str:
    match = re.search(rf'<table id="{table_id}">.*?</table>', page, re.S)
    assert match, table_id
    return match.group(0)


def test_invalid_run_only_in_invalid_table(built: dict[str, Any]) -> None:
    page = built["html"]
    invalid = table(page, "invalid-runs")
    bad = built["invalid"]
    assert bad in invalid and built["missing"] in invalid
    assert str(markupsafe.escape(BAD_REASON)) in invalid
    assert "backend s1 got 0.0% of the requests" in invalid
    assert "<script>" not in page  # escaped everywhere
    assert page.count(bad) == invalid.count(bad)  # nowhere else: no speed, no figure label
    assert "9999" not in page and "9,999" not in page
    assert built["repeats"][0] not in invalid


def test_report_tables(built: dict[str, Any]) -> None:
    page = built["html"]
    repeats = table(page, "repeats")
    assert "1,100" in repeats  # mean of the three repeats
    half = 4.302652729749464 * 100.0 / math.sqrt(3)
    assert f"± {half:,.0f}" in repeats
    assert "cost / 1M samples" in repeats and "1 unstable" in repeats
    resources = table(page, "resources")
    assert "not measured" in resources and "0.25" in resources
    rec = table(page, "recommendation")
    assert "small_lstm" in rec and "medium_cnn" in rec and "no price" in rec
    counts = table(page, "counts")
    assert re.search(r"<td>valid</td><td>10</td>", counts)
    assert re.search(r"<td>invalid</td><td>1</td>", counts)
    assert re.search(r"<td>missing \(job did not finish\)</td><td>1</td>", counts)
    assert "successful samples per second over the measured window, all clients together" in page


def test_panel_paging_is_bounded() -> None:
    cut, omitted = pages(list(range(100)))
    assert len(cut) == MAX_PAGES and all(len(p) <= MAX_PANELS for p in cut)
    assert omitted == 100 - MAX_PAGES * MAX_PANELS
    assert pages([1, 2]) == ([[1, 2]], 0)


# --------------------------------------------------------------------------
# CLI


def tiny_sweep(root: Path) -> Path:
    """Two valid runs of one model, no telemetry (like summaries before telemetry)."""
    sweep = root / "tiny"
    sweep.mkdir()
    order = []
    for servers in (1, 2):
        p = {"model": "small_lstm", "servers": servers, "clients": 2, "batch": 4, "gpu": "cpu",
             "scenario": "closed", "rate": None, "repeat": 1}
        s = summary(p, sps=100.0 * servers, p99=10.0 * servers, telemetry="absent")
        del s["measurement"]
        order.append(write_exp(sweep, p, s))
    (sweep / "sweep.json").write_text(json.dumps({"name": "tiny", "axes": AXES, "experiments": order}))
    return sweep


def test_cli_writes_report_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tiny_sweep(tmp_path)
    assert cli.main([str(sweep), "--slo-p99-ms", "15"]) == 0
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    index = (sweep / "report" / "index.html").resolve()
    assert lines[-1] == f"dataset: {(sweep / 'dataset.csv').resolve()}"
    assert lines[-2] == f"report: {index}"
    page = index.read_text()
    assert "not measured (no GPU telemetry)" in page
    assert "≤ 15 ms (given)" in page
    summary_csv = pd.read_csv(sweep / "dataset_summary.csv")
    assert len(summary_csv) == 2 and summary_csv["all_valid"].all()
    assert summary_csv["n"].tolist() == [1, 1] and summary_csv["samples_per_s_ci95_low"].isna().all()
    assert not list(sweep.glob(".*tmp")) and not list((sweep / "report").glob(".*tmp"))


def test_cli_no_plots_writes_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tiny_sweep(tmp_path)
    assert cli.main([str(sweep), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert not (sweep / "report").exists() and "report:" not in out
    assert (sweep / "dataset_summary.csv").is_file()
    assert out.splitlines()[-1].startswith("dataset: ")


def test_cli_rejects_bad_slo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tiny_sweep(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([str(sweep), "--slo-p99-ms", "-3"])
    assert exc.value.code == 2
    assert "--slo-p99-ms" in capsys.readouterr().err
    assert not (sweep / "dataset.csv").exists()


def test_report_without_valid_runs(built: dict[str, Any], tmp_path: Path) -> None:
    df = built["df"]
    index = report(df[~df["valid"]].reset_index(drop=True), tmp_path)
    page = index.read_text()
    assert "No valid runs" in page and "nothing to recommend" in page
    assert built["invalid"] in table(page, "invalid-runs")
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (tmp_path / "report" / src).read_bytes().startswith(PNG_MAGIC)
