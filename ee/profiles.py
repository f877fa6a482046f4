"""Cluster profiles: how jobs run on one cluster (slurm/profiles/<name>.yaml).

A grid names its profile; the profile's `gpus` table decides which GPU types
the grid may sweep and what scheduler lines each gets. Generated experiment
configs carry the resolved profile inline, so a job never looks one up.

One schema for every profile, whether a file or given inline: each field is
typed, each number bounded, and each string that reaches a job script matches
its pattern in full (`fullmatch`: `$` would let a trailing newline through,
and a newline in a script is a new command). All problems are reported
together, each naming the key and the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from osmi_ee.ee.checks import Problems, Rule, fill, fill_dataclass, is_int, is_number
from osmi_ee.ee.yaml_io import read_yaml_file

# Every pattern is applied with fullmatch. Values pasted into "#SBATCH" lines:
# sbatch parses those itself, not a shell, so we allow only characters that
# need no quoting anywhere (no space, no brace, no newline).
SAFE_DIRECTIVE_RE = re.compile(r"[A-Za-z0-9_.,:=/@+-]*")
GRES_RE = re.compile(r"(?:[A-Za-z0-9_.,:=/@+-]|\{n\})*")  # {n}: the experiment's server count
MEM_RE = re.compile(r"[0-9]{1,9}[KMGT]?")  # Slurm's --mem: a size, unit suffix optional
EXTRA_SBATCH_RE = re.compile(r"--[a-z][a-z0-9-]*(?:=[A-Za-z0-9_.,:=/@+-]+)?")
PROFILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a file stem: no '/', no '.'
GPU_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODULE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]{0,127}")  # `module load` names, e.g. cuda/12.2
# One word of a launch command (shell-quoted in the script). No braces but the
# {models_dir} token: cloudmesh-ee re-expands any {a.b} it finds in pasted text.
WORD_RE = re.compile(r"(?:[A-Za-z0-9_.,:=/@+%~^-]|\{models_dir\})+")
MAX_DESCRIPTION = 500  # characters

# Caps: far above any real cluster, low enough that a typo or .inf is caught.
MAX_CPUS_PER_TASK = 1024
MAX_GPUS_PER_NODE = 64
MAX_PRICE_PER_GPU_HOUR = 10_000.0

# Flags osmi-ee writes itself: a second one in extra_sbatch would silently win or lose.
RESERVED_SBATCH = ("job-name", "output", "time", "nodes", "ntasks", "cpus-per-task", "mem",
                   "partition", "account", "constraint", "reservation", "gres", "chdir")


class ProfileError(ValueError):
    """A profile is invalid; `problems` lists every problem ("key: why (got value)")."""

    def __init__(self, source: Path | str, problems: list[str]):
        self.source = str(source)
        self.problems = problems
        super().__init__("\n".join(f"{self.source}: {p}" for p in problems))


class ProfileNameError(ProfileError):
    """The grid's `profile:` is no known profile name (problems are about that value)."""


# --------------------------------------------------------------------- schema


@dataclass(frozen=True)
class GpuType:
    gres: str = ""  # e.g. "gpu:a100:{n}"; {n} becomes the experiment's server count
    cpus_per_task: int = 2
    mem: str = "8G"
    partition: str = ""  # overrides the scheduler's partition for this type
    constraint: str = ""
    reservation: str = ""
    price_per_gpu_hour: float | None = None
    gpus_per_node: int | None = None  # cards on one node: caps experiment.servers (shards share a node)


@dataclass(frozen=True)
class Scheduler:
    partition: str = ""  # empty: the cluster's default partition
    account: str = ""  # empty: no --account line
    extra_sbatch: list[str] = field(default_factory=list)  # further flags, e.g. ["--exclusive"]
    modules: list[str] = field(default_factory=list)  # `module load` lines (Lmod clusters)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    scheduler: Scheduler = field(default_factory=Scheduler)
    gpus: dict[str, GpuType] = field(default_factory=dict)
    server_command: list[str] = field(default_factory=list)  # empty: decided on the node
    triton_command: list[str] = field(default_factory=list)  # serve.server triton; empty: the local tritonserver
    haproxy: list[str] = field(default_factory=lambda: ["haproxy"])

    def as_dict(self) -> dict[str, Any]:
        """The profile in its file format (generated configs carry it inline)."""
        return {"name": self.name, "description": self.description, "scheduler": asdict(self.scheduler),
                "gpus": {k: asdict(v) for k, v in self.gpus.items()},
                "server": {"command": self.server_command, "triton": self.triton_command},
                "haproxy": self.haproxy}


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and low <= v <= high


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _number_in(low: float, high: float) -> Callable[[Any], bool]:
    # Bounded on both sides, so nan (no comparison holds) and inf fail too.
    return lambda v: is_number(v) and low <= v <= high


def _description(v: Any) -> bool:  # not in any script, but one printable line all the same
    return isinstance(v, str) and len(v) <= MAX_DESCRIPTION and v.isprintable()


