"""Request streams over client processes: the split, the records and accounting with
several streams per process, the saturation verdict, and `balancer: none` end to end."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osmi_ee.ee import cli
from osmi_ee.ee.config import load_grid
from osmi_ee.ee.expand import expand
from osmi_ee.ee.paths import SweepPaths
from osmi_ee.osmi import metrics
from osmi_ee.osmi.client import Records
from osmi_ee.osmi.load import Issuer, Plan, run_closed, run_offline, run_poisson
from osmi_ee.osmi.schema import MEASURED, RECORD_COLUMNS
from osmi_ee.osmi.streams import STREAMS_PER_PROCESS, parse_streams, plan_processes, process_count


def test_streams_split_into_few_processes_with_contiguous_blocks():
    assert process_count(1) == 1 and process_count(STREAMS_PER_PROCESS) == 1
    assert process_count(STREAMS_PER_PROCESS + 1) == 2
    procs = plan_processes([(0, 40)])
    assert [p.id for p in procs] == [0, 1, 2]
    assert [list(p.streams) for p in procs] == [list(range(0, 14)), list(range(14, 27)), list(range(27, 40))]
    # two client nodes: each gets its own processes, ids continue across nodes
    two = plan_processes([(0, 3), (3, 2)])
    assert [(p.id, p.first, p.count) for p in two] == [(0, 0, 3), (1, 3, 2)]
    assert [p.arg for p in two] == ["0-2", "3-4"] and plan_processes([(5, 1)])[0].arg == "5"
    assert list(parse_streams("3-5")) == [3, 4, 5]
    with pytest.raises(ValueError):
        parse_streams("5-3")


def _issued(runner, plan: Plan) -> list[int]:
    """The stream of every request a load runner issues, answered in order by another
    thread (as gRPC's completion queue does)."""
    streams: list[int] = []
    answers: queue.Queue = queue.Queue()

    def answer() -> None:
        while (done := answers.get()) is not None:
            done()

    worker = threading.Thread(target=answer, daemon=True)
    worker.start()
    issuer = Issuer(lambda i, t, done, stream: (streams.append(stream), answers.put(done)))
    runner(issuer, plan, 0)
    assert issuer.wait_idle(5)
    answers.put(None)
    worker.join(5)
    return streams


def test_each_scenario_keeps_its_meaning_per_stream():
    ids = (4, 5, 6)
    closed = _issued(run_closed, Plan("closed", 2, requests=10, stream_ids=ids))
    assert len(closed) == 30 and set(closed) == set(ids)  # requests are per stream
    assert closed[:6] == [4, 5, 6, 4, 5, 6]  # 2 in flight per stream, every stream started
    offline = _issued(run_offline, Plan("offline", 1, requests=7, stream_ids=ids))
    assert sorted(offline) == sorted(list(ids) * 7)
    poisson = _issued(run_poisson, Plan("poisson", 1, requests=5, rate=1e6, stream_ids=ids))
    assert poisson == [4, 5, 6] * 5  # arrivals dealt to the streams in turn


def _records(client: int, streams: list[int], per_stream: int) -> dict[str, np.ndarray]:
    rec = Records(capacity=4)
    t = 0
    for s in streams:
        for _ in range(per_stream):
            rec.add(MEASURED, 1_000_000_000 + t, 1_000_000, 0, 0, s)
            t += 1_000_000
    n = rec.size
    return {"client": np.full(n, client), "phase": rec.phase[:n], "start_ns": rec.start_ns[:n],
            "latency_ns": rec.latency_ns[:n], "code": rec.code[:n], "delay_ns": rec.delay_ns[:n],
            "stream": rec.stream[:n]}


def test_records_and_accounting_with_several_streams_per_process(tmp_path):
    assert "stream" in RECORD_COLUMNS and "stream" in Records.COLUMNS
    a, b = _records(0, [0, 1, 2], 20), _records(1, [3, 4], 20)
    records = {k: np.concatenate([a[k], b[k]]) for k in a}
    clients = [{"client": 0, "exit_code": 0, "sent": 60, "ok": 60, "failed": 0, "cpu_share": 0.3},
               {"client": 1, "exit_code": 0, "sent": 40, "ok": 40, "failed": 0, "cpu_share": 0.2}]
    out = metrics.summarize(records, batch=1, clients=clients, backend_counts={"s0": 50, "s1": 50},
                            server_counts={"s0": 50, "s1": 50}, min_backend_share=0.5)
    assert out["valid"], out["reasons"]
    # a process whose summary disagrees with its own records is caught per process
    clients[1]["sent"] = 39
    out = metrics.summarize(records, batch=1, clients=clients, backend_counts={"s0": 50, "s1": 50},
                            min_backend_share=0.5)
    assert any("client 1: requests not accounted for" in r for r in out["reasons"])
    # per-stream analysis: every stream's requests are in the records
    rec = Records(capacity=2)
    for s in (7, 8, 7):
        rec.add(MEASURED, 1, 1, 0, 0, s)
    rec.write_parquet(tmp_path / "r.parquet", 3)
    frame = pd.read_parquet(tmp_path / "r.parquet")
    assert list(frame.columns) == list(RECORD_COLUMNS)
    assert frame.groupby("stream").size().to_dict() == {7: 2, 8: 1} and set(frame.client) == {3}


def test_a_saturated_client_process_makes_the_run_invalid():
    records = _records(0, [0], 120)
    base = {"client": 0, "exit_code": 0, "sent": 120, "ok": 120, "failed": 0}
    calm = metrics.summarize(records, batch=1, clients=[{**base, "cpu_share": 0.5}],
                             backend_counts={"s0": 120}, min_backend_share=0.5)
    assert calm["valid"], calm["reasons"]
    hot = metrics.summarize(records, batch=1, clients=[{**base, "cpu_share": 0.97}],
                            backend_counts={"s0": 120}, min_backend_share=0.5)
    assert not hot["valid"] and hot["throughput"]["samples_per_s"] is None
    assert any(r.startswith("load generator saturated: client process 0 used 97% of a core")
               for r in hot["reasons"])


def test_balancer_none_is_an_axis_that_leaves_other_ids_alone(write_grid):
    base = {"name": "ids", "experiment": {"model": ["small_lstm"], "clients": [1, 4]}}
    before = [e.id for e in expand(load_grid(write_grid(base)))]
    with_axis = {**base, "experiment": {**base["experiment"], "balancer": ["haproxy", "none"]}}
    ids = [e.id for e in expand(load_grid(write_grid(with_axis)))]
    assert len(ids) == 4 and any("lb_none" in i for i in ids) and not set(before) & set(ids)
    assert [e.id for e in expand(load_grid(write_grid(base)))] == before  # stable
    bad = {**base, "experiment": {**base["experiment"], "balancer": ["nginx"]}}
    with pytest.raises(Exception, match="experiment.balancer"):
        load_grid(write_grid(bad))


def _grid(models_dir: Path, **experiment) -> dict:
    return {"name": "streams",
            "experiment": {"model": ["small_lstm"], "servers": [2], "clients": [3], "batch": [4], **experiment},
            "measure": {"warmup_requests": 2, "requests": 50, "timeout_s": 30, "stability_tolerance": 0.5},
            "serve": {"models_dir": str(models_dir), "intra_op_threads": 1, "startup_timeout_s": 120}}


def _run(write_grid, tmp_path, data) -> tuple[int, dict, SweepPaths]:
    path, out = write_grid(data), tmp_path / "sweep"
    assert cli.main(["generate", "--grid", str(path), "--out", str(out)]) == 0
    rc = cli.main(["run", "--grid", str(path), "--out", str(out)])
    sweep = SweepPaths(out)
    (eid,) = sweep.experiment_ids()
    return rc, json.loads(sweep.experiment(eid).summary.read_text()), sweep


@pytest.mark.e2e
@pytest.mark.usefixtures("require_haproxy")
def test_balancer_none_round_robins_over_real_shards(write_grid, tmp_path, models_dir):
    rc, s, sweep = _run(write_grid, tmp_path, _grid(models_dir, balancer=["none"]))
    assert rc == 0 and s["valid"], s["reasons"]
    exp = sweep.experiment(sweep.experiment_ids()[0])
    assert not exp.haproxy_config.exists()  # no balancer started
    assert len(s["clients"]) == 1 and s["clients"][0]["stream_count"] == 3  # 3 streams, one process
    sent = s["requests"]["sent"]
    per_shard = s["accounting"]["balancer_per_backend"]
    assert s["accounting"]["balancer"] == "none" and sum(per_shard.values()) == sent
    # both ends: what the clients sent each shard is what that shard counted itself
    assert s["accounting"]["server_served"] == per_shard and set(per_shard) == {"s0", "s1"}
    assert abs(per_shard["s0"] - per_shard["s1"]) <= 1  # round robin
    frame = pd.read_parquet(exp.client_records(0))
    assert sorted(frame[frame.phase == MEASURED].stream.unique()) == [0, 1, 2]
    assert 0 < s["clients"][0]["cpu_share"] < metrics.CLIENT_SATURATION_SHARE


@pytest.mark.e2e
@pytest.mark.usefixtures("require_haproxy")
def test_a_saturated_load_generator_is_reported(write_grid, tmp_path, models_dir, monkeypatch):
    monkeypatch.setenv("OSMI_EE_TEST_SATURATION_SHARE", "0.001")  # any real client exceeds it
    rc, s, _ = _run(write_grid, tmp_path, _grid(models_dir, servers=[1]))
    assert rc != 0 and not s["valid"]
    assert any(r.startswith("load generator saturated: client process 0 used") for r in s["reasons"]), s["reasons"]
    assert s["clients"][0]["cpu_share"] > 0.001
