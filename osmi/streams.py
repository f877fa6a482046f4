"""How an experiment's request streams are carried by client processes; pure.

`clients` is the number of concurrent request streams the user asks for (each
keeps `measure.streams` requests in flight in a closed loop). Client processes
are a placement detail: one process multiplexes many streams on one gRPC channel
(futures, completions batch up inside the process, which is where grpcio's cost
per request drops), so the tool picks how many processes carry them:

    ceil(streams / STREAMS_PER_PROCESS), at most MAX_PROCESSES_PER_NODE per node,
    at least one per client node

and gives each a contiguous block of stream ids (block sizes differ by at most
one). Process k writes results/requests-client<k>.parquet and client-<k>.json;
every record keeps its stream id (schema.RECORD_COLUMNS: `stream`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import ceil

# One process carries up to this many streams: grpcio's CPU per checked request
# flattens out at 4-16 futures in flight (measured: README, "Client processes"),
# and a single process stays well under one core at the rates 2 cores can serve.
STREAMS_PER_PROCESS = 16
MAX_PROCESSES_PER_NODE = 64  # more streams than 16 x this: each process carries more


@dataclass(frozen=True)
class ClientProcess:
    """Client process `id`, carrying streams first .. first + count - 1."""

    id: int
    first: int
    count: int

    @property
    def streams(self) -> range:
        return range(self.first, self.first + self.count)

    @property
    def arg(self) -> str:
        """Its streams as osmi-client's --streams takes them: `a-b` (or `a`)."""
        last = self.first + self.count - 1
        return str(self.first) if last == self.first else f"{self.first}-{last}"


def streams_per_process() -> int:
    """STREAMS_PER_PROCESS; tests that need one process per stream (to stop one client
    process) set OSMI_EE_TEST_STREAMS_PER_PROCESS, which the runner's children inherit."""
    return int(os.environ.get("OSMI_EE_TEST_STREAMS_PER_PROCESS") or STREAMS_PER_PROCESS)


def process_count(streams: int, per_process: int | None = None, cap: int = MAX_PROCESSES_PER_NODE) -> int:
    """Processes that carry `streams` streams on one node."""
    return max(1, min(ceil(streams / (per_process or streams_per_process())), cap, streams))


def split(first: int, count: int, parts: int) -> list[tuple[int, int]]:
    """[first, first + count) in `parts` contiguous blocks (first, size), sizes differing by at most one."""
    base, extra = divmod(count, parts)
    blocks, at = [], first
    for j in range(parts):
        size = base + (j < extra)
        blocks.append((at, size))
        at += size
    return blocks


def plan_processes(stream_blocks: list[tuple[int, int]]) -> list[ClientProcess]:
    """The processes of an experiment, given each client node's contiguous block of
    stream ids (first, count) in node order (one node: [(0, clients)]); ids 0..P-1."""
    processes: list[ClientProcess] = []
    for first, count in stream_blocks:
        if count < 1:
            continue
        for start, size in split(first, count, process_count(count)):
            processes.append(ClientProcess(len(processes), start, size))
    return processes


def parse_streams(text: str) -> range:
    """`a-b` or `a` (osmi-client --streams) -> the stream ids; ValueError when malformed."""
    first, _, last = text.partition("-")
    a, b = int(first), int(last or first)
    if a < 0 or b < a:
        raise ValueError(f"streams {text!r}: `a-b` with 0 <= a <= b, or one id")
    return range(a, b + 1)
