"""Grid -> experiments: the cartesian product of the axes, with stable ids.

The product itself is cloudmesh-ee's (`ExperimentExecutor.permutation_generator`).
We hand it typed YAML lists directly: its string form (`Parameter.expand`)
would turn numbers into strings and drop repeated values.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from osmi_ee.ee.config import AXES, Grid

_SLUG_PREFIX = {"servers": "s", "clients": "c", "batch": "b", "repeat": "r", "rate": "q", "batching": "sb_",
                "balancer": "lb_"}


@dataclass(frozen=True)
class Experiment:
    """One point of the grid: its axis values and everything it shares."""

    id: str
    params: dict[str, Any]
    grid: Grid

    def config(self) -> dict[str, Any]:
        """The resolved config.yaml content (same schema, scalar axes)."""
        return {
            "name": self.grid.name,
            "profile": self.grid.profile.as_dict(),
            "experiment": dict(self.params),
            **self.grid.settings(),
        }


def permutations(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of axis values; the first axis varies slowest."""
    from cloudmesh.ee.experimentexecutor import ExperimentExecutor

    return ExperimentExecutor.permutation_generator(axes)


def experiment_id(params: dict[str, Any], settings: dict[str, Any], *,
                  _settings_json: str | None = None) -> str:
    """Readable slug of the axis values plus a short hash of the whole config.

    The hash makes two sweeps of the same point with other settings distinct,
    and the same config always maps to the same directory (safe re-generate).
    `_settings_json` (expand's cache) is `settings` as json.dumps writes it here.
    """
    parts = [f"{_SLUG_PREFIX.get(axis, '')}{_slug_value(axis, params[axis])}" for axis in AXES
             if not (axis == "scenario" and params[axis] == "closed") and params.get(axis) is not None]
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", part) for part in parts)
    if _settings_json is None:
        _settings_json = json.dumps(settings, sort_keys=True)
    # = json.dumps([params, settings], sort_keys=True), with settings encoded once per sweep
    text = f"[{json.dumps(params, sort_keys=True)}, {_settings_json}]"
    digest = hashlib.sha1(text.encode()).hexdigest()[:6]
    return f"{slug}-{digest}"


def _slug_value(axis: str, value: Any) -> Any:
    """A batching setting appears by its name (its values are in the hash)."""
    return value["name"] if axis == "batching" else value


def expand(grid: Grid) -> list[Experiment]:
    settings = grid.settings()
    settings_json = json.dumps(settings, sort_keys=True)
    experiments: dict[str, Experiment] = {}
    for params in permutations(grid.axes):
        if params["scenario"] != "poisson":
            params["rate"] = None  # a target rate only shapes open-loop load
        if params.get("batching") is None:
            # Off is the default: left out, so grids without the axis keep their ids.
            params.pop("batching", None)
        if params.get("balancer") is None:  # HAProxy, the default: left out, so ids stay as they were
            params.pop("balancer", None)
        if params.get("server") is None:  # serve.server decides: left out, so ids stay as they were
            params.pop("server", None)
        eid = experiment_id(params, settings, _settings_json=settings_json)
        experiments.setdefault(eid, Experiment(id=eid, params=params, grid=grid))
    return list(experiments.values())
