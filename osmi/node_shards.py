"""`python -m osmi_ee.osmi.node_shards`: one node's shards in a multi-node experiment.

Run by the runner as an srun step on that node (osmi.node_fleet). It starts the
node's share of the shards exactly as a one-node run starts all of them
(ExperimentRun.start_shards: free ports on this node, one GPU each from this
node's CUDA_VISIBLE_DEVICES, bound to the node's address, ready only once a
Predict succeeds, no other listener on their ports), writes what it started to
results/nodes/<node>.json (the filesystem is shared), and keeps them until
the runner writes results/nodes/stop (or SIGTERM: `scancel`). If a shard exits,
it records why and exits 1, so the runner sees the step end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from osmi_ee.ee.paths import write_json
from osmi_ee.osmi.fleet import NodeShare, SetupError
from osmi_ee.osmi.job_nodes import this_node

# Test-only: "<node>=<address>[,...]" makes that node's shards bind another address than the
# one the runner dials, e.g. 127.0.0.1: a shard up on its node that the balancer cannot reach.
BIND_OVERRIDE_ENV = "OSMI_TEST_NODE_BIND"


class _Stop(BaseException):
    """SIGTERM: leave whatever we are doing and stop the shards (not an Exception)."""


def _stop(signum: int, _frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def bind_host(node: str, address: str, override: str | None) -> str:
    """The address this node's shards bind: its own, unless the override ("n2=127.0.0.1,...") names it."""
    for item in (override or "").split(","):
        name, _, host = item.partition("=")
        if name.strip() == node and host.strip():
            return host.strip()
    return address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="osmi-node-shards",
        description="Start this node's model-server shards of a multi-node experiment (run by osmi-run via srun).")
    parser.add_argument("--config", required=True, type=Path, help="the experiment's config.yaml")
    parser.add_argument("--first", required=True, type=int, help="number of this node's first shard (s<first>)")
    parser.add_argument("--count", required=True, type=int, help="how many shards this node runs")
    parser.add_argument("--host", required=True, help="this node's address: the shards bind it")
    parser.add_argument("--report", required=True, type=Path, help="where to write what was started (JSON)")
    parser.add_argument("server_command", nargs="*", help="after `--`: how to start a shard (as osmi-run's)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    from osmi_ee.osmi.run import ExperimentRun  # after the handlers: a cancel during imports still stops

    node = this_node()
    report: dict[str, Any] = {"node": node, "address": args.host, "shards": [], "error": None,
                              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    run = ExperimentRun(args.config, args.server_command)
    try:
        host = bind_host(node, args.host, os.environ.get(BIND_OVERRIDE_ENV))
        report["bind"] = host
        run.start_shards(NodeShare(args.first, args.count, host))
        report.update(shards=run.fleet.manifest(), kind=run.fleet.kind, argv=run.fleet.argv,
                      version=run.fleet.version)
        for shard in report["shards"]:
            shard["node"], shard["address"] = node, args.host
        write_json(args.report, report)
        print(f"node {node}: shards {[s['name'] for s in report['shards']]} up on {host}", flush=True)
        # Until the runner says stop (a file: srun would answer a signal by killing the step
        # after KillWait, the shards' graceful exit unfinished and this log cut off).
        while not run.fleet.exited_shards():
            if run.paths.nodes_stop.exists():
                print(f"node {node}: the runner asked to stop; stopping the shards", flush=True)
                return 0
            time.sleep(0.2)
        write_json(args.report, {**report, "exited": run.fleet.exited_shards()})
        print("\n".join(run.fleet.exited_shards()), file=sys.stderr, flush=True)
        return 1
    except SetupError as exc:
        write_json(args.report, {**report, "error": str(exc)})
        print(exc, file=sys.stderr, flush=True)
        return 1
    except _Stop as stop:
        print(f"node {node}: {stop}; stopping the shards", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time
        run.group.stop(grace_s=5.0)


if __name__ == "__main__":
    sys.exit(main())
