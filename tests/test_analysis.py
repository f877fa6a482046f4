"""The analysis engine on a synthetic sweep: collect -> dataset -> plots -> CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from osmi_ee.analysis import cli
from osmi_ee.analysis.aggregate import aggregate
from osmi_ee.analysis.collect import MISSING_REASON, SweepError, collect
from osmi_ee.analysis.dataset import backend_columns, write_dataset
from osmi_ee.analysis.plots import make_plots
from osmi_ee.osmi.stats import mean_ci

AXES = ["model", "servers", "clients", "batch", "gpu", "repeat"]
# Always in plots/ (a message figure when there is nothing to draw).
CORE_FIGURES = ("latency_vs_throughput", "throughput_vs_clients", "throughput_vs_batch",
                "latency_vs_clients", "backend_shares")


def exp_id(p: dict[str, Any]) -> str:
    return f"{p['model']}-s{p['servers']}-c{p['clients']}-b{p['batch']}-{p['gpu']}-r{p['repeat']}"


def summary(params: dict[str, Any], valid: bool = True, reasons: list[str] | None = None,
            sps: float = 1000.0, backends: dict[str, int] | None = None) -> dict[str, Any]:
    backends = backends or {f"s{i}": 100 for i in range(params["servers"])}
    total = sum(backends.values())
    return {
        "schema": "osmi-ee/summary/1",
        "experiment_id": exp_id(params),
        "params": params,
        "valid": valid,
        "reasons": reasons or [],
        "requests": {"sent": total, "ok": total, "failed": 0},
        "samples_ok": total * params["batch"],
        "window_s": 2.5,
        "throughput": {"samples_per_s": sps, "requests_per_s": sps / params["batch"]},
        "latency_ms": {"mean": 24.1, "p50": 23.0, "p90": 30.2, "p99": 41.0, "max": 55.0},
        "backends": {k: {"requests": v, "share": v / total} for k, v in backends.items()},
        "clients": [{"client": 0, "sent": total, "ok": total, "failed": 0, "exit_code": 0}],
        "server_kind": "osmi-model-server",
        "started_at": "2026-11-22T23:00:00Z",
        "finished_at": "2026-11-22T23:00:09Z",
    }


def write_experiment(sweep: Path, params: dict[str, Any], summ: dict[str, Any] | None) -> str:
    eid = exp_id(params)
    (sweep / eid / "results").mkdir(parents=True)
    lines = ["experiment:"] + [f"  {k}: {v}" for k, v in params.items()] + ["osmi:", "  port: 8500"]
    (sweep / eid / "config.yaml").write_text("\n".join(lines) + "\n")
    if summ is not None:
        (sweep / eid / "results" / "summary.json").write_text(json.dumps(summ))
    return eid


def make_sweep(root: Path) -> dict[str, str]:
    """8 valid runs (2 repeats of one config), one invalid with numbers, one missing."""
    sweep = root / "sweep"
    sweep.mkdir()
    ids: dict[str, str] = {}
    order: list[str] = []
    base = {"model": "small_lstm", "gpu": "cpu", "repeat": 1}
    for servers in (1, 2):
        for clients in (1, 4):
            p = {**base, "servers": servers, "clients": clients, "batch": 16}
            order.append(write_experiment(sweep, p, summary(p, sps=500.0 * servers * clients)))
    for batch in (32, 64):
        p = {**base, "servers": 2, "clients": 4, "batch": batch}
        order.append(write_experiment(sweep, p, summary(p, sps=30.0 * batch)))
    # A second repeat and a skewed two-server run (201/199 like the contract's example).
    p = {**base, "servers": 2, "clients": 4, "batch": 16, "repeat": 2}
    ids["skewed"] = write_experiment(sweep, p, summary(p, sps=4200.0, backends={"s0": 201, "s1": 199}))
    order.append(ids["skewed"])
    p = {**base, "model": "medium_cnn", "servers": 1, "clients": 2, "batch": 8}
    order.append(write_experiment(sweep, p, summary(p, sps=80.0)))
    # Invalid, but its summary still carries a throughput that must not leak out.
    p = {**base, "servers": 2, "clients": 8, "batch": 16}
    ids["invalid"] = write_experiment(
        sweep, p, summary(p, valid=False, sps=9999.0,
                          reasons=["2 of 8 clients failed", "backend s1 got no requests"]))
    order.append(ids["invalid"])
    # Listed in sweep.json, config written, job never finished.
    p = {**base, "servers": 1, "clients": 8, "batch": 16}
    ids["missing"] = write_experiment(sweep, p, None)
    order.append(ids["missing"])
    (sweep / "sweep.json").write_text(json.dumps(
        {"name": "test", "grid": "grid.yaml", "axes": AXES, "experiments": order}))
    ids["dir"] = str(sweep)
    ids["count"] = str(len(order))
    return ids


@pytest.fixture
def sweep(tmp_path: Path) -> dict[str, str]:
    return make_sweep(tmp_path)


def row(df: pd.DataFrame, eid: str) -> pd.Series:
    rows = df[df["experiment_id"] == eid]
    assert len(rows) == 1
    return rows.iloc[0]


# --------------------------------------------------------------------------
# collect


def test_one_row_per_experiment_in_sweep_order(sweep: dict[str, str]) -> None:
    df = collect(sweep["dir"])
    listed = json.loads((Path(sweep["dir"]) / "sweep.json").read_text())["experiments"]
    assert df["experiment_id"].tolist() == listed
    assert len(df) == int(sweep["count"]) == 10
    for axis in AXES:
        assert axis in df.columns
    assert df["valid"].dtype == bool
    assert int(df["valid"].sum()) == 8


def test_invalid_row_has_no_throughput_and_all_reasons(sweep: dict[str, str]) -> None:
    df = collect(sweep["dir"])
    bad = row(df, sweep["invalid"])
    assert not bad["valid"]
    assert bad["status"] == "invalid"
    assert math.isnan(bad["samples_per_s"]) and math.isnan(bad["requests_per_s"])
    assert bad["reason"] == "2 of 8 clients failed; backend s1 got no requests"
    assert 9999.0 not in df["samples_per_s"].tolist()
    # Valid rows keep their numbers and have an empty reason.
    good = df[df["valid"]]
    assert (good["reason"] == "").all()
    assert good["samples_per_s"].notna().all()


def test_missing_summary_row_uses_config_params(sweep: dict[str, str]) -> None:
    df = collect(sweep["dir"])
    miss = row(df, sweep["missing"])
    assert not miss["valid"]
    assert miss["status"] == "missing"
    assert miss["reason"] == MISSING_REASON
    assert (miss["model"], miss["servers"], miss["clients"], miss["batch"]) == ("small_lstm", 1, 8, 16)
    assert miss["gpu"] == "cpu"
    assert math.isnan(miss["samples_per_s"]) and pd.isna(miss["sent"])


def test_metric_and_share_columns(sweep: dict[str, str]) -> None:
    df = collect(sweep["dir"])
    skew = row(df, sweep["skewed"])
    assert (skew["backend_s0_requests"], skew["backend_s1_requests"], skew["backend_count"]) == (201, 199, 2)
    assert df["backend_s0_requests"].dtype == "Int64"
    assert skew["backend_share_min"] == pytest.approx(199 / 400)
    assert skew["backend_share_max"] == pytest.approx(201 / 400)
    assert (skew["sent"], skew["ok"], skew["failed"]) == (400, 400, 0)
    assert skew["samples_per_s"] == 4200.0
    assert skew["window_s"] == 2.5
    assert (skew["latency_p50_ms"], skew["latency_p90_ms"], skew["latency_p99_ms"],
            skew["latency_mean_ms"]) == (23.0, 30.2, 41.0, 24.1)
    assert skew["server_kind"] == "osmi-model-server"
    single = df[(df["servers"] == 1) & df["valid"]]
    assert (single["backend_count"] == 1).all() and single["backend_s1_requests"].isna().all()
    assert "backend_requests" not in df.columns and "backend_shares" not in df.columns


def test_backends_sort_naturally(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    sweep.mkdir()
    p = {"model": "small_lstm", "servers": 11, "clients": 1, "batch": 1, "gpu": "cpu", "repeat": 1}
    backends = {f"s{i}": i + 1 for i in range(11)}
    eid = write_experiment(sweep, p, summary(p, backends=backends))
    (sweep / "sweep.json").write_text(json.dumps({"axes": AXES, "experiments": [eid]}))
    df = collect(sweep)
    cols = backend_columns(df)
    assert cols == [f"backend_s{i}_requests" for i in range(11)]
    assert [int(df.loc[0, c]) for c in cols] == [i + 1 for i in range(11)]


def test_extra_params_become_columns_and_unreadable_summary_is_a_row(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    sweep.mkdir()
    p = {"model": "small_lstm", "servers": 1, "clients": 1, "batch": 1, "gpu": "cpu", "repeat": 1}
    good = write_experiment(sweep, p, summary({**p, "proxy": "haproxy"}))
    q = {**p, "repeat": 2}
    broken = write_experiment(sweep, q, None)
    (sweep / broken / "results" / "summary.json").write_text("{not json")
    (sweep / "sweep.json").write_text(json.dumps({"axes": AXES, "experiments": [good, broken]}))
    df = collect(sweep)
    assert df.loc[0, "proxy"] == "haproxy" and pd.isna(df.loc[1, "proxy"])
    assert df.loc[1, "status"] == "unreadable" and not df.loc[1, "valid"]
    assert "summary.json" in df.loc[1, "reason"]
    assert df.loc[1, "repeat"] == 2  # params still recovered from config.yaml


def test_collect_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="nope"):
        collect(tmp_path / "nope")
    with pytest.raises(SweepError, match="sweep.json"):
        collect(tmp_path)


# --------------------------------------------------------------------------
# dataset files


def test_csv_and_parquet_written_and_equal(sweep: dict[str, str]) -> None:
    df = collect(sweep["dir"])
    csv_path, parquet_path = write_dataset(df, sweep["dir"])
    assert csv_path == Path(sweep["dir"]) / "dataset.csv"
    assert parquet_path == Path(sweep["dir"]) / "dataset.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(parquet_path), df)  # Parquet keeps the dtypes
    # Raw CSV: same ids and columns, and the invalid run has an empty throughput cell.
    raw = pd.read_csv(csv_path)
    assert list(raw.columns) == list(df.columns)
    assert raw["experiment_id"].tolist() == df["experiment_id"].tolist()
    assert math.isnan(raw.set_index("experiment_id").loc[sweep["invalid"], "samples_per_s"])
    assert raw["backend_s1_requests"].dropna().tolist() == df["backend_s1_requests"].dropna().tolist()
    # No temp files left behind by the atomic writes.
    assert not list(Path(sweep["dir"]).glob(".*tmp"))


# --------------------------------------------------------------------------
# plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_figures(paths: list[Path], out_dir: Path) -> None:
    stems = {p.stem for p in paths}
    assert set(CORE_FIGURES) <= stems
    assert set(paths) == {out_dir / f"{stem}.{fmt}" for stem in stems for fmt in ("png", "svg")}
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000, path
        if path.suffix == ".png":
            assert data.startswith(PNG_MAGIC)
        else:
            assert b"<svg" in data[:2000]


def test_plots_written(sweep: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "plots"
    paths = make_plots(collect(sweep["dir"]), out)
    check_figures(paths, out)
    assert {"scaling", "heatmap"} <= {p.stem for p in paths}  # servers 1/2 twins; batch × clients
    svg = (out / "throughput_vs_clients.svg").read_text()
    assert "throughput (samples/s)" in svg and "small_lstm" in svg
    assert "no valid runs" not in svg
    assert "95% confidence interval" in svg  # the two repeats have an interval
    assert "min–max" not in svg
    shares = (out / "backend_shares.svg").read_text()
    assert "N=2 backends" in shares and "fair share" in shares


def test_plots_without_valid_runs_say_so(sweep: dict[str, str], tmp_path: Path) -> None:
    df = collect(sweep["dir"])
    df = df[~df["valid"]].reset_index(drop=True)
    out = tmp_path / "plots"
    paths = make_plots(df, out)
    check_figures(paths, out)
    assert {p.stem for p in paths} == set(CORE_FIGURES)
    for stem in ("throughput_vs_clients", "throughput_vs_batch", "latency_vs_clients", "latency_vs_throughput"):
        assert "no valid runs" in (out / f"{stem}.svg").read_text()


def test_plots_of_empty_dataset(sweep: dict[str, str], tmp_path: Path) -> None:
    df = collect(sweep["dir"]).iloc[0:0]
    out = tmp_path / "plots"
    check_figures(make_plots(df, out), out)
    assert "more than one server" in (out / "backend_shares.svg").read_text()


def test_stale_pages_are_removed(sweep: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "plots"
    out.mkdir()
    (out / "throughput_vs_clients-7.png").write_bytes(PNG_MAGIC)  # from a bigger, older sweep
    (out / "notes.txt").write_text("mine")
    make_plots(collect(sweep["dir"]), out)
    assert not (out / "throughput_vs_clients-7.png").exists() and (out / "notes.txt").exists()


# --------------------------------------------------------------------------
# CLI


def test_cli_writes_everything_and_ends_with_dataset_line(
    sweep: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([sweep["dir"]]) == 0
    out = capsys.readouterr().out
    lines = out.rstrip("\n").splitlines()
    csv_path = (Path(sweep["dir"]) / "dataset.csv").resolve()
    assert lines[-1] == f"dataset: {csv_path}"
    assert csv_path.is_file() and csv_path.with_suffix(".parquet").is_file()
    check_figures(sorted((Path(sweep["dir"]) / "plots").iterdir()), Path(sweep["dir"]) / "plots")
    assert (Path(sweep["dir"]) / "perf_analyzer.csv").is_file()
    assert f"perf_analyzer: {(Path(sweep['dir']) / 'perf_analyzer.csv').resolve()}" in lines
    header = next(line for line in lines if line.startswith("model"))
    for col in ("servers", "clients", "batch", "valid", "samples/s", "p50/p99 ms", "shares"):
        assert col in header
    assert any("201/199" not in line and "0.50/0.50" in line for line in lines)
    invalid = [line for line in lines if line.startswith("invalid")]
    assert len(invalid) == 1
    assert sweep["invalid"] in invalid[0] and "2 of 8 clients failed" in invalid[0]
    assert sweep["missing"] in invalid[0] and MISSING_REASON in invalid[0]
    assert "9,999" not in out


def test_cli_no_plots(sweep: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([sweep["dir"], "--no-plots"]) == 0
    assert not (Path(sweep["dir"]) / "plots").exists()
    assert capsys.readouterr().out.splitlines()[-1].startswith("dataset: ")


def test_cli_missing_dir_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-sweep"
    assert cli.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_dir_without_sweep_json_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([str(tmp_path)]) == 2
    assert str(tmp_path / "sweep.json") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "SWEEP_DIR" in capsys.readouterr().out


def test_repeats_average_with_their_interval(sweep: dict[str, str]) -> None:
    table = aggregate(collect(sweep["dir"]))
    point = table[(table["servers"] == 2) & (table["clients"] == 4) & (table["batch"] == 16)].iloc[0]
    # repeat 1: 4000, repeat 2: 4200; the invalid 9999 run (clients 8) is another configuration.
    mean, std, low, high = mean_ci([4000.0, 4200.0])
    assert (point["samples_per_s_mean"], point["n"], point["n_runs"]) == (4100.0, 2, 2)
    assert (point["samples_per_s_ci95_low"], point["samples_per_s_ci95_high"]) == (pytest.approx(low), pytest.approx(high))
    assert point["samples_per_s_std"] == pytest.approx(std)


def test_svg_output_is_reproducible(sweep: dict[str, str], tmp_path: Path) -> None:
    df = collect(sweep["dir"])
    first = make_plots(df, tmp_path / "a")
    second = make_plots(df, tmp_path / "b")
    for a, b in zip(first, second):
        if a.suffix == ".svg":
            assert a.read_bytes() == b.read_bytes(), a.name
