"""The client's own costs against one bare server: CPU per request (vs a bare grpcio
loop and the OSMI-style TensorFlow client), at batch 1 and at an OSMI-sized
payload, start-up time and peak memory."""

from __future__ import annotations

import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from osmi_ee.bench.clients import Clients
from osmi_ee.bench.common import MODEL, PAYLOAD_BATCH, Sizes, machine_cpu_s, proc_cpu_s, run_worker, say


def measured(fn: Callable[[], Any], pids: list[int]) -> tuple[Any, float]:
    """fn()'s result and the cores other users' jobs took meanwhile: machine-wide busy
    CPU less ours (the servers `pids`, this process and every child it reaped)."""

    def snap() -> tuple[float, float, float]:
        mine = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
        return time.time(), machine_cpu_s()[0], mine + sum(proc_cpu_s(p) for p in pids)

    t0, busy0, ours0 = snap()
    out = fn()
    t1, busy1, ours1 = snap()
    return out, max(0.0, (busy1 - busy0 - (ours1 - ours0)) / max(t1 - t0, 1e-9))


def _worker(kind: str, target: str, requests: int, warmup: int, batch: int = 1) -> dict[str, Any]:
    return run_worker(["--worker", kind, "--target", target, "--requests", str(requests),
                       "--warmup", str(warmup), "--batch", str(batch)], timeout_s=300)


def bench_cpu(clients: Clients, target: str, s: Sizes, server_pids: list[int]) -> dict[str, Any]:
    """Client and raw loop alternate (ABBA order) for several rounds; the anchor runs
    twice. CPU time of a fixed piece of work only grows when other jobs share the
    cores (caches, hyper-threads), so each figure is its least disturbed run (the
    minimum, as timeit advises); medians and the other users' load during every run
    are reported beside it."""
    runs: dict[str, list[float]] = {"client": [], "raw": [], "anchor": []}
    others: dict[str, list[float]] = {"client": [], "raw": [], "anchor": []}
    rss: list[float] = []

    def client(r: int) -> float:
        summary, _ = clients.run(target, f"cpu-client-{r}", requests=s.client_requests, warmup=s.warmup,
                                 small_parent=True)
        rss.append(summary["max_rss_mb"])
        return summary["cpu_s_measured"] / summary["sent"] * 1e6

    def raw(_r: int) -> float:
        out = _worker("raw", target, s.raw_requests, s.warmup)
        return out["cpu_s"] / out["requests"] * 1e6

    for r in range(s.cpu_rounds):
        for name, fn in ((("client", client), ("raw", raw)) if r % 2 == 0 else (("raw", raw), ("client", client))):
            us, load = measured(lambda: fn(r), server_pids)
            runs[name].append(us)
            others[name].append(load)
        say(f"cpu round {r + 1}/{s.cpu_rounds}: client {runs['client'][-1]:.0f} us/req, raw "
            f"{runs['raw'][-1]:.0f} us/req; other users' load {others['client'][-1]:.2f}/"
            f"{others['raw'][-1]:.2f} cores")
    anchor_import = []
    for _ in range(s.anchor_runs):
        out, load = measured(lambda: _worker("anchor", target, s.anchor_requests, s.warmup), server_pids)
        runs["anchor"].append(out["cpu_s"] / out["requests"] * 1e6)
        others["anchor"].append(load)
        anchor_import.append(out["tf_import_s"])
        kept = out["kept"]
        say(f"anchor (TF-built requests): {runs['anchor'][-1]:.0f} us/req (TF import "
            f"{out['tf_import_s']:.1f} s, excluded); other users' load {load:.2f} cores")
    best = {name: min(values) for name, values in runs.items()}
    client_us, raw_us, anchor_us = best["client"], best["raw"], best["anchor"]
    return {
        "client_cpu_us_per_req": client_us,
        "client_cpu_us_per_req_runs": runs["client"],
        "client_cpu_us_per_req_median": statistics.median(runs["client"]),
        "client_requests": s.client_requests,
        "raw_cpu_us_per_req": raw_us,
        "raw_cpu_us_per_req_runs": runs["raw"],
        "raw_cpu_us_per_req_median": statistics.median(runs["raw"]),
        "raw_requests": s.raw_requests,
        "anchor_cpu_us_per_req": anchor_us,
        "anchor_cpu_us_per_req_runs": runs["anchor"],
        "anchor_requests": s.anchor_requests,
        "anchor_responses_kept": kept,
        "anchor_tf_import_s": statistics.median(anchor_import),
        "raw_vs_client_ratio": client_us / raw_us,
        "raw_vs_client_ratio_median": statistics.median(runs["client"]) / statistics.median(runs["raw"]),
        "anchor_vs_client_ratio": client_us / anchor_us,
        "anchor_speedup": anchor_us / client_us,
        # the best any client sending through grpcio could reach against the anchor
        "raw_vs_anchor_ratio": raw_us / anchor_us,
        "cpu_others_cores": others,
        "client_rss_mb": max(rss),
    }


