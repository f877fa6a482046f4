"""The one schema of a grid file, validated once, with every problem reported.

A grid file is YAML. `experiment:` holds the axes (each a list; the sweep is
their cartesian product); the other sections hold settings shared by every
experiment. Each problem names the file, the key path and the bad value, and
all problems are reported together, before anything is written.

The resolved per-experiment `config.yaml` uses the same sections with scalar
axis values, and is read back through `load_experiment_config` with the same
checks, so the job runs exactly what was validated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from osmi_ee.ee.checks import Problems, fill_dataclass, is_int, is_number
from osmi_ee.ee.profiles import Profile, ProfileError, expand_vars, placeholder_profile, resolve_profile
from osmi_ee.ee.yaml_io import load_yaml, read_yaml_file
from osmi_ee.osmi.schema import MAX_MESSAGE_BYTES, SCENARIOS, SERVER_MAX_BATCH
from osmi_ee.osmi.specs import MODEL_NAMES, MODEL_SPECS

# \Z, not $: `$` also matches before a trailing newline, and a newline in a script is a command.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
TIME_RE = re.compile(r"^(\d{1,3}-)?\d{1,2}:[0-5]\d:[0-5]\d\Z")  # Slurm's [D-]HH:MM:SS
# Caps on numbers: far above any real benchmark, low enough that a typo, .inf or
# 1e300 is caught here instead of as a job that never ends or never fits.
MAX_SERVERS = 64  # shards (one GPU each) on one node; a GPU type's gpus_per_node caps it further
MAX_CLIENTS = 4096  # client processes
MAX_BATCH = 65536  # samples per request
MAX_REPEAT = 1000
MAX_RATE = 1e6  # target requests/s, all clients together
MAX_REQUESTS = 10_000_000  # per client, measured or warm-up
MAX_STREAMS = 1024  # requests in flight per client
MAX_WINDOWS = 1000  # stability windows
MAX_TOLERANCE = 10.0  # stability: max/min - 1
MAX_TIMEOUT_S = 3600.0  # one request's deadline; server start-up
MAX_DURATION_S = 86400.0  # measured window, warm-up, minimum window
MAX_THREADS = 1024  # intra-op threads per shard
MAX_NODES = 256  # nodes per job
MAX_SEED = 2**31 - 1  # numpy seeds must be >= 0
AXIS_MAX = {"servers": MAX_SERVERS, "clients": MAX_CLIENTS, "batch": MAX_BATCH, "repeat": MAX_REPEAT}
SERVER_KINDS = ("auto", "osmi", "tfserving")
AXES = ("model", "servers", "clients", "batch", "gpu", "scenario", "rate", "repeat")  # order = id order


class GridError(ValueError):
    """A grid or config file is invalid; `problems` lists every problem found."""

    def __init__(self, source: Path | str, problems: list[str]):
        self.source = str(source)
        self.problems = problems
        super().__init__("\n".join(f"{self.source}: {p}" for p in problems))


# --------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Measure:
    warmup_requests: int = 5  # per client, before the measured window; never counted
    warmup_s: float = 0.0  # ... and at least this long
    streams: int = 1  # closed loop: requests in flight per client process
    requests: int | None = 100  # per client in the measured window ...
    duration_s: float | None = None  # ... or measure for this long instead
    timeout_s: float = 60.0  # deadline of one request; a late answer is a failure
    min_duration_s: float = 0.0  # a shorter measured window makes the run invalid
    min_requests: int = 100  # fewer measured requests (all clients together) make it invalid
    stability_windows: int = 3  # the last k measurement windows must agree ...
    stability_tolerance: float = 0.1  # ... within this fraction (max/min - 1), else unstable
    stability_max_windows: int = 10  # keep measuring windows until the last k agree, up to this
    #                                  many (k: exactly k windows; 1 window: no stability check)
    stability_max_s: float = 300.0  # ... and up to this long in all
    min_backend_share: float = 0.5  # each backend must get >= this x its fair share
    seed: int = 0  # input data seed (inputs are made before the timed loop)


@dataclass(frozen=True)
class Serve:
    server: str = "auto"  # auto: tensorflow_model_server if on PATH, else osmi-model-server
    models_dir: str = "build/models"  # exported SavedModels: <models_dir>/<model>/<version>/
    intra_op_threads: int = 0  # per server; 0 = TensorFlow's default
    startup_timeout_s: float = 180.0  # servers + balancer must be ready within this
    balancer_threads: int = 1  # HAProxy threads: 1 is steadiest on small machines; more where it is the bottleneck


@dataclass(frozen=True)
class Job:
    time: str = "00:30:00"  # Slurm wall-time limit of one experiment
    nodes: int = 1  # nodes per job: shards on the first, clients spread over all with srun
    clients_launcher: str = "auto"  # auto (srun when nodes > 1) | local | srun


@dataclass(frozen=True)
class Grid:
    """A validated grid: axes to sweep plus the shared settings."""

    name: str
    profile: Profile
    axes: dict[str, list[Any]]
    measure: Measure
    serve: Serve
    job: Job
    source: Path
    overrides: tuple[str, ...] = ()  # command-line `key=value`s applied on top of the file

    def settings(self) -> dict[str, Any]:
        """The shared sections as plain data (what every config.yaml repeats)."""
        return {"measure": asdict(self.measure), "serve": asdict(self.serve), "job": asdict(self.job)}


# --------------------------------------------------------------------- checking


_positive_int = (lambda v: is_int(v) and v >= 1, "an integer >= 1")
_FLOATS = {"warmup_s", "duration_s", "timeout_s", "min_backend_share", "min_duration_s",
           "stability_tolerance", "stability_max_s", "startup_timeout_s"}
_MEASURE_RULES = {
    "warmup_requests": (lambda v: is_int(v) and 0 <= v <= MAX_REQUESTS, f"an integer from 0 to {MAX_REQUESTS}"),
    "warmup_s": (lambda v: is_number(v) and 0 <= v <= MAX_DURATION_S, f"a number from 0 to {MAX_DURATION_S:g}"),
    "streams": (lambda v: is_int(v) and 1 <= v <= MAX_STREAMS, f"an integer from 1 to {MAX_STREAMS}"),
    "min_duration_s": (lambda v: is_number(v) and 0 <= v <= MAX_DURATION_S,
                       f"a number from 0 to {MAX_DURATION_S:g}"),
    "stability_windows": (lambda v: is_int(v) and 1 <= v <= MAX_WINDOWS, f"an integer from 1 to {MAX_WINDOWS}"),
    "stability_tolerance": (lambda v: is_number(v) and 0 < v <= MAX_TOLERANCE,
                            f"a number > 0, at most {MAX_TOLERANCE:g}"),
    "stability_max_windows": (lambda v: is_int(v) and 1 <= v <= MAX_WINDOWS,
                              f"an integer from 1 to {MAX_WINDOWS}"),
    "stability_max_s": (lambda v: is_number(v) and 0 < v <= 86400, "a number of seconds > 0, at most 86400"),
    "min_requests": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    "requests": (lambda v: v is None or (is_int(v) and 1 <= v <= MAX_REQUESTS),
                 f"an integer from 1 to {MAX_REQUESTS}, or null"),
    "duration_s": (lambda v: v is None or (is_number(v) and 0 < v <= MAX_DURATION_S),
                   f"a number > 0, at most {MAX_DURATION_S:g}, or null"),
    "timeout_s": (lambda v: is_number(v) and 0 < v <= MAX_TIMEOUT_S, f"a number > 0, at most {MAX_TIMEOUT_S:g}"),
    "min_backend_share": (lambda v: is_number(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "seed": (lambda v: is_int(v) and 0 <= v <= MAX_SEED, f"an integer from 0 to {MAX_SEED}"),
}
_SERVE_RULES = {
    "server": (lambda v: v in SERVER_KINDS, f"one of {', '.join(SERVER_KINDS)}"),
    # {a.b}: cloudmesh-ee would expand it inside the quoted path (${VAR} is fine).
    "models_dir": (lambda v: isinstance(v, str) and v.strip() != "" and v.isprintable() and len(v) <= 4096
                   and re.search(r"\{[A-Za-z_]\w*(?:\.\w+)+\}", v) is None,
                   "a non-empty path: one printable line, no {a.b} placeholder"),
    "intra_op_threads": (lambda v: is_int(v) and 0 <= v <= MAX_THREADS, f"an integer from 0 to {MAX_THREADS}"),
    "balancer_threads": (lambda v: is_int(v) and 1 <= v <= 64, "an integer from 1 to 64"),
    "startup_timeout_s": (lambda v: is_number(v) and 0 < v <= MAX_TIMEOUT_S,
                          f"a number > 0, at most {MAX_TIMEOUT_S:g}"),
}
_JOB_RULES = {"time": (lambda v: isinstance(v, str) and bool(TIME_RE.fullmatch(v)),
                       'a quoted Slurm time "[D-]HH:MM:SS"'),
              "nodes": (lambda v: is_int(v) and 1 <= v <= MAX_NODES, f"an integer from 1 to {MAX_NODES}"),
              "clients_launcher": (lambda v: v in ("auto", "local", "srun"), "one of auto, local, srun")}


def _check_measure(problems: Problems, data: dict[str, Any]) -> Measure:
    measure = fill_dataclass(problems, Measure, data, "measure.", _MEASURE_RULES, _FLOATS)
    if data.get("duration_s") is not None:
        # A duration replaces the count, unless the user set both on purpose.
        if data.get("requests") is not None:
            problems.bad("measure.requests", data["requests"],
                         "set either measure.requests or measure.duration_s, not both")
        measure = Measure(**{**asdict(measure), "requests": None})
    elif measure.requests is None:
        problems.bad("measure.requests", None, "needs measure.requests or measure.duration_s")
    if measure.stability_max_windows < measure.stability_windows:
        if "stability_max_windows" in data:
            problems.bad("measure.stability_max_windows", measure.stability_max_windows,
                         f"must be at least measure.stability_windows ({measure.stability_windows})")
        else:  # k set alone: measure at most 10 windows (or exactly k when k is larger)
            measure = Measure(**{**asdict(measure), "stability_max_windows": measure.stability_windows})
    return measure


def _check_axes(problems: Problems, data: Any, profile: Profile, scalar: bool) -> dict[str, list[Any]]:
    """Axis name -> list of values (a one-element list when `scalar`)."""
    if not isinstance(data, Mapping) or not data:
        problems.bad("experiment", data, "must be a mapping of axes, e.g. model: [small_lstm]")
        return {}
    problems.unknown(data, AXES, "experiment.")
    defaults: dict[str, list[Any]] = {"servers": [1], "clients": [1], "batch": [1],
                                      "gpu": [next(iter(profile.gpus))], "scenario": ["closed"],
                                      "rate": [None], "repeat": [1]}
    axes: dict[str, list[Any]] = {}
    for axis in AXES:
        if axis not in data:
            if axis == "model":
                problems.bad("experiment.model", None, f"required; one or more of {', '.join(MODEL_NAMES)}")
            else:
                axes[axis] = defaults[axis]
            continue
        raw = data[axis]
        values = raw if isinstance(raw, list) and not scalar else [raw]
        key = f"experiment.{axis}"
        if not values:
            problems.bad(key, raw, "needs at least one value")
            continue
        if len(set(map(repr, values))) != len(values):
            problems.bad(key, raw, "lists a value twice")
        for value in values:
            if axis == "model" and value not in MODEL_NAMES:
                problems.bad(key, value, f"unknown model; known models: {', '.join(MODEL_NAMES)}")
            elif axis == "gpu" and value not in profile.gpus:
                problems.bad(key, value, f"GPU type not in profile {profile.name!r}; "
                                         f"it has: {', '.join(profile.gpus)}")
            elif axis in AXIS_MAX and not (_positive_int[0](value) and value <= AXIS_MAX[axis]):
                problems.bad(key, value, f"must be an integer from 1 to {AXIS_MAX[axis]}")
            elif axis == "scenario" and value not in SCENARIOS:
                problems.bad(key, value, f"unknown load scenario; known: {', '.join(SCENARIOS)}")
            elif axis == "rate" and value is not None and not (is_number(value) and 0 < value <= MAX_RATE):
                problems.bad(key, value, f"target requests/s (all clients together): a number > 0, "
                                         f"at most {MAX_RATE:g}")
        axes[axis] = values
    for model in axes.get("model", []):  # what one request may weigh, checked before any job runs
        for batch in axes.get("batch", []):
            if model not in MODEL_SPECS or not is_int(batch):
                continue
            size = batch * MODEL_SPECS[model].input_bytes_per_sample
            if size > MAX_MESSAGE_BYTES:
                problems.bad("experiment.batch", batch, f"a {model} request of {batch} samples weighs "
                             f"{size / 2**20:,.0f} MiB, over gRPC's {MAX_MESSAGE_BYTES / 2**20:,.0f} MiB limit")
    if "poisson" in axes.get("scenario", []) and None in axes.get("rate", [None]):
        problems.bad("experiment.rate", data.get("rate"), "scenario poisson needs a target rate > 0")
    for gpu in axes.get("gpu", []):  # all shards run on the first node: one GPU each
        per_node = profile.gpus[gpu].gpus_per_node if isinstance(gpu, str) and gpu in profile.gpus else None
        too_many = [n for n in axes.get("servers", []) if is_int(n) and per_node and n > per_node]
        if too_many:
            problems.bad("experiment.servers", too_many, f"more shards than GPU type {gpu!r} has on one "
                                                         f"node (gpus_per_node: {per_node})")
    return axes


# --------------------------------------------------------------------- loading


def _parse(data: Any, source: Path, scalar_axes: bool, profiles_dir: Path | None,
           extra_keys: tuple[str, ...] = (), profile_file: Path | str | None = None) -> Grid:
    if not isinstance(data, Mapping):
        raise GridError(source, ["top level must be a mapping with at least `name` and `experiment`"])
    problems = Problems()
    top_keys = ("name", "description", "profile", "experiment", "measure", "serve", "job") + extra_keys
    problems.unknown(data, top_keys)
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.bad("name", name, "required; letters, digits, '.', '_' or '-', at most 64")
    try:  # a name in profiles_dir (never a path) or inline; an explicit profile_file wins
        profile = resolve_profile(data.get("profile", "localhost"), profiles_dir, profile_file)
    except ProfileError as exc:
        problems.extend(exc.problems)
        experiment = data.get("experiment")
        profile = placeholder_profile(experiment.get("gpu") if isinstance(experiment, Mapping) else None)
    axes = _check_axes(problems, data.get("experiment"), profile, scalar_axes)
    measure = _check_measure(problems, problems.mapping(data.get("measure", {}), "measure"))
    serve = fill_dataclass(problems, Serve, problems.mapping(data.get("serve", {}), "serve"), "serve.",
                           _SERVE_RULES, _FLOATS)
    try:  # ${USER} etc. in paths are the generating user's; relative means "from here"
        models_dir = Path(expand_vars(serve.models_dir, "serve.models_dir")).expanduser()
        serve = Serve(**{**asdict(serve), "models_dir": str(models_dir.resolve())})
    except ValueError as exc:
        problems.bad("serve.models_dir", serve.models_dir, str(exc).split(": ", 1)[-1])
    job = fill_dataclass(problems, Job, problems.mapping(data.get("job", {}), "job"), "job.", _JOB_RULES,
                         _FLOATS)
    if serve.server != "tfserving":  # osmi-model-server refuses bigger requests
        for batch in axes.get("batch", []):
            if is_int(batch) and batch > SERVER_MAX_BATCH:
                problems.bad("experiment.batch", batch, f"osmi-model-server serves at most {SERVER_MAX_BATCH} "
                             "samples per request (its --max_batch); use serve.server: tfserving for more")
    if problems:
        raise GridError(source, list(problems))
    return Grid(name=name, profile=profile, axes=axes, measure=measure, serve=serve,
                job=job, source=source)


OVERRIDE_SOURCE = "command line"


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """The grid's data with Hydra-style `section.key=value` overrides applied, before
    validation, so they are checked exactly like the file. A value is YAML
    (`5`, `null`, `[1, 16]`); under `experiment.` a comma list is a list of values
    (`experiment.batch=1,16`) and a single value a one-value axis."""
    if not overrides:
        return data
    if not isinstance(data, Mapping):
        return data  # the file's own error is reported by _parse
    data = json.loads(json.dumps(data))  # a deep copy of plain YAML data
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or not key or not all(NAME_RE.fullmatch(p) for p in parts):
            problems.append(f"{item!r}: an override is section.key=value, e.g. measure.duration_s=5")
            continue
        try:
            if parts[0] == "experiment" and len(parts) == 2:
                value: Any = [load_yaml(v) for v in text.split(",")] if "," in text else load_yaml(text)
                value = value if isinstance(value, list) else [value]
            else:
                value = load_yaml(text)
        except yaml.YAMLError as exc:
            problems.append(f"{item!r}: the value is not valid YAML ({exc.problem})")
            continue
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                problems.append(f"{item!r}: {part} is not a section")
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = value
    if problems:
        raise GridError(OVERRIDE_SOURCE, problems)
    return data


def load_grid(path: Path | str, profiles_dir: Path | None = None,
              profile_file: Path | str | None = None, overrides: Sequence[str] = ()) -> Grid:
    """Reads and validates a grid file; raises GridError listing every problem.

    The grid's `profile:` names a file in `profiles_dir` (default slurm/profiles)
    or is inline; `profile_file` (e.g. from the command line) replaces it with
    that file, wherever it is. `overrides` (`section.key=value`) are applied to
    the file's data before it is validated.
    """
    source = Path(path)
    data = apply_overrides(read_yaml_file(source, GridError), overrides)
    grid = _parse(data, source, scalar_axes=False, profiles_dir=profiles_dir, profile_file=profile_file)
    return replace(grid, overrides=tuple(overrides))


def load_experiment_config(path: Path | str) -> tuple[Grid, dict[str, Any], dict[str, Any]]:
    """Reads a generated per-experiment config.yaml with the same checks.

    Returns (grid with one value per axis, the experiment's axis values, the
    whole raw mapping, which also holds the `ee` and `sweep` blocks).
    """
    source = Path(path)
    data = read_yaml_file(source, GridError)
    # `ee` (cloudmesh-ee's identifier block) and `sweep` are written by generate.
    grid = _parse(data, source, scalar_axes=True, profiles_dir=None, extra_keys=("ee", "sweep"))
    params = {axis: values[0] for axis, values in grid.axes.items()}
    return grid, params, data
