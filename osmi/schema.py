"""Contracts between the stages, in one place: what a client records, what a job's
summary holds, which load scenarios exist, how big one message may be.

No gRPC or TensorFlow import: the job, the client, the analysis and a login node
without TensorFlow all read these.
"""

from __future__ import annotations

# ---- per-request records (results/requests-client<k>.parquet), one row per request
WARMUP, MEASURED = 0, 1  # the `phase` column: only MEASURED requests are ever counted
# `client` is the client process, `stream` the request stream it carried the request for (osmi.streams)
RECORD_COLUMNS: tuple[str, ...] = ("client", "seq", "phase", "start_ns", "latency_ns", "code", "delay_ns",
                                   "stream")
BAD_RESPONSE = 100  # `code` for "answered OK but with the wrong tensor" (gRPC codes are 0-16)

# ---- results/summary.json
SUMMARY_VERSION = 1
SUMMARY_SCHEMA = f"osmi-ee/summary/{SUMMARY_VERSION}"

# ---- <sweep>/search.json (`osmi-ee search`: every step per configuration, and its peak)
SEARCH_SCHEMA = "osmi-ee/search/1"

# ---- load
SCENARIOS: tuple[str, ...] = ("closed", "poisson", "offline")
BALANCERS: tuple[str, ...] = ("haproxy", "none")  # the `balancer` axis; none: clients round-robin over the shards

# ---- message limits
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's ceiling, on both ends; large_tcnn batches exceed the 4 MiB default
SERVER_MAX_BATCH = 1024  # osmi-model-server's default --max_batch: twice the largest batch we ship
