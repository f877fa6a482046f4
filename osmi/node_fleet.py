"""A multi-node experiment seen from the runner: one srun step per node for its shards,
one per node for its clients.

    osmi.placement (which node runs what) + osmi.job_nodes (names, addresses)
      -> srun -w <node> python -m osmi_ee.osmi.node_shards   (the node's shards, its GPUs, its address)
      -> results/nodes/<node>.json                           (ports, pids, GPUs; or why not)
      -> Shard entries in the runner's Fleet, dialled at the node's address
      -> srun -w <node> python -m osmi_ee.osmi.node_clients  (the node's clients, ids fixed here)

The runner runs on node 0 with the balancer, so a probe from here is a probe
from the balancer's node: a shard that is up on its node but unreachable from
here fails set-up with the node and address in the reason. Every step is a
child of the runner's ProcessGroup. At the end the runner writes
results/nodes/stop and each launcher stops its shards and exits; any step left
gets SIGTERM (srun then cancels it), and `scancel` makes Slurm end every step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osmi_ee.ee.paths import ExperimentPaths, write_atomic
from osmi_ee.osmi.fleet import Fleet, SetupError, Shard
from osmi_ee.osmi.job_nodes import Node, NodeError, job_nodes
from osmi_ee.osmi.placement import Placement, placement_of
from osmi_ee.osmi.procs import Child, ProcessGroup
from osmi_ee.osmi.streams import ClientProcess, plan_processes

REACH_TIMEOUT_S = 10.0  # one Predict from the balancer's node to a shard that is already up on its own


@dataclass(frozen=True)
class Layout:
    placement: Placement
    nodes: list[Node]  # index = placement's node index; nodes[0] runs this runner and the balancer

    @property
    def here(self) -> Node:
        return self.nodes[self.placement.balancer_node]

    def node_of_client(self, k: int) -> Node:
        return self.nodes[self.placement.client_nodes[k]]

    def as_dict(self) -> dict[str, Any]:
        return {**self.placement.as_dict(), "node_names": [n.name for n in self.nodes],
                "node_addresses": [n.address for n in self.nodes]}


def layout(grid: Any, params: dict[str, Any]) -> Layout | None:
    """The job's layout when it spans several nodes; None for one node (all on loopback, as ever)."""
    placement = placement_of(grid, params)
    if not placement.multi_node:
        return None
    if not os.environ.get("SLURM_JOB_ID") or not shutil.which("srun"):
        raise SetupError(f"job.nodes is {placement.nodes}: a multi-node experiment runs inside a Slurm job "
                         "(make submit), not with bash")
    try:
        nodes = job_nodes()
    except NodeError as exc:
        raise SetupError(f"cannot list the job's nodes: {exc}") from None
    if len(nodes) != placement.nodes:
        raise SetupError(f"the placement needs {placement.nodes} nodes, the job has {len(nodes)}: "
                         f"{', '.join(n.name for n in nodes)}")
    return Layout(placement, nodes)


def _step(node: Node, tasks: int = 1) -> list[str]:
    # --overlap/--overcommit: share the node with the batch step and the other steps;
    # --kill-on-bad-exit=0: one task's failure is ours to report, not Slurm's to act on.
    return ["srun", "--overlap", "--overcommit", "--nodes=1", f"--ntasks={tasks}", f"--nodelist={node.name}",
            "--kill-on-bad-exit=0"]


def _step_env() -> dict[str, str]:
    """The runner's environment without its node's GPU list: a step sees its own node's."""
    return {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}


def start_shards(fleet: Fleet, group: ProcessGroup, lay: Layout, *, paths: ExperimentPaths, config: Path,
                 server_command: list[str], model: str, timeout_s: float) -> None:
    """Each node's shards through its launcher; returns once every shard answers a
    Predict from here (the balancer's node)."""
    steps: dict[int, Child] = {}
    for index, node in enumerate(lay.nodes):
        shards = lay.placement.shards_on(index)
        if not shards:
            continue
        paths.node_report(node.name).unlink(missing_ok=True)
        argv = [*_step(node), sys.executable, "-m", "osmi_ee.osmi.node_shards", f"--config={config}",
                f"--first={shards[0]}", f"--count={len(shards)}", f"--host={node.address}",
                f"--report={paths.node_report(node.name)}", "--", *server_command]
        steps[index] = group.start(f"shards on node {node.name}", argv, paths.node_log(node.name, "shards"),
                                   _step_env())
    reports = _wait_reports(steps, lay, paths, timeout_s)
    for index, report in sorted(reports.items()):
        node = lay.nodes[index]
        for entry in report["shards"]:
            fleet.shards.append(Shard(entry["name"], entry["port"], entry["rest_port"], entry["gpu"], steps[index],
                                      host=node.address, node=node.name, pid=entry["pid"]))
        fleet.kind, fleet.argv, fleet.version = report["kind"], report["argv"], report.get("version")
    fleet.given_command = list(server_command)
    fleet.shards.sort(key=lambda s: int(s.name[1:]))
    _check_reachable(fleet, lay, model)


