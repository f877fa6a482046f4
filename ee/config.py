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

from osmi_ee.ee.checks import Problems, fill, fill_dataclass, is_int, is_number
from osmi_ee.ee.profiles import Profile, ProfileError, expand_vars, placeholder_profile, resolve_profile
from osmi_ee.ee.yaml_io import load_yaml, read_yaml_file
from osmi_ee.osmi.placement import NODE_ROLES, nodes_needed, shard_capacity
from osmi_ee.osmi.schema import BALANCERS, MAX_MESSAGE_BYTES, SCENARIOS, SERVER_MAX_BATCH
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
MAX_ARRAY_THROTTLE = 100_000  # job.max_running: tasks of one array at once
MAX_RETRIES = 10  # job.retries: requeues of one task (Slurm's own MaxBatchRequeue defaults to 5)
SUBMIT_ONLY = ("max_running", "retries", "collect")  # job keys that shape the submission, not an experiment
MAX_SEED = 2**31 - 1  # numpy seeds must be >= 0
AXIS_MAX = {"servers": MAX_SERVERS, "clients": MAX_CLIENTS, "batch": MAX_BATCH, "repeat": MAX_REPEAT}
SERVER_KINDS = ("auto", "osmi", "tfserving", "triton")
AXES = ("model", "server", "servers", "clients", "batch", "gpu", "scenario", "rate", "batching",
        "balancer", "repeat")  # order = id order
BATCHING_OFF = ("off", None, False)  # how a grid says "no server-side batching"
MAX_BATCH_TIMEOUT_US = 10_000_000  # 10 s: a queue delay beyond any sensible request deadline
MAX_ENQUEUED_BATCHES = 1_000_000


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
class Batching:
    """Server-side batching of one experiment (the `batching` axis; off is None).

    Rendered by osmi/batching.py into TF-Serving's --batching_parameters_file, Triton's
    dynamic_batching block and osmi-model-server's own batching queue.
    """

    name: str  # the label in experiment ids, the dataset and the report
    max_batch_size: int  # samples in one merged batch; a larger request is refused
    batch_timeout_us: int = 0  # how long an incomplete batch waits for more requests
    num_batch_threads: int = 1  # batches run at once (Triton: model instances)
    max_enqueued_batches: int = 10  # queued batches beyond this are refused (UNAVAILABLE)
    preferred_batch_sizes: tuple[int, ...] = ()  # Triton's preferred_batch_size only

    def as_param(self) -> dict[str, Any]:
        """The value config.yaml, sweep.json and summary.json hold (plain YAML data)."""
        return {**asdict(self), "preferred_batch_sizes": list(self.preferred_batch_sizes)}


@dataclass(frozen=True)
class Job:
    time: str = "00:30:00"  # Slurm wall-time limit of one experiment
    nodes: int = 1  # nodes per job; more than 1: shards, balancer and clients placed by osmi.placement
    clients_launcher: str = "auto"  # auto (srun when nodes > 1) | local | srun
    shards_per_node: int | None = None  # null: the GPU type's gpus_per_node, else all shards on one node
    balancer_node: str = "shared"  # shared: with the first shards | own: a node of its own
    client_nodes: str = "shared"  # shared: on every node but a balancer's own | own: nodes of their own
    # How `submit` sends the sweep (SUBMIT_ONLY: not part of any experiment, so not in its id):
    max_running: int | None = None  # array throttle: at most this many tasks of one array at once; null: no cap
    retries: int = 0  # requeue a task after an infrastructure failure (node, time limit, preemption) up to n times
    collect: bool = False  # after the last task, a job of its own runs `analyze` on the sweep


@dataclass(frozen=True)
class Objective:
    """What a run must meet to count as serving its load (`osmi-ee search`, the report)."""

    p99_ms: float | None = None  # p99 latency at most this (ms); null: no latency objective


SEARCH_AXES = ("clients", "rate")  # closed-loop concurrency or the open-loop Poisson rate