def _extra_sbatch(v: Any) -> bool:
    if not isinstance(v, str) or not EXTRA_SBATCH_RE.fullmatch(v):
        return False
    return v[2:].split("=", 1)[0] not in RESERVED_SBATCH


_DIRECTIVE = "letters, digits and _.,:=/@+- only"
_GPU_RULES: dict[str, Rule] = {
    "gres": (_matches(GRES_RE), "letters, digits, _.,:=/@+- and {n} (the server count) only"),
    "cpus_per_task": (_int_in(1, MAX_CPUS_PER_TASK), f"an integer from 1 to {MAX_CPUS_PER_TASK}"),
    "mem": (_matches(MEM_RE), 'a quoted Slurm memory size: digits and an optional K, M, G or T, e.g. "64G"'),
    "partition": (_matches(SAFE_DIRECTIVE_RE), _DIRECTIVE),
    "constraint": (_matches(SAFE_DIRECTIVE_RE), _DIRECTIVE),
    "reservation": (_matches(SAFE_DIRECTIVE_RE), _DIRECTIVE),
    "price_per_gpu_hour": (_optional(_number_in(0, MAX_PRICE_PER_GPU_HOUR)),
                           f"a number from 0 to {MAX_PRICE_PER_GPU_HOUR:g}, or null"),
    "gpus_per_node": (_optional(_int_in(1, MAX_GPUS_PER_NODE)), f"an integer from 1 to {MAX_GPUS_PER_NODE}, or null"),
}
_SCHEDULER_RULES: dict[str, Rule] = {
    "partition": (_matches(SAFE_DIRECTIVE_RE), _DIRECTIVE),
    "account": (_matches(SAFE_DIRECTIVE_RE), _DIRECTIVE),
}
_FLOATS = {"price_per_gpu_hour"}


def _list_of(problems: Problems, value: Any, key: str, check: Callable[[Any], bool],
             why: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.bad(key, value, f"must be a list of {why}")
        return []
    good = []
    for i, item in enumerate(value):
        if check(item):
            good.append(item)
        else:
            problems.bad(f"{key}[{i}]", item, why)
    return good


_DEFAULT_RE = re.compile(r"\$\{(\w+):-([^}]*)\}")


def expand_vars(value: str, where: str) -> str:
    """`${VAR}`, `$VAR` and `${VAR:-default}` from the environment of `make generate`."""
    value = _DEFAULT_RE.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), value)
    value = os.path.expandvars(value)
    if "$" in value:
        raise ValueError(f"{where}: {value!r} names an unset environment variable")
    return value


def _words(problems: Problems, value: Any, key: str) -> list[str]:
    """A launch command: a list of words (or one string split on spaces), ${VAR}s expanded."""
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        problems.bad(key, value, "must be a list of words")
        return []
    words = []
    for i, word in enumerate(value):
        where = f"{key}[{i}]"
        if isinstance(word, bool) or not isinstance(word, (str, int, float)):
            problems.bad(where, word, "must be a word (a string)")
            continue
        try:
            expanded = expand_vars(str(word), where)
        except ValueError:
            problems.bad(where, word, "names an unset environment variable")
            continue
        if not WORD_RE.fullmatch(expanded):
            problems.bad(where, expanded, "letters, digits, _.,:=/@+%~^- and the {models_dir} token only "
                                          "(after ${VAR} expansion)")
            continue
        words.append(expanded)
    return words


def _gpus(problems: Problems, value: Any) -> dict[str, GpuType]:
    if not isinstance(value, Mapping) or not value:
        problems.bad("gpus", value, "must map at least one GPU type to its settings")
        return {}
    gpus: dict[str, GpuType] = {}
    for gpu, settings in value.items():
        if not isinstance(gpu, str) or not GPU_NAME_RE.fullmatch(gpu):
            problems.bad("gpus", gpu, "a GPU type name: letters, digits, '.', '_' or '-', at most 64")
            continue
        prefix = f"gpus.{gpu}."
        settings = problems.mapping(settings, prefix[:-1])
        gpus[gpu] = fill_dataclass(problems, GpuType, settings, prefix, _GPU_RULES, _FLOATS)
    return gpus


def _scheduler(problems: Problems, value: Any) -> Scheduler:
    data = problems.mapping(value, "scheduler")
    problems.unknown(data, Scheduler.__dataclass_fields__, "scheduler.")
    values = fill(problems, data, "scheduler.", _SCHEDULER_RULES, _FLOATS)
    values["extra_sbatch"] = _list_of(
        problems, data.get("extra_sbatch"), "scheduler.extra_sbatch", _extra_sbatch,
        f"sbatch flags like --exclusive or --qos=high (letters, digits, _.,:=/@+-), "
        f"none of those osmi-ee sets ({', '.join(RESERVED_SBATCH)})")
    values["modules"] = _list_of(problems, data.get("modules"), "scheduler.modules",
                                 _matches(MODULE_RE), "module names like cuda/12.2 (letters, digits, _.+/-)")
    return Scheduler(**values)


