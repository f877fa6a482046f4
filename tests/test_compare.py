"""`osmi-ee compare`: two sweeps of one grid, configuration by configuration."""

from __future__ import annotations

import json
from pathlib import Path

from osmi_ee.analysis.compare import AGREE, DISAGREE, ONE_VALID, compare_sweeps, counts
from osmi_ee.ee import cli


def write_sweep(root: Path, runs: list[tuple[dict, float | None, list[float] | None]]) -> Path:
    """runs: (params, samples/s or None for an invalid run, the run's own interval)."""
    ids, params = [], {}
    for p, sps, ci in runs:
        eid = f"{p['model']}-s{p['servers']}-c{p['clients']}-r{p['repeat']}"
        ids.append(eid)
        params[eid] = {**p, "batch": 1, "gpu": "cpu", "scenario": "closed", "rate": None}
        results = root / eid / "results"
        results.mkdir(parents=True)
        config = {"name": "t", "profile": {"name": "test", "gpus": {"cpu": {"gres": ""}}},
                  "experiment": {**p, "batch": 1, "gpu": "cpu", "scenario": "closed", "rate": None}}
        (root / eid / "config.yaml").write_text(json.dumps(config))
        (results / "summary.json").write_text(json.dumps({
            "schema": "osmi-ee/summary/1", "experiment_id": eid, "valid": sps is not None,
            "reasons": [] if sps is not None else ["unstable"],
            "requests": {"sent": 200, "ok": 200, "failed": 0}, "samples_ok": 200, "window_s": 2.0,
            "throughput": {"samples_per_s": sps, "samples_per_s_ci95": ci,
                           "requests_per_s": sps},
            "latency_ms": {"n": 200, "mean": 10.0, "p50": 10.0, "p90": 12.0, "p99": None, "max": 20.0},
            "backends": {"s0": {"requests": 200, "share": 1.0}}}))
    (root / "sweep.json").write_text(json.dumps({
        "name": "t", "experiments": ids, "params": params,
        "axes": ["model", "servers", "clients", "batch", "gpu", "scenario", "rate", "repeat"]}))
    return root


def point(servers: int, repeat: int = 1) -> dict:
    return {"model": "small_lstm", "servers": servers, "clients": 1, "repeat": repeat}


def test_single_runs_compare_by_their_own_intervals(tmp_path: Path) -> None:
    a = write_sweep(tmp_path / "a", [(point(1), 100.0, [95, 105]), (point(2), 200.0, [195, 205]),
                                     (point(4), 300.0, [290, 310])])
    b = write_sweep(tmp_path / "b", [(point(1), 103.0, [98, 108]), (point(2), 250.0, [240, 260]),
                                     (point(4), None, None)])
    verdicts = {p.point.split()[1]: p.verdict for p in compare_sweeps(a, b)}
    assert verdicts == {"servers=1": AGREE, "servers=2": DISAGREE, "servers=4": ONE_VALID}
    assert counts(compare_sweeps(a, b))[DISAGREE] == 1
    assert cli.main(["compare", str(a), str(b)]) == 1  # a disagreement is an error


def test_repeats_compare_by_the_interval_over_launches(tmp_path: Path) -> None:
    # Each launch is precise on its own, but launches differ: the configuration's
    # interval (Student t over 3 launches) holds that, and the two sweeps agree.
    a = write_sweep(tmp_path / "a", [(point(1, r), sps, [sps - 2, sps + 2])
                                     for r, sps in ((1, 100.0), (2, 120.0), (3, 110.0))])
    b = write_sweep(tmp_path / "b", [(point(1, r), sps, [sps - 2, sps + 2])
                                     for r, sps in ((1, 125.0), (2, 118.0), (3, 130.0))])
    (only,) = compare_sweeps(a, b)
    assert only.verdict == AGREE and only.point.startswith("model=small_lstm")
    assert only.a_ci95[0] < 100 and only.a_ci95[1] > 120  # wider than any single launch's
    assert cli.main(["compare", str(a), str(b)]) == 0