def _wait_reports(steps: dict[int, Child], lay: Layout, paths: ExperimentPaths,
                  timeout_s: float) -> dict[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s + 30  # + the step's own start
    reports: dict[int, dict[str, Any]] = {}
    while len(reports) < len(steps):
        for index, step in steps.items():
            node = lay.nodes[index]
            if index in reports:
                continue
            try:
                report = json.loads(paths.node_report(node.name).read_text())
            except (OSError, ValueError):
                report = None
            if report is not None:
                if report.get("error"):
                    raise SetupError(f"node {node.name} ({node.address}): {report['error']}")
                reports[index] = report
            elif not step.alive():
                raise SetupError(f"the shards of node {node.name} ({node.address}) did not start: "
                                 + step.describe_exit())
        if len(reports) < len(steps):
            if time.monotonic() > deadline:
                late = [lay.nodes[i].name for i in steps if i not in reports]
                raise SetupError(f"the shards of node(s) {', '.join(late)} were not up after {timeout_s:.0f} s")
            time.sleep(0.1)
    return reports


def _check_reachable(fleet: Fleet, lay: Layout, model: str) -> None:
    """Up on its node is not enough: the balancer (on this node) must reach every shard."""
    for shard in fleet.shards:
        error = fleet.api.ready_error(f"{shard.host}:{shard.port}", model, REACH_TIMEOUT_S)
        if error is not None:
            raise SetupError(f"server {shard.name} on node {shard.node} answers there but not from the balancer's "
                             f"node {lay.here.name} at {shard.host}:{shard.port}: {error}")


def stop_shards(fleet: Fleet, paths: ExperimentPaths, grace_s: float) -> None:
    """Asks every node's launcher to stop its shards and waits up to `grace_s` for their
    steps to end; the runner's ProcessGroup.stop then ends whatever is left."""
    steps = list({id(s.child): s.child for s in fleet.shards if s.node is not None}.values())
    if not steps:
        return
    write_atomic(paths.nodes_stop, "stop\n")
    deadline = time.monotonic() + grace_s
    for step in steps:
        try:
            step.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return


def client_processes(lay: Layout) -> list[ClientProcess]:
    """The client processes: each client node's streams (the placement places streams, in
    contiguous blocks) split over its own processes, so every client node has at least one."""
    blocks = []
    for index in range(len(lay.nodes)):
        streams = lay.placement.clients_on(index)
        if streams:
            blocks.append((streams[0], len(streams)))
    return plan_processes(blocks)


def start_clients(group: ProcessGroup, lay: Layout, processes: list[ClientProcess], *, paths: ExperimentPaths,
                  config: Path, target: str, requests: int | None, duration_s: float | None) -> list[Child]:
    """Process k's step, for every k: one step per client node, starting that node's processes."""
    by_client: dict[int, Child] = {}
    for index, node in enumerate(lay.nodes):
        mine = [c for c in processes if lay.placement.client_nodes[c.first] == index]
        if not mine:
            continue
        argv = [*_step(node), sys.executable, "-m", "osmi_ee.osmi.node_clients", f"--config={config}",
                f"--target={target}", f"--clients={','.join(str(c.id) for c in mine)}",
                f"--streams={','.join(c.arg for c in mine)}"]
        if requests is not None:
            argv.append(f"--requests={requests}")
        if duration_s is not None:
            argv.append(f"--duration-s={duration_s}")
        step = group.start(f"clients on node {node.name}", argv, paths.node_log(node.name, "clients"), _step_env())
        by_client.update({c.id: step for c in mine})
    return [by_client[k] for k in sorted(by_client)]
