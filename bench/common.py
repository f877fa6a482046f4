"""What every bench part shares: sizes, targets, progress, worker processes, CPU clocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from osmi_ee.osmi.procs import _die_with_parent as die_with_parent  # noqa: F401  (PR_SET_PDEATHSIG)

MODEL = "small_lstm"
GEN_AXES = {  # 2 x 5 x 10 x 10 x 10 = 10,000 experiments
    "model": ["small_lstm", "medium_cnn"],
    "servers": [1, 2, 3, 4, 5],
    "clients": list(range(1, 11)),
    "batch": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
    "repeat": list(range(1, 11)),
}
QUICK_GEN_AXES = {"model": ["small_lstm", "medium_cnn"], "servers": [1, 2], "clients": [1, 2, 3, 4, 5],
                  "batch": [1, 2, 4, 8, 16], "repeat": [1, 2]}  # 200 experiments


@dataclass(frozen=True)
class Sizes:
    """How much of everything one bench run does."""

    client_requests: int = 2000
    raw_requests: int = 2000
    anchor_requests: int = 2000
    warmup: int = 50
    cpu_rounds: int = 5  # client and raw alternate; the least disturbed run counts
    anchor_runs: int = 2
    startup_runs: int = 5
    lb_clients: int = 4  # closed-loop client processes (direct: half per server)
    lb_duration_s: float = 3.0
    lb_rounds: int = 5  # direct and balanced alternate; the median round counts
    gen_axes: dict[str, list[Any]] | None = None
    synth_runs: int | None = None  # None: the full product of the synthetic axes
    synth_records: int = 16_384
    load_clients: int = 64  # the `load` sweep: clients for load_s seconds
    load_s: float = 60.0
    repro_duration_s: float = 6.0
    search_max: int = 64  # the `search` part: clients 1..search_max, searched and swept on the doubling ladder
    search_duration_s: float = 3.0
    stack_rounds: int = 2  # the `stack` part: in-process and served alternate; per concurrency the median counts
    stack_duration_s: float = 3.0  # the shortest window; longer where stack_min_calls calls take longer
    stack_min_calls: int = 15  # a window of 5 medium_cnn calls moved the ratio by +-6% (one call more or less)
    stack_concurrency: tuple[int, ...] = (1, 2, 4)  # in-process callers and closed-loop clients alike


FULL = Sizes(gen_axes=GEN_AXES)
QUICK = Sizes(client_requests=200, raw_requests=200, anchor_requests=50, warmup=5, cpu_rounds=1, anchor_runs=1,
              startup_runs=1, lb_clients=2, lb_duration_s=1.0, lb_rounds=1,
              gen_axes=QUICK_GEN_AXES, synth_runs=8, synth_records=2048,
              load_clients=8, load_s=5.0, repro_duration_s=2.0, search_max=8, search_duration_s=2.0,
              stack_rounds=1, stack_duration_s=1.0, stack_min_calls=3, stack_concurrency=(1, 2))

PARTS = ("analyze", "generate", "startup", "cpu", "lb", "stack", "load", "repro", "calibrate", "search")
PAYLOAD_BATCH = 64  # the second client-CPU comparison: an OSMI-sized request


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_worker(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """One bench worker in a fresh process (`python -m osmi_ee.bench --worker ...`):
    nothing of this process's state leaks in. Returns its JSON line."""
    out = subprocess.run([sys.executable, "-m", "osmi_ee.bench", *argv], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout_s,
                         preexec_fn=die_with_parent)
    if out.returncode != 0:
        raise RuntimeError(f"bench worker {argv[:2]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    total = sum(values)
    idle = values[3] + values[4]  # idle + iowait
    return (total - idle) / os.sysconf("SC_CLK_TCK"), total / os.sysconf("SC_CLK_TCK")
