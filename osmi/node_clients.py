"""`python -m osmi_ee.osmi.node_clients`: one node's clients in a multi-node experiment.

Run by the runner as an srun step on that node (osmi.node_fleet), with the
client process ids of this node and the request streams each carries (the
placement places streams; osmi.streams splits a node's over its processes). Starts each client exactly as a
one-node run does (osmi.client.client_argv), waits for all of them, and exits
with the worst exit code; SIGTERM (from srun: the runner's or `scancel`'s)
stops them.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from osmi_ee.ee.paths import ExperimentPaths
from osmi_ee.osmi.client import client_argv
from osmi_ee.osmi.procs import ProcessGroup


class _Stop(BaseException):
    pass


def _stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def client_ids(text: str) -> list[int]:
    ids = [int(k) for k in text.split(",") if k.strip()]
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"distinct client ids >= 0, comma-separated (got {text!r})")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osmi-node-clients",
        description="Run this node's clients of a multi-node experiment (run by osmi-run via srun).")
    parser.add_argument("--config", required=True, type=Path, help="the experiment's config.yaml")
    parser.add_argument("--target", required=True, help="host:port of the balancer")
    parser.add_argument("--clients", required=True, type=client_ids,
                        help="this node's client process ids, e.g. 4,5,6")
    parser.add_argument("--streams", default=None,
                        help="the streams of each of those processes, in the same order, e.g. 32-47,48-63,64-79 "
                             "(default: one stream per process, numbered as the process)")
    parser.add_argument("--requests", type=int, default=None, help="the runner's bound, as osmi-client's")
    parser.add_argument("--duration-s", type=float, default=None, help="the runner's bound, as osmi-client's")
    args = parser.parse_args(argv)
    streams = args.streams.split(",") if args.streams else [str(k) for k in args.clients]
    if len(streams) != len(args.clients):
        parser.error(f"--streams: one block per client process ({len(args.clients)}), got {args.streams!r}")
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    paths = ExperimentPaths(args.config.resolve().parent)
    group = ProcessGroup()
    try:
        for k, block in zip(args.clients, streams):
            group.start(f"client {k}", client_argv(args.config, args.target, client_id=k, requests=args.requests,
                                                   duration_s=args.duration_s, streams=block), paths.client_log(k))
        while any(child.alive() for child in group.children):
            time.sleep(0.1)
        codes = [child.process.returncode for child in group.children]
        return next((c if c > 0 else 128 - c for c in codes if c), 0)  # -N: killed by signal N
    except _Stop:
        return 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        group.stop(grace_s=5.0)


if __name__ == "__main__":
    sys.exit(main())