@dataclass(frozen=True)
class Search:
    """`osmi-ee search`: per configuration, the highest load of `axis` whose run is VALID,
    stable and meets the objective (ee/search_policy.py: doubling, then bisection)."""

    axis: str = "clients"
    start: float = 1  # first load tried
    max: float = 64  # never beyond this
    resolution: float = 1  # the found peak is within this of the boundary (clients: 1)
    enabled: bool = True


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
    objective: Objective | None = None  # what a load must meet to count (`objective:`), None: only valid+stable
    search: Search | None = None  # `osmi-ee search`: the searched axis (not expanded), None: no search

    def settings(self) -> dict[str, Any]:
        """The shared sections as plain data (what every config.yaml repeats). How the
        sweep is submitted (SUBMIT_ONLY) changes no experiment: left out, ids stay."""
        job = {k: v for k, v in asdict(self.job).items() if k not in SUBMIT_ONLY}
        return {"measure": asdict(self.measure), "serve": asdict(self.serve), "job": job}


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
              "clients_launcher": (lambda v: v in ("auto", "local", "srun"), "one of auto, local, srun"),
              "shards_per_node": (lambda v: v is None or (is_int(v) and 1 <= v <= MAX_SERVERS),
                                  f"an integer from 1 to {MAX_SERVERS}, or null"),
              "balancer_node": (lambda v: v in NODE_ROLES, f"one of {', '.join(NODE_ROLES)}"),
              "client_nodes": (lambda v: v in NODE_ROLES, f"one of {', '.join(NODE_ROLES)}"),
              "max_running": (lambda v: v is None or (is_int(v) and 1 <= v <= MAX_ARRAY_THROTTLE),
                              f"an integer from 1 to {MAX_ARRAY_THROTTLE}, or null (no cap)"),
              "retries": (lambda v: is_int(v) and 0 <= v <= MAX_RETRIES, f"an integer from 0 to {MAX_RETRIES}"),
              "collect": (lambda v: isinstance(v, bool), "true or false")}


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


_BATCHING_RULES = {
    "name": (lambda v: isinstance(v, str) and bool(NAME_RE.match(v)) and len(v) <= 32,
             "letters, digits, '.', '_' or '-', at most 32"),
    "max_batch_size": (lambda v: is_int(v) and 1 <= v <= MAX_BATCH, f"an integer from 1 to {MAX_BATCH}"),
    "batch_timeout_us": (lambda v: is_int(v) and 0 <= v <= MAX_BATCH_TIMEOUT_US,
                         f"an integer from 0 to {MAX_BATCH_TIMEOUT_US} (microseconds)"),
    "num_batch_threads": (lambda v: is_int(v) and 1 <= v <= MAX_THREADS, f"an integer from 1 to {MAX_THREADS}"),
    "max_enqueued_batches": (lambda v: is_int(v) and 1 <= v <= MAX_ENQUEUED_BATCHES,
                             f"an integer from 1 to {MAX_ENQUEUED_BATCHES}"),
    "preferred_batch_sizes": (lambda v: isinstance(v, list) and all(is_int(x) and x >= 1 for x in v)
                              and v == sorted(set(v)), "a list of increasing integers >= 1 ([]: none)"),
}


def check_batching(problems: Problems, key: str, value: Any) -> dict[str, Any] | None:
    """One value of the batching axis, resolved: None when off, else Batching.as_param()
    with every default filled in (so the experiment id hashes what the servers run)."""
    if value in BATCHING_OFF and not (value == 0 and value is not False):
        return None
    if not isinstance(value, Mapping):
        problems.bad(key, value, "off, or a mapping such as {max_batch_size: 32, batch_timeout_us: 1000}")
        return None
    before = len(problems)
    problems.unknown(value, _BATCHING_RULES, f"{key}.")
    fields = fill(problems, value, f"{key}.", _BATCHING_RULES)
    if "max_batch_size" not in value:
        problems.bad(f"{key}.max_batch_size", None, f"required: {_BATCHING_RULES['max_batch_size'][1]}")
    if len(problems) > before:
        return None
    sizes = fields.get("preferred_batch_sizes", [])
    if sizes and sizes[-1] > fields["max_batch_size"]:
        problems.bad(f"{key}.preferred_batch_sizes", sizes,
                     f"every size must be at most max_batch_size ({fields['max_batch_size']})")
        return None
    # A readable default label (no hash): what differs between the usual presets.
    fields.setdefault("name", f"mb{fields['max_batch_size']}_t{fields.get('batch_timeout_us', 0)}us")
    return Batching(**{**fields, "preferred_batch_sizes": tuple(sizes)}).as_param()


def batching_of(value: Any) -> Batching | None:
    """The Batching a validated axis value (check_batching's result) stands for."""
    if value is None:
        return None
    return Batching(**{**value, "preferred_batch_sizes": tuple(value.get("preferred_batch_sizes", ()))})


