"""The `lb` part: HAProxy's cost. The same closed-loop clients go through the
balancer to 2 shards, or split over the 2 shards directly, round after round."""

from __future__ import annotations

import statistics
import time
from typing import Any

from osmi_ee.bench.clients import Clients
from osmi_ee.bench.common import MODEL, Sizes, machine_cpu_s, proc_cpu_s, say
from osmi_ee.ee.paths import write_atomic
from osmi_ee.osmi import haproxy
from osmi_ee.osmi.fleet import Fleet
from osmi_ee.osmi.schema import MEASURED


def clients_at_once(clients: Clients, targets: list[str], tag: str, s: Sizes, watch: dict[str, int],
                    stats_port: int | None = None, *, duration_s: float | None = None, model: str = MODEL,
                    batch: int = 1, warmup: int = 5) -> tuple[dict[str, Any], dict[str, int]]:
    """Closed-loop clients, one per target entry, released together through
    osmi-client's barrier. Returns their throughput (ok requests / window, all
    together), the CPU each watched process (name -> pid) and the clients spent per
    request, how busy the whole machine was meanwhile; and, given the balancer's
    stats port, what it forwarded to each backend from the `go` on."""
    import pyarrow.parquet as pq

    duration_s = s.lb_duration_s if duration_s is None else duration_s
    paths = clients.prepare(tag, warmup=warmup, warmup_s=0.5, model=model, batch=batch)
    barrier = paths.barrier
    children = [clients.start(paths, k, target, duration_s=duration_s) for k, target in enumerate(targets)]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < len(children):
        dead = [c for c in children if not c.alive()]
        if dead:
            raise RuntimeError(dead[0].describe_exit())
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: clients not warmed up after 120 s")
        time.sleep(0.01)
    before = haproxy.request_counts(stats_port) if stats_port is not None else {}
    watch = {**watch, **{f"client{k}": c.process.pid for k, c in enumerate(children)}}
    go = time.time() + 0.05
    write_atomic(barrier / "go", repr(go))
    # CPU is sampled over the steady middle of the window (not the clients'
    # start or their exit, when they write records), for all our processes
    # and for the whole machine: the rest is other users' load.
    margin = min(0.25, duration_s / 10)
    time.sleep(max(0.0, go + margin - time.time()))
    t_a, cpu_a, busy_a = time.time(), {n: proc_cpu_s(p) for n, p in watch.items()}, machine_cpu_s()
    time.sleep(max(0.0, go + duration_s - margin - time.time()))
    t_b, cpu_b, busy_b = time.time(), {n: proc_cpu_s(p) for n, p in watch.items()}, machine_cpu_s()
    for child in children:
        child.process.wait(timeout=duration_s + 120)
        if child.process.returncode != 0:
            raise RuntimeError(child.describe_exit())
    ok, first, last, ended_in_sample = 0, None, None, 0
    for k in range(len(children)):
        table = pq.read_table(paths.client_records(k), columns=["phase", "start_ns", "latency_ns", "code"])
        phase, start, lat, code = (table.column(c).to_numpy() for c in ("phase", "start_ns", "latency_ns", "code"))
        m = phase == MEASURED
        if (code[m] != 0).any():
            raise RuntimeError(f"{tag}: client {k} had failed requests")
        ok += int(m.sum())
        first = int(start[m].min()) if first is None else min(first, int(start[m].min()))
        end = start[m] + lat[m]
        last = int(end.max()) if last is None else max(last, int(end.max()))
        ended_in_sample += int(((end >= t_a * 1e9) & (end < t_b * 1e9)).sum())
    after = haproxy.request_counts(stats_port) if stats_port is not None else {}
    window = (last - first) / 1e9
    n = max(1, ended_in_sample)
    cpu = {name: cpu_b[name] - cpu_a[name] for name in watch}
    per_req = {f"{name}_cpu_us_per_req": v / n * 1e6 for name, v in cpu.items() if not name.startswith("client")}
    clients_cpu = sum(v for name, v in cpu.items() if name.startswith("client"))
    per_req["clients_cpu_us_per_req"] = clients_cpu / n * 1e6
    ours = sum(cpu.values())
    busy, elapsed = busy_b[0] - busy_a[0], t_b - t_a
    return {"rps": ok / window, "ok": ok, "window_s": window, **per_req,
            "ours_cpu_us_per_req": ours / n * 1e6,
            "sample_s": elapsed, "sample_requests": ended_in_sample,
            "ours_cores": ours / elapsed,
            "machine_busy_cores": busy / elapsed,
            # CPU of everything else on this shared box meanwhile (other users' jobs)
            "others_cores": max(0.0, (busy - ours) / elapsed)}, \
        {name: after.get(name, 0) - before.get(name, 0) for name in after}


