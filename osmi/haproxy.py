"""HAProxy in front of the model-server shards, balancing gRPC per request.

`mode http` with `proto h2` on the bind and on every server line makes HAProxy
terminate each client's HTTP/2 connection and pick a backend per stream, i.e.
per gRPC call. (The old OSMI setup used `mode tcp`, which pins each client
connection to one server, so extra GPUs idled.)
"""

from __future__ import annotations

import csv
import io
import time
import urllib.request
from dataclasses import dataclass


GRPC_HEALTH_URI = "/grpc.health.v1.Health/Check"  # TF-Serving's API servers


@dataclass(frozen=True)
class Backend:
    name: str  # s0, s1, ... (server k serves GPU k)
    host: str
    port: int


def render_config(frontend_port: int, stats_port: int, backends: list[Backend], *,
                  timeout_s: float, host: str = "127.0.0.1", threads: int = 1,
                  health_uri: str = GRPC_HEALTH_URI) -> str:
    """haproxy.cfg for one experiment: one frontend, one backend pool, a stats page.
    `health_uri`: the gRPC method the health check calls (the server kind's: Triton has
    no grpc.health.v1, so it is checked by its own ServerReady)."""
    # `timeout server` must outlast the slowest inference, or HAProxy answers 504,
    # which a gRPC client sees as UNAVAILABLE; give it the request deadline + margin.
    server_timeout = int(timeout_s * 1000) + 5000
    lines = [
        "global",
        "    maxconn 4096",
        # Bind exclusively: with SO_REUSEPORT (HAProxy's default) a second listener on
        # the same port would silently take part of the clients' load.
        "    noreuseport",
        # One thread by default (serve.balancer_threads): on a small machine a balancer
        # thread per core competes with the shards and clients (in one trial, 4 launches
        # of one point on 2 cores spread 17% with HAProxy's default, 7% with one thread).
        f"    nbthread {threads}",
        # Tensors are big messages (medium_cnn b16: 1.2 MB in, 0.5 MB out). With HAProxy's
        # 16 KB buffers and 64 KB h2 stream window, each one is copied in 16 KB slices and
        # stalls for window updates: a 1.2 MB request cost HAProxy 15 ms of CPU and 43 ms
        # of wall; with these, 4 ms and 13 ms (A/B, same server; batch-16 small_lstm
        # unchanged). Buffers are taken per active stream, so memory follows the load.
        "    tune.bufsize 262144",
        "    tune.h2.initial-window-size 1048576",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        f"    timeout client {server_timeout}ms",
        f"    timeout server {server_timeout}ms",
        "    retries 3",
        # Retry a refused connection on another server instead of failing the call.
        "    option redispatch 1",
        "frontend grpc_in",
        f"    bind {host}:{frontend_port} proto h2",
        "    default_backend shards",
        "backend shards",
        "    balance roundrobin",
        # A gRPC call over h2 to every shard every 500 ms, answered within 2 s (any gRPC
        # reply is HTTP 200, whatever its grpc-status, so the empty body is fine): a
        # hung (e.g. SIGSTOPped) shard still accepts TCP connections, so only an
        # application-level check marks it DOWN and takes it out of the rotation.
        "    option httpchk",
        # (HTTP/1.1 with a host header: HAProxy's h2 check mux turns it into :authority;
        # without one the shard refuses the stream.)
        f"    http-check send meth POST uri {health_uri} ver HTTP/1.1 "
        "hdr host localhost hdr content-type application/grpc hdr te trailers",
        "    http-check expect status 200",
        "    timeout check 2s",
    ]
    for b in backends:
        lines.append(f"    server {b.name} {b.host}:{b.port} proto h2 check check-proto h2 "
                     "inter 500ms rise 1 fall 2")
    lines += [
        "listen stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    mode http",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 0",
    ]
    return "\n".join(lines) + "\n"


def read_stats(stats_port: int, host: str = "127.0.0.1") -> dict[str, dict[str, str]]:
    """Per-server rows of HAProxy's stats CSV, keyed by server name."""
    with urllib.request.urlopen(f"http://{host}:{stats_port}/stats;csv", timeout=5) as response:
        text = response.read().decode()
    reader = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {row["svname"]: row for row in reader if row.get("pxname") == "shards"
            and row["svname"] not in ("FRONTEND", "BACKEND")}


def request_counts(stats_port: int, host: str = "127.0.0.1") -> dict[str, int]:
    """Calls forwarded to each server so far (`lbtot`: chosen by the balancer)."""
    return {name: int(row.get("lbtot") or 0) for name, row in read_stats(stats_port, host).items()}


def down_transitions(stats_port: int, host: str = "127.0.0.1") -> dict[str, int]:
    """Times each server went from UP to DOWN (`chkdown`) so far."""
    return {name: int(row.get("chkdown") or 0) for name, row in read_stats(stats_port, host).items()}


def wait_all_up(stats_port: int, names: list[str], timeout_s: float, alive=lambda: True) -> None:
    """Blocks until HAProxy reports every backend UP; TimeoutError names the ones that are not."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, str] = {}
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("haproxy exited while waiting for its backends")
        try:
            status = {n: r.get("status", "") for n, r in read_stats(stats_port).items()}
            if all(status.get(n, "").startswith("UP") for n in names):
                return
        except OSError:
            pass  # stats listener not up yet
        time.sleep(0.1)
    raise TimeoutError(f"HAProxy backends not UP after {timeout_s:.0f} s: {status}")