def _check_axes(problems: Problems, data: Any, profile: Profile, scalar: bool) -> dict[str, list[Any]]:
    """Axis name -> list of values (a one-element list when `scalar`)."""
    if not isinstance(data, Mapping) or not data:
        problems.bad("experiment", data, "must be a mapping of axes, e.g. model: [small_lstm]")
        return {}
    problems.unknown(data, AXES, "experiment.")
    defaults: dict[str, list[Any]] = {"servers": [1], "clients": [1], "batch": [1],
                                      "gpu": [next(iter(profile.gpus))], "scenario": ["closed"],
                                      "rate": [None], "batching": [None], "repeat": [1],
                                      "server": [None],  # server None: serve.server
                                      "balancer": [None]}  # balancer None: haproxy, left out of ids
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
        if axis == "batching":  # resolved first, so `off` and null are one value
            values = [check_batching(problems, key if scalar else f"{key}[{i}]", v) for i, v in enumerate(values)]
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
            elif axis == "balancer" and value not in BALANCERS:
                problems.bad(key, value, f"one of {', '.join(BALANCERS)} (none: each client process "
                                         "round-robins over the shards itself)")
            elif axis == "server" and value not in SERVER_KINDS:
                problems.bad(key, value, f"unknown server; one of {', '.join(SERVER_KINDS)} "
                                         "(the axis overrides serve.server)")
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
    for setting in axes.get("batching", []):  # the batching queue refuses larger requests (as TF-Serving does)
        too_big = [b for b in axes.get("batch", []) if setting and is_int(b) and b > setting["max_batch_size"]]
        if too_big:
            problems.bad("experiment.batch", too_big, f"larger than batching {setting['name']!r}'s max_batch_size "
                         f"({setting['max_batch_size']}): the server would refuse these requests")
    names = [s["name"] for s in axes.get("batching", []) if s]
    if len(set(names)) != len(names):
        problems.bad("experiment.batching", names, "two settings share a name; the name labels the experiment")
    if "poisson" in axes.get("scenario", []) and None in axes.get("rate", [None]):
        problems.bad("experiment.rate", data.get("rate"), "scenario poisson needs a target rate > 0")
    return axes


def _check_placement(problems: Problems, axes: dict[str, list[Any]], profile: Profile, job: Job) -> None:
    """Every point must fit the job's nodes (osmi.placement): at most one shard per GPU
    of a node, and nodes enough for the shards and for a balancer's or clients' own."""
    if job.nodes > 1 and job.clients_launcher == "local":
        problems.bad("job.clients_launcher", job.clients_launcher,
                     "clients run on their placed nodes with srun when job.nodes > 1; use auto or srun")
    extra = "".join([" + 1 node for the balancer" if job.balancer_node == "own" else "",
                     " + 1 node for the clients" if job.client_nodes == "own" else ""])
    for gpu in axes.get("gpu", []):
        cards = profile.gpus[gpu].gpus_per_node if isinstance(gpu, str) and gpu in profile.gpus else None
        if job.shards_per_node and cards and job.shards_per_node > cards:
            problems.bad("job.shards_per_node", job.shards_per_node,
                         f"more shards on one node than GPU type {gpu!r} has (gpus_per_node: {cards})")
            continue
        for servers in axes.get("servers", []):
            if not (is_int(servers) and servers >= 1):
                continue  # reported above
            per_node = shard_capacity(servers, job.shards_per_node, cards)
            needed = nodes_needed(servers, per_node=per_node, balancer_node=job.balancer_node,
                                  client_nodes=job.client_nodes)
            if needed > job.nodes:
                why = ("job.shards_per_node" if job.shards_per_node else
                       f"GPU type {gpu!r} has {cards} per node" if cards else "all on one node")
                problems.bad("job.nodes", job.nodes, f"{servers} shards at {per_node} per node ({why})"
                             f"{extra} need {needed} nodes")


# --------------------------------------------------------------------- loading


