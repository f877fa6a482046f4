"""Cluster profiles: how jobs run on one cluster (slurm/profiles/<name>.yaml).

A grid names its profile; the profile's `gpus` table decides which GPU types
the grid may sweep and what scheduler lines each gets. Generated experiment
configs carry the resolved profile inline, so a job never looks one up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Values pasted into "#SBATCH" lines: sbatch parses those itself, not a shell, so
# we allow only characters that need no quoting anywhere.
SAFE_DIRECTIVE_RE = re.compile(r"^[A-Za-z0-9_.,:=/@+{}-]*$")


@dataclass(frozen=True)
class GpuType:
    gres: str = ""  # e.g. "gpu:a100:{n}"; {n} becomes the experiment's server count
    cpus_per_task: int = 2
    mem: str = "8G"
    partition: str = ""  # overrides the scheduler's partition for this type
    constraint: str = ""
    reservation: str = ""
    price_per_gpu_hour: float | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    scheduler: dict[str, Any] = field(default_factory=dict)
    gpus: dict[str, GpuType] = field(default_factory=dict)
    server_command: list[str] = field(default_factory=list)  # empty: decided on the node
    haproxy: list[str] = field(default_factory=lambda: ["haproxy"])

    def as_dict(self) -> dict[str, Any]:
        """The profile in its file format (generated configs carry it inline)."""
        return {"name": self.name, "description": self.description, "scheduler": self.scheduler,
                "gpus": {k: asdict(v) for k, v in self.gpus.items()},
                "server": {"command": self.server_command}, "haproxy": self.haproxy}


def profiles_dir() -> Path:
    """Where named profiles live: $OSMI_EE_PROFILES, else the source tree's slurm/profiles."""
    env = os.environ.get("OSMI_EE_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "slurm" / "profiles"


_DEFAULT_RE = re.compile(r"\$\{(\w+):-([^}]*)\}")


def expand_vars(value: str, where: str) -> str:
    """`${VAR}`, `$VAR` and `${VAR:-default}` from the environment of `make generate`."""
    value = _DEFAULT_RE.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), value)
    value = os.path.expandvars(value)
    if "$" in value:
        raise ValueError(f"{where}: {value!r} names an unset environment variable")
    return value


def _words(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(w, (str, int, float)) for w in value):
        raise ValueError(f"{where}: must be a list of words (got {value!r})")
    return [expand_vars(str(w), where) for w in value]


def _check_directive(where: str, value: Any) -> str:
    if not isinstance(value, str) or not SAFE_DIRECTIVE_RE.match(value):
        raise ValueError(f"{where}: {value!r} may hold only letters, digits and _.,:=/@+{{}}-")
    return value


def parse_profile(data: Mapping[str, Any], where: str) -> Profile:
    """Builds a Profile from a mapping; ValueError names the bad key and value."""
    known = {"name", "description", "scheduler", "gpus", "server", "haproxy"}
    extra = set(data) - known
    if extra:
        raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; known keys: {sorted(known)}")
    gpus_raw = data.get("gpus") or {}
    if not isinstance(gpus_raw, Mapping) or not gpus_raw:
        raise ValueError(f"{where}: gpus must map at least one GPU type to its settings")
    gpus: dict[str, GpuType] = {}
    gpu_keys = set(GpuType.__dataclass_fields__)
    for gpu, settings in gpus_raw.items():
        settings = dict(settings or {})
        extra = set(settings) - gpu_keys
        if extra:
            raise ValueError(f"{where}: gpus.{gpu}: unknown key(s) {sorted(extra)}; known: {sorted(gpu_keys)}")
        for key in ("gres", "partition", "constraint", "reservation", "mem"):
            if key in settings:
                _check_directive(f"{where}: gpus.{gpu}.{key}", settings[key])
        gpus[str(gpu)] = GpuType(**settings)
    server = dict(data.get("server") or {})
    extra = set(server) - {"command"}
    if extra:
        raise ValueError(f"{where}: server: unknown key(s) {sorted(extra)}; known: ['command']")
    server_command = _words(server.get("command", []), f"{where}: server.command")
    container = server_command[:1] and server_command[0] in ("apptainer", "singularity")
    if container and "--nv" not in server_command and any(g != "cpu" for g in gpus):
        # The old OSMI setup lost --nv and served on the CPU without noticing.
        raise ValueError(f"{where}: server.command starts a container without --nv, "
                         "so its GPU types would serve on the CPU")
    scheduler = dict(data.get("scheduler") or {})
    for key in ("partition", "account"):
        if key in scheduler:
            _check_directive(f"{where}: scheduler.{key}", scheduler[key])
    return Profile(name=str(data.get("name", "")), description=str(data.get("description", "")),
                   scheduler=scheduler, gpus=gpus, server_command=server_command,
                   haproxy=_words(data.get("haproxy", ["haproxy"]), f"{where}: haproxy"))


def load_profile(ref: str | Mapping[str, Any], directory: Path | None = None) -> Profile:
    """A profile by name (a file in the profiles folder) or given inline as a mapping."""
    if isinstance(ref, Mapping):
        return parse_profile(ref, "profile")
    directory = directory or profiles_dir()
    path = directory / f"{ref}.yaml"
    if not isinstance(ref, str) or not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise KeyError(f"unknown profile; known profiles: {', '.join(known)}")
    data = yaml.safe_load(path.read_text()) or {}
    return parse_profile(data, str(path))
