"""The `stack` part: what the serving stack costs. Per model at one batch, the best
served throughput (osmi-client -> HAProxy -> 1 osmi-model-server shard, closed-loop
clients 1/2/4) against the best in-process throughput of the same SavedModel
(bench.inprocess: loaded as the server loads it, the same intra-op threads, 1/2/4
concurrent callers), on the same cores, interleaved round after round so that both
see the same background load. `stack_efficiency` = best served / best in-process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from osmi_ee.bench.balancer import clients_at_once
from osmi_ee.bench.clients import Clients
from osmi_ee.bench.common import Sizes, die_with_parent, machine_cpu_s, say
from osmi_ee.osmi.fleet import Fleet, write_server_configs
from osmi_ee.osmi.procs import Child, ProcessGroup

STACK_MODELS = ("small_lstm", "medium_cnn")
STACK_BATCH = 16
INTRA_OP_THREADS = 1  # the server's --tensorflow_intra_op_parallelism and the in-process worker's


class InProcess:
    """The long-lived in-process worker of one model (bench.inprocess), driven over its stdin."""

    def __init__(self, group: ProcessGroup, models_dir: Path, model: str, batch: int, log: Path) -> None:
        argv = [sys.executable, "-m", "osmi_ee.bench.inprocess", "--model-dir", str(models_dir / model),
                "--model", model, "--batch", str(batch), "--intra-op-threads", str(INTRA_OP_THREADS)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as err:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                       preexec_fn=die_with_parent)
        self.child = Child(f"in-process {model}", process, log)
        group.children.append(self.child)  # stopped with the bench's other processes, whatever happens
        first = process.stdout.readline().split()
        if not first or first[0] != "ready":
            process.wait(timeout=10)
            raise RuntimeError(self.child.describe_exit())
        self.call_s = float(first[1])  # one call, alone: sizes the windows

    def measure(self, callers: int, seconds: float) -> dict[str, Any]:
        process = self.child.process
        process.stdin.write(f"{callers} {seconds}\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(self.child.describe_exit())
        return json.loads(line)


def _best(rows: dict[int, list[dict[str, Any]]]) -> tuple[int, float]:
    """(concurrency, samples/s) of the concurrency whose median over rounds is highest."""
    medians = {c: statistics.median(x["samples_per_s"] for x in runs) for c, runs in rows.items()}
    best = max(medians, key=medians.get)
    return best, medians[best]


def stack_model(clients: Clients, group: ProcessGroup, models_dir: Path, model: str, s: Sizes) -> dict[str, Any]:
    """Served and in-process throughput of `model` at STACK_BATCH, interleaved for s.stack_rounds."""
    fleet = Fleet(group)
    model_config, monitoring = clients.work / f"stack-{model}.config", clients.work / f"stack-{model}.monitoring"
    write_server_configs(model, models_dir, model_config, monitoring)
    fleet.start_shards(1, model=model, server="osmi", given_command=[], model_config=model_config,
                       monitoring_config=monitoring, log=lambda k: clients.logs / f"stack-{model}-server-{k}.log",
                       intra_op_threads=INTRA_OP_THREADS, timeout_s=300)
    balancer = fleet.start_balancer(["haproxy"], config=clients.work / f"stack-{model}-haproxy.cfg",
                                    log=clients.logs / f"stack-{model}-haproxy.log", request_timeout_s=60)
    inproc = InProcess(group, models_dir, model, STACK_BATCH, clients.logs / f"stack-{model}-inprocess.log")
    watch = {"server": fleet.shards[0].child.process.pid, "haproxy": balancer.child.process.pid}
    # Windows long enough for stack_min_calls calls of one caller (medium_cnn's take seconds here).
    window_s = max(s.stack_duration_s, s.stack_min_calls * inproc.call_s)
    warmup = max(1, min(5, int(1.0 / inproc.call_s)))  # client warm-up requests: about a second's worth
    served: dict[int, list[dict[str, Any]]] = {c: [] for c in s.stack_concurrency}
    local: dict[int, list[dict[str, Any]]] = {c: [] for c in s.stack_concurrency}
    try:
        for r in range(s.stack_rounds):
            for c in s.stack_concurrency:
                busy0 = machine_cpu_s()[0]
                local[c].append(inproc.measure(c, window_s))
                row = local[c][-1]  # other users' cores meanwhile: the machine's busy CPU less the worker's
                row["others_cores"] = max(0.0, (machine_cpu_s()[0] - busy0) / row["wall_s"] - row["cpu_cores"])
                result, _ = clients_at_once(clients, [f"127.0.0.1:{balancer.port}"] * c, f"stack-{model}-{c}-{r}",
                                            s, watch, duration_s=window_s, model=model, batch=STACK_BATCH,
                                            warmup=warmup)
                result["samples_per_s"] = result["rps"] * STACK_BATCH
                served[c].append(result)
                say(f"stack {model} b{STACK_BATCH} round {r + 1}/{s.stack_rounds}, {c} at once: in-process "
                    f"{row['samples_per_s']:.0f} samples/s ({row['cpu_cores']:.2f} cores; other users' load "
                    f"{row['others_cores']:.2f}), served {result['samples_per_s']:.0f} "
                    f"(server {result['server_cpu_us_per_req']:.0f} us/req, HAProxy "
                    f"{result['haproxy_cpu_us_per_req']:.0f}, clients {result['clients_cpu_us_per_req']:.0f}; "
                    f"other users' load {result['others_cores']:.2f} cores)")
    finally:
        group.stop([fleet.shards[0].child, balancer.child, inproc.child], grace_s=10)
    c_served, best_served = _best(served)
    c_local, best_local = _best(local)
    per_req = {key: statistics.median(x[key] for x in served[c_served])
               for key in served[c_served][0] if key.endswith("_cpu_us_per_req")}
    local_cpu = statistics.median(x["cpu_cores"] / x["calls_per_s"] * 1e6 for runs in local.values() for x in runs)
    served_cpu = statistics.median(x["ours_cpu_us_per_req"] for runs in served.values() for x in runs)
    return {
        "stack_efficiency": best_served / best_local,
        # What the stack costs when the cores are all ours: CPU per in-process call / our CPU per
        # served request (server, HAProxy, clients), medians over every run; immune to how the
        # scheduler splits a shared box between our processes and other users'.
        "stack_efficiency_cpu": local_cpu / served_cpu,
        "served_samples_per_s": best_served, "served_best_concurrency": c_served,
        "inprocess_samples_per_s": best_local, "inprocess_best_concurrency": c_local,
        # where a served request's CPU goes at the best concurrency, against one in-process call's
        "served_cpu_us_per_req": per_req,
        "inprocess_cpu_us_per_call": local_cpu,
        "served_ours_cpu_us_per_req": served_cpu,
        "served": {str(c): [x["samples_per_s"] for x in runs] for c, runs in served.items()},
        "inprocess": {str(c): [x["samples_per_s"] for x in runs] for c, runs in local.items()},
        "window_s": window_s,
        "others_cores_max": max(x["others_cores"] for rows in (served, local) for runs in rows.values() for x in runs),
    }


def bench_stack(clients: Clients, group: ProcessGroup, models_dir: Path, s: Sizes) -> dict[str, Any]:
    started = time.perf_counter()
    per_model = {model: stack_model(clients, group, models_dir, model, s) for model in STACK_MODELS}
    for model, m in per_model.items():
        say(f"stack {model} b{STACK_BATCH}: served {m['served_samples_per_s']:.0f} samples/s "
            f"(x{m['served_best_concurrency']}) / in-process {m['inprocess_samples_per_s']:.0f} "
            f"(x{m['inprocess_best_concurrency']}) = {m['stack_efficiency']:.2f}; CPU per call in-process / "
            f"per served request {m['stack_efficiency_cpu']:.2f}; other users' load up to "
            f"{m['others_cores_max']:.2f} cores")
    return {"stack_efficiency": {model: m["stack_efficiency"] for model, m in per_model.items()},
            "stack_efficiency_cpu": {model: m["stack_efficiency_cpu"] for model, m in per_model.items()},
            "stack": per_model, "stack_batch": STACK_BATCH, "stack_intra_op_threads": INTRA_OP_THREADS,
            "stack_concurrency": list(s.stack_concurrency), "stack_rounds": s.stack_rounds,
            "stack_wall_s": time.perf_counter() - started}