def bench_lb(clients: Clients, fleet: Fleet, s: Sizes) -> dict[str, Any]:
    balancer = fleet.start_balancer(["haproxy"], config=clients.work / "haproxy.cfg",
                                    log=clients.logs / "haproxy.log", request_timeout_s=30)
    m = s.lb_clients
    # The direct case runs the same M clients at the same time, half on each
    # server, rather than each server alone with M/2 clients and the two
    # throughputs summed: on this 2-core box every client and both servers
    # share the same cores, so measuring the servers one after the other
    # would give each the whole machine and overstate the sum (a "direct"
    # figure that no real deployment gets). Side by side, both cases carry
    # the same client and server processes on the same cores; what differs
    # is only the balancer hop (and HAProxy's own CPU, which is the cost
    # being measured). Rounds alternate direct and balanced, and each
    # round's ratio compares two neighbours in time (the box is shared:
    # background load drifts); the median round counts.
    ports = [shard.port for shard in fleet.shards]
    # direct = `balancer: none`: every client round-robins over both shards itself (osmi.client)
    direct_targets = [",".join(f"127.0.0.1:{port}" for port in ports)] * m
    lb_targets = [f"127.0.0.1:{balancer.port}"] * m
    servers = {f"server{k}": pid for k, pid in enumerate(fleet.pids().values())}
    rounds = []
    for r in range(s.lb_rounds):
        direct, _ = clients_at_once(clients, direct_targets, f"direct-{r}", s, servers)
        balanced, counts = clients_at_once(clients, lb_targets, f"lb-{r}", s,
                                           {**servers, "haproxy": balancer.child.process.pid}, balancer.stats_port)
        total = sum(counts.values())
        share = min(counts.values()) / total if total else 0.0
        rounds.append({"direct": direct, "balanced": balanced, "efficiency": balanced["rps"] / direct["rps"],
                       "cpu_efficiency": direct["ours_cpu_us_per_req"] / balanced["ours_cpu_us_per_req"],
                       "backend_counts": counts, "backend_share_min": share})
        say(f"lb round {r + 1}/{s.lb_rounds}: direct {direct['rps']:.0f} req/s, via HAProxy "
            f"{balanced['rps']:.0f} req/s ({rounds[-1]['efficiency']:.2f}); our CPU/req "
            f"{direct['ours_cpu_us_per_req']:.0f} vs {balanced['ours_cpu_us_per_req']:.0f} us "
            f"(HAProxy {balanced['haproxy_cpu_us_per_req']:.0f}); other users' load "
            f"{direct['others_cores']:.2f}/{balanced['others_cores']:.2f} cores; backends {counts}")
    fleet.group.stop([balancer.child], grace_s=5)
    efficiencies = [x["efficiency"] for x in rounds]
    return {
        "lb_efficiency": statistics.median(efficiencies),
        "lb_efficiency_runs": efficiencies,
        # What the balancer costs when the box is CPU-bound and all ours: our processes'
        # CPU per request, direct / balanced (immune to other users' load).
        "lb_efficiency_cpu": statistics.median(x["cpu_efficiency"] for x in rounds),
        "haproxy_cpu_us_per_req": statistics.median(x["balanced"]["haproxy_cpu_us_per_req"] for x in rounds),
        # where the CPU per request goes, medians over rounds: the balancer's cost itemised
        "lb_cpu_us_per_req": {case: {key: statistics.median(x[case][key] for x in rounds)
                                     for key in rounds[0][case] if key.endswith("_cpu_us_per_req")}
                              for case in ("direct", "balanced")},
        "lb_others_cores_max": max(max(x["direct"]["others_cores"], x["balanced"]["others_cores"])
                                   for x in rounds),
        "lb_throughput_rps": statistics.median(x["balanced"]["rps"] for x in rounds),
        "direct_throughput_rps": statistics.median(x["direct"]["rps"] for x in rounds),
        "backend_share_min": min(x["backend_share_min"] for x in rounds),
        "lb_clients": m,
        "lb_duration_s": s.lb_duration_s,
        "lb_rounds": rounds,
    }
