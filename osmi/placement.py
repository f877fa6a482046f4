"""Where each part of one experiment runs over its job's nodes; pure.

    (servers, clients, nodes, job.shards_per_node, job.balancer_node, job.client_nodes,
     the GPU type's gpus_per_node) -> Placement

Node 0 is always the node of the batch step, where the runner runs, and the
balancer runs next to it (its stats are read there many times a second). Then:

- shards fill `shards_per_node` at a time (default: the GPU type's
  gpus_per_node, else all on one node), spread evenly over as few nodes as
  hold them, so every node asks for the same gres (Slurm's --gres is per node);
- `balancer_node: shared` puts the first shards on node 0; `own` starts them on node 1;
- `client_nodes: shared` spreads the clients over every node but a balancer's
  own; `own` puts them on the nodes that hold neither shards nor the balancer
  (iBench's layout: the requests cross the network).

Used by ee.config (is `nodes` enough?), ee.render (--nodes and the gres per
node) and osmi.run (which node starts what).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Any

NODE_ROLES = ("shared", "own")  # job.balancer_node and job.client_nodes


class PlacementError(ValueError):
    """The job has too few nodes (or a node too few GPUs) for the layout asked for."""


@dataclass(frozen=True)
class Placement:
    nodes: int  # nodes of the job
    shard_nodes: tuple[int, ...]  # node index of shard k
    client_nodes: tuple[int, ...]  # node index of client k
    balancer_node: int = 0  # the batch step's node, always

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def gpus_per_node(self) -> int:
        """GPUs to ask for on each node (gres `{n}`): the most shards on one node."""
        return max((self.shard_nodes.count(n) for n in range(self.nodes)), default=0)

    def shards_on(self, node: int) -> list[int]:
        return [k for k, n in enumerate(self.shard_nodes) if n == node]

    def clients_on(self, node: int) -> list[int]:
        return [k for k, n in enumerate(self.client_nodes) if n == node]

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "balancer_node": self.balancer_node, "shard_nodes": list(self.shard_nodes),
                "client_nodes": list(self.client_nodes), "gpus_per_node": self.gpus_per_node}


def shard_capacity(servers: int, asked: int | None, gpus_per_node: int | None) -> int:
    """How many shards one node holds at most: the grid's value, else the GPU type's
    cards per node, else all of them (one node)."""
    return asked or gpus_per_node or servers


def nodes_needed(servers: int, *, per_node: int, balancer_node: str = "shared", client_nodes: str = "shared") -> int:
    """The fewest nodes that hold this layout."""
    return ceil(servers / per_node) + (balancer_node == "own") + (client_nodes == "own")


def _spread(count: int, nodes: list[int]) -> tuple[int, ...]:
    """Item k -> node, in contiguous blocks whose sizes differ by at most one."""
    return tuple(nodes[k * len(nodes) // count] for k in range(count)) if nodes else ()


def place(servers: int, clients: int, nodes: int, *, shards_per_node: int | None = None,
          gpus_per_node: int | None = None, balancer_node: str = "shared",
          client_nodes: str = "shared") -> Placement:
    """The layout of one experiment; PlacementError when `nodes` cannot hold it."""
    if balancer_node not in NODE_ROLES or client_nodes not in NODE_ROLES:
        raise PlacementError(f"balancer_node and client_nodes are one of {', '.join(NODE_ROLES)}")
    if servers < 1 or clients < 1 or nodes < 1:
        raise PlacementError("servers, clients and nodes are at least 1")
    per_node = shard_capacity(servers, shards_per_node, gpus_per_node)
    if gpus_per_node and per_node > gpus_per_node:
        raise PlacementError(f"{per_node} shards per node, but the GPU type has {gpus_per_node} per node")
    needed = nodes_needed(servers, per_node=per_node, balancer_node=balancer_node, client_nodes=client_nodes)
    if needed > nodes:
        raise PlacementError(f"needs {needed} nodes, the job has {nodes}")
    first = 1 if balancer_node == "own" else 0
    shard_node_list = list(range(first, first + ceil(servers / per_node)))
    if client_nodes == "own":
        client_node_list = list(range(shard_node_list[-1] + 1, nodes))
    else:
        client_node_list = list(range(first, nodes))
    return Placement(nodes=nodes, shard_nodes=_spread(servers, shard_node_list),
                     client_nodes=_spread(clients, client_node_list))


def placement_of(grid: Any, params: dict[str, Any]) -> Placement:
    """The placement of one experiment: its grid's (ee.config.Grid) job and profile, its axis values."""
    job = grid.job
    return place(params["servers"], params["clients"], job.nodes, shards_per_node=job.shards_per_node,
                 gpus_per_node=grid.profile.gpus[params["gpu"]].gpus_per_node,
                 balancer_node=job.balancer_node, client_nodes=job.client_nodes)