def _profile_problems(data: Any, default_name: str) -> tuple[Profile | None, Problems]:
    problems = Problems()
    if not isinstance(data, Mapping):
        problems.bad("top level", data, "must be a mapping with at least `gpus`")
        return None, problems
    problems.unknown(data, ("name", "description", "scheduler", "gpus", "server", "haproxy"), "")
    name = data.get("name", default_name)
    if not _matches(PROFILE_NAME_RE)(name):
        problems.bad("name", name, "letters, digits, '_' or '-', at most 64")
    description = data.get("description", "")
    if not _description(description):
        problems.bad("description", description, f"one printable line of at most {MAX_DESCRIPTION} characters")
    scheduler = _scheduler(problems, data.get("scheduler"))
    gpus = _gpus(problems, data.get("gpus"))
    server = problems.mapping(data.get("server"), "server")
    problems.unknown(server, ("command", "triton"), "server.")
    server_command = _words(problems, server.get("command", []), "server.command")
    triton_command = _words(problems, server.get("triton", []), "server.triton")
    for key, command in (("server.command", server_command), ("server.triton", triton_command)):
        container = command[:1] and command[0] in ("apptainer", "singularity")
        if container and "--nv" not in command and any(g != "cpu" for g in gpus):
            # The old OSMI setup lost --nv and served on the CPU without noticing.
            problems.bad(key, command, "starts a container without --nv, so its GPU types would serve on the CPU")
    haproxy_raw = data.get("haproxy", ["haproxy"])
    haproxy = _words(problems, haproxy_raw, "haproxy")
    if not haproxy_raw:
        problems.bad("haproxy", haproxy_raw, "needs the command that starts HAProxy")
    profile = Profile(name=name if isinstance(name, str) else default_name,
                      description=description if isinstance(description, str) else "",
                      scheduler=scheduler, gpus=gpus, server_command=server_command,
                      triton_command=triton_command, haproxy=haproxy)
    return profile, problems


def parse_profile(data: Any, where: str, default_name: str = "inline") -> Profile:
    """Builds a Profile from a mapping; ProfileError (from `where`) lists every bad key and value."""
    profile, problems = _profile_problems(data, default_name)
    if problems or profile is None:
        raise ProfileError(where, list(problems))
    return profile


# --------------------------------------------------------------------- finding


def profiles_dir() -> Path:
    """Where named profiles live: $OSMI_EE_PROFILES, else the source tree's slurm/profiles."""
    env = os.environ.get("OSMI_EE_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "slurm" / "profiles"


def load_profile_file(path: Path | str) -> Profile:
    """A profile from an explicit file (e.g. given on the command line)."""
    path = Path(path)
    stem = path.stem if PROFILE_NAME_RE.fullmatch(path.stem) else "custom"
    return parse_profile(read_yaml_file(path, ProfileError) or {}, str(path), default_name=stem)


def _named_path(ref: Any, directory: Path) -> Path:
    """The file of profile name `ref`; ProfileError (about the name) when it is none."""
    if not isinstance(ref, str) or not PROFILE_NAME_RE.fullmatch(ref):
        # A name, never a path: a grid must not make us read files elsewhere.
        raise ProfileNameError(directory, [f"profile: a profile name from {directory} (letters, digits, "
                                           f"'_' or '-'; no path) or an inline mapping (got {ref!r})"])
    path = directory / f"{ref}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ProfileNameError(directory, [f"profile: unknown profile; known profiles: "
                                           f"{', '.join(known)} (got {ref!r})"])
    return path


def load_profile(ref: str | Mapping[str, Any], directory: Path | None = None) -> Profile:
    """A profile by name (a file in the profiles folder) or given inline as a mapping."""
    if isinstance(ref, Mapping):
        return parse_profile(ref, "inline profile")
    return load_profile_file(_named_path(ref, directory or profiles_dir()))


def resolve_profile(ref: Any, directory: Path | None = None,
                    profile_file: Path | str | None = None) -> Profile:
    """A grid's profile: `profile_file` when given, else `ref` (a name in `directory` or
    inline). ProfileError's problems are in the grid's terms: `profile.<key>` for an
    inline profile, `profile: <file>: <key>` for a file."""
    if profile_file is None and isinstance(ref, Mapping):
        profile, problems = _profile_problems(ref, "inline")
        if problems or profile is None:
            raise ProfileError("profile", [f"profile.{p}" for p in problems])
        return profile
    try:
        path = Path(profile_file) if profile_file is not None else _named_path(ref, directory or profiles_dir())
        return load_profile_file(path)
    except ProfileNameError:
        raise  # its problems are about the grid's value already
    except ProfileError as exc:
        raise ProfileError("profile", [f"profile: {exc.source}: {p}" for p in exc.problems]) from None


def placeholder_profile(gpu_axis: Any) -> Profile:
    """Stands in for a profile that failed, so the rest of a grid is still checked
    without a second, spurious problem for each GPU type it names."""
    values = gpu_axis if isinstance(gpu_axis, list) else [gpu_axis]
    names = [v for v in values if isinstance(v, str)] or ["cpu"]
    return Profile(name="invalid", gpus={n: GpuType() for n in names})