MUX_STREAMS = 16  # one client process carrying this many streams: how a job's clients run (osmi.streams)


def bench_cpu_mux(clients: Clients, target: str, s: Sizes, server_pids: list[int]) -> dict[str, Any]:
    """Our client as a job runs it: MUX_STREAMS request streams multiplexed in one process
    (futures on one channel), batch 1; CPU per checked request, least disturbed of cpu_rounds.
    Alternating with it (ABBA), the floor any grpcio futures client has here: the bare loop
    with as many calls in flight (workers.worker_raw_mux), so the figure says how much of
    our cost is ours and how much is the library's."""
    runs, floor, others, shares = [], [], [], []
    per_stream = max(1, s.client_requests // MUX_STREAMS)

    def ours(r: int) -> None:
        (summary, _), load = measured(lambda: clients.run(target, f"cpu-mux-{r}", requests=per_stream,
                                                          warmup=s.warmup, small_parent=True,
                                                          streams=MUX_STREAMS), server_pids)
        runs.append(summary["cpu_s_measured"] / summary["sent"] * 1e6)
        others.append(load)
        shares.append(summary["cpu_share"])

    def bare(_r: int) -> None:
        out = _worker("raw_mux", target, per_stream * MUX_STREAMS, s.warmup)
        floor.append(out["cpu_s"] / out["requests"] * 1e6)

    for r in range(s.cpu_rounds):
        for fn in ((ours, bare) if r % 2 == 0 else (bare, ours)):
            fn(r)
        say(f"cpu mux round {r + 1}/{s.cpu_rounds}: {MUX_STREAMS} streams in one process "
            f"{runs[-1]:.0f} us/req (cpu share {shares[-1]:.2f}), bare grpcio futures loop {floor[-1]:.0f}; "
            f"other users' load {others[-1]:.2f} cores")
    return {"client_mux_cpu_us_per_req": min(runs), "client_mux_cpu_us_per_req_runs": runs,
            "raw_mux_cpu_us_per_req": min(floor), "raw_mux_cpu_us_per_req_runs": floor,
            "client_mux_vs_raw_mux": min(runs) / min(floor),
            "client_mux_streams": MUX_STREAMS, "client_mux_cpu_share": shares,
            "client_mux_others_cores": others}


def bench_perf_analyzer_cpu(target: str, served: Callable[[], int | None], s: Sizes) -> dict[str, Any]:
    """perf_analyzer's own CPU per request (TF-Serving's API, batch 1, MUX_STREAMS in flight), where
    `make triton` installed it (build/triton-env); {} otherwise. Its requests are counted by the
    shard itself (`served`), its CPU is what the child used from start to exit (start-up included,
    so a little high)."""
    from osmi_ee.bench.calibrate import Load, perf_analyzer_argv
    from osmi_ee.osmi.triton_setup import TritonInstall

    install = TritonInstall.default()
    if not install.perf_analyzer.exists():
        say("perf_analyzer is not installed (make triton): its CPU per request is not measured")
        return {}
    load = Load(model=MODEL, batch=1, concurrency=MUX_STREAMS, duration_s=1.5 if s.cpu_rounds == 1 else 3.0)
    runs = []
    for r in range(max(1, s.cpu_rounds // 2)):
        before, cpu0 = served(), _children_cpu_s()
        with tempfile.TemporaryDirectory(prefix="osmi-perf-cpu-") as work:
            out = subprocess.run(perf_analyzer_argv(install.perf_analyzer, target, "tfserving", load,
                                                    Path(work) / "perf.csv"),
                                 capture_output=True, text=True, env=install.perf_env(), timeout=300)
        cpu, after = _children_cpu_s() - cpu0, served()
        if out.returncode != 0 or before is None or after is None or after <= before:
            say(f"perf_analyzer run failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}")
            continue
        runs.append(cpu / (after - before) * 1e6)
        say(f"perf_analyzer round {r + 1}: {runs[-1]:.0f} us/req ({after - before} requests, concurrency "
            f"{MUX_STREAMS})")
    return {"perf_analyzer_cpu_us_per_req": min(runs), "perf_analyzer_cpu_us_per_req_runs": runs} if runs else {}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_cpu_payload(clients: Clients, target: str, s: Sizes) -> dict[str, Any]:
    """The same comparison at an OSMI-sized payload (batch 64: 98 KB per request),
    where building each request with TensorFlow from fresh random data costs the
    anchor style far more than batch 1 shows."""
    batch, requests, warmup = PAYLOAD_BATCH, max(20, s.anchor_requests // 4), s.warmup // 5 + 1
    summary, _ = clients.run(target, "cpu-client-payload", requests=requests, warmup=warmup,
                             small_parent=True, batch=batch)
    client_us = summary["cpu_s_measured"] / summary["sent"] * 1e6
    out = _worker("anchor", target, requests, warmup, batch)
    anchor_us = out["cpu_s"] / out["requests"] * 1e6
    raw = _worker("raw", target, requests, warmup, batch)
    raw_us = raw["cpu_s"] / raw["requests"] * 1e6
    say(f"batch {batch}: client {client_us:.0f} us/req, raw {raw_us:.0f}, anchor {anchor_us:.0f} "
        f"(client/anchor {client_us / anchor_us:.2f})")
    return {
        "payload_batch": batch,
        "payload_requests": requests,
        "client_cpu_us_per_req_payload": client_us,
        "raw_cpu_us_per_req_payload": raw_us,
        "anchor_cpu_us_per_req_payload": anchor_us,
        "anchor_vs_client_ratio_payload": client_us / anchor_us,
    }


def bench_startup(clients: Clients, target: str, s: Sizes) -> dict[str, Any]:
    """Interpreter start to first request, timed from outside: the wall clock just
    before the client is spawned to the start of its first request (its first
    record); the config.yaml it reads is part of its start, as in a job. The
    client's own `startup_s` (from /proc, the process's own start) is kept beside it."""
    import pyarrow.parquet as pq

    runs, reported = [], []
    for r in range(s.startup_runs):
        spawned = time.time()
        summary, paths = clients.run(target, f"startup-{r}", requests=1, warmup=1)
        first_ns = pq.read_table(paths.client_records(0), columns=["start_ns"]).column(0).to_numpy().min()
        runs.append(float(first_ns) / 1e9 - spawned)
        reported.append(summary["startup_s"])
    say(f"client start-up (spawn to first request): median {statistics.median(runs):.3f} s "
        f"(the client's own startup_s: {statistics.median(reported):.3f} s)")
    return {"client_startup_s": statistics.median(runs), "client_startup_runs": runs,
            "client_startup_s_reported": statistics.median(reported),
            "client_startup_reported_runs": reported}