def _parse(data: Any, source: Path, scalar_axes: bool, profiles_dir: Path | None,
           extra_keys: tuple[str, ...] = (), profile_file: Path | str | None = None) -> Grid:
    if not isinstance(data, Mapping):
        raise GridError(source, ["top level must be a mapping with at least `name` and `experiment`"])
    problems = Problems()
    top_keys = ("name", "description", "profile", "experiment", "measure", "serve", "job", "objective",
                "search") + extra_keys
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
    objective, search = _check_objective(problems, data.get("objective")), _check_search(problems, data)
    experiment = data.get("experiment")
    if search and search.enabled and isinstance(experiment, Mapping):
        # the searched axis is not expanded: one placeholder value (ee/search.py sets each step's)
        start = int(search.start) if search.axis == "clients" else search.start
        experiment = {**experiment, search.axis: experiment.get(search.axis, start) if scalar_axes else [start]}
    axes = _check_axes(problems, experiment, profile, scalar_axes)
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
    _check_placement(problems, axes, profile, job)
    # osmi-model-server (and our Triton config) refuse bigger requests (and batches)
    if any((s or serve.server) != "tfserving" for s in axes.get("server", [None])):
        for setting in axes.get("batching", []):
            if setting and setting["max_batch_size"] > SERVER_MAX_BATCH:
                problems.bad("experiment.batching", setting["max_batch_size"],
                             f"max_batch_size: osmi-model-server runs at most {SERVER_MAX_BATCH} samples at once "
                             "(its --max_batch); use serve.server: tfserving for more")
        for batch in axes.get("batch", []):
            if is_int(batch) and batch > SERVER_MAX_BATCH:
                problems.bad("experiment.batch", batch, f"osmi-model-server serves at most {SERVER_MAX_BATCH} "
                             "samples per request (its --max_batch); use serve.server: tfserving for more")
    if problems:
        raise GridError(source, list(problems))
    return Grid(name=name, profile=profile, axes=axes, measure=measure, serve=serve,
                job=job, source=source, objective=objective, search=search)


_OBJECTIVE_RULES = {"p99_ms": (lambda v: v is None or (is_number(v) and 0 < v <= MAX_TIMEOUT_S * 1000),
                               f"a number of ms > 0, at most {MAX_TIMEOUT_S * 1000:g}, or null")}
_SEARCH_RULES = {
    "axis": (lambda v: v in SEARCH_AXES, f"one of {', '.join(SEARCH_AXES)}"),
    "start": (lambda v: is_number(v) and 0 < v <= MAX_RATE, f"a number > 0, at most {MAX_RATE:g}"),
    "max": (lambda v: is_number(v) and 0 < v <= MAX_RATE, f"a number > 0, at most {MAX_RATE:g}"),
    "resolution": (lambda v: is_number(v) and 0 < v <= MAX_RATE, f"a number > 0, at most {MAX_RATE:g}"),
    "enabled": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_objective(problems: Problems, data: Any) -> Objective | None:
    if data is None:
        return None
    return fill_dataclass(problems, Objective, problems.mapping(data, "objective"), "objective.",
                          _OBJECTIVE_RULES, {"p99_ms"})


def _check_search(problems: Problems, data: Mapping[str, Any]) -> Search | None:
    """The `search:` section; its axis must be searchable in this grid (checked here,
    so `osmi-ee search` never starts a step it cannot judge)."""
    if data.get("search") is None:
        return None
    before = len(problems)
    search = fill_dataclass(problems, Search, problems.mapping(data["search"], "search"), "search.",
                            _SEARCH_RULES)
    if len(problems) > before or not search.enabled:
        return search
    if search.axis == "clients":
        for key in ("start", "max", "resolution"):
            value = getattr(search, key)
            if not (is_int(value) and value <= MAX_CLIENTS):
                problems.bad(f"search.{key}", value, f"searching clients: an integer from 1 to {MAX_CLIENTS}")
    if search.max < search.start:
        problems.bad("search.max", search.max, f"must be at least search.start ({search.start:g})")
    experiment = data.get("experiment")
    if isinstance(experiment, Mapping):
        given = experiment.get(search.axis)
        if isinstance(given, list) and len(given) > 1:
            problems.bad(f"experiment.{search.axis}", given, f"searched (search.axis: {search.axis}), so not "
                         "expanded: leave it out and set search.start / search.max")
        scenarios = experiment.get("scenario", ["closed"])
        scenarios = scenarios if isinstance(scenarios, list) else [scenarios]
        if search.axis == "rate" and scenarios != ["poisson"]:
            problems.bad("experiment.scenario", experiment.get("scenario"),
                         "search.axis rate searches the open-loop rate: the scenario must be [poisson]")
        if search.axis == "clients" and "poisson" in scenarios:
            problems.bad("experiment.scenario", experiment.get("scenario"),
                         "search.axis clients searches closed-loop concurrency: leave poisson out "
                         "(or search rate)")
    return search


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
    if params.get("batching") is None:  # as expand writes it: off is left out
        params.pop("batching", None)
    if params.get("balancer") is None:  # as expand writes it: no balancer axis (HAProxy) is left out
        params.pop("balancer", None)
    if params.get("server") is None:  # likewise: no server axis, serve.server decides
        params.pop("server", None)
    return grid, params, data
