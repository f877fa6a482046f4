"""Experiments -> files: one directory per experiment, plus sweep.json, the job
arrays submit sends (ee/arrays.py) and the folder `cms ee list` scans.

Everything is computed and checked in memory first, so bad input writes
nothing. Files are written atomically. An experiment directory that already
exists keeps its results: its id hashes its whole config, so the same id
means the same experiment.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from osmi_ee.ee.arrays import write_arrays, write_ee_view
from osmi_ee.ee.config import AXES, Grid
from osmi_ee.ee.expand import Experiment, expand
from osmi_ee.ee.paths import ExperimentPaths, SweepPaths, write_atomic, write_json
from osmi_ee.ee.render import Renderer, variables

DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "slurm" / "job.in.slurm"


_HEADER = "# Resolved osmi-ee experiment config (generated; edit the grid instead).\n"


def experiment_config_text(experiment: Experiment, sweep_dir: Path) -> str:
    config = experiment.config()
    # cloudmesh-ee's per-permutation keys, so `cms ee` tooling still finds its way.
    config["ee"] = {"identifier": experiment.id, "time": experiment.grid.job.time}
    config["sweep"] = {"dir": str(sweep_dir), "experiment_id": experiment.id}
    return _HEADER + yaml.safe_dump(config, sort_keys=False)


_SCALARS = (str, int, float, bool, type(None))
_PLAIN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESOLVER = yaml.resolver.Resolver()  # SafeDumper's: which plain scalars read back as str


class ConfigTexts:
    """`experiment_config_text` for all experiments of one grid, byte for byte,
    without dumping the shared sections again for each one.

    A block mapping's YAML is the concatenation of each key's own dump, so the
    sections every experiment repeats (name, profile, measure, serve, job) are
    dumped once, each `experiment:` item once per distinct value, and the id
    (unique per experiment) is written plain when YAML would write it so. If
    the shared data holds a container twice (YAML would then write an anchor
    across sections) or anything else is unusual, the full dump is used.
    Assumes, as Experiment.config has it, that all but `experiment:` comes from
    the grid alone; tests/test_bench.py checks every text against the full dump.
    """

    def __init__(self, sweep_dir: Path):
        self.sweep_dir = sweep_dir
        self._grid: Any = None
        self._shared: tuple[str, str, str] | None = None
        self._items: dict[tuple[str, str, type, str], str] = {}

    def __call__(self, experiment: Experiment) -> str:
        if experiment.grid is not self._grid:
            self._grid, self._shared = experiment.grid, self._split(experiment)
        params = experiment.params
        if self._shared is None or not all(isinstance(k, str) and type(v) in _SCALARS
                                           for k, v in params.items()):
            return experiment_config_text(experiment, self.sweep_dir)
        head, middle, dir_line = self._shared
        eid = self._id(experiment.id)
        if eid is None:
            return experiment_config_text(experiment, self.sweep_dir)
        parts = [head, "experiment:\n"]
        parts += [self._item("experiment", k, v) for k, v in params.items()]
        parts += [middle, "ee:\n  identifier: ", eid, "\n", self._time_line,
                  "sweep:\n", dir_line, "  experiment_id: ", eid, "\n"]
        return "".join(parts)

    def _split(self, experiment: Experiment) -> tuple[str, str, str] | None:
        config = experiment.config()
        if list(config) != ["name", "profile", "experiment", "measure", "serve", "job"] \
                or not experiment.params or _shares_containers(config):
            return None
        dump = lambda data: yaml.safe_dump(data, sort_keys=False)  # noqa: E731
        head = _HEADER + dump({"name": config["name"], "profile": config["profile"]})
        middle = dump({k: config[k] for k in ("measure", "serve", "job")})
        self._time_line = dump({"ee": {"time": experiment.grid.job.time}}).split("\n", 1)[1]
        dir_line = dump({"sweep": {"dir": str(self.sweep_dir)}}).split("\n", 1)[1]
        return head, middle, dir_line

    def _item(self, section: str, key: str, value: Any) -> str:
        cache_key = (section, key, type(value), repr(value))  # repr: -0.0 is not 0.0
        text = self._items.get(cache_key)
        if text is None:
            text = yaml.safe_dump({section: {key: value}}, sort_keys=False).split("\n", 1)[1]
            self._items[cache_key] = text
        return text

    @staticmethod
    def _id(eid: str) -> str | None:
        """The id as YAML writes it in a block mapping; None: ask YAML."""
        if _PLAIN_ID_RE.fullmatch(eid) and \
                _RESOLVER.resolve(yaml.ScalarNode, eid, (True, False)) == "tag:yaml.org,2002:str":
            return eid
        return None


WRITE_THREADS = 2  # measured: 2 beat 1 and 4 (the folder creations share the sweep folder lock)


class _ExperimentNames:
    """The names inside an experiment folder, from paths.ExperimentPaths (the only
    place that names files), resolved once; then plain string joins per experiment."""

    def __init__(self) -> None:
        probe = ExperimentPaths(Path("/x"))
        rel = lambda path: str(path.relative_to(probe.root))  # noqa: E731
        self.logs, self.results = rel(probe.logs), rel(probe.results)
        self.config, self.job_script = rel(probe.config), rel(probe.job_script)

    def write(self, chunk: list[tuple[str, str, str]]) -> None:
        for root, script, text in chunk:
            _make_dirs(root, f"{root}/{self.logs}", f"{root}/{self.results}")  # log dir before any sbatch
            _write_atomic(root, self.config, text, 0o600)
            _write_atomic(root, self.job_script, script, 0o755)


def _make_dirs(root: str, *children: str) -> None:
    """mkdir -p root/child...: one system call each when root is new."""
    try:
        os.mkdir(root)
    except FileExistsError:
        pass
    except FileNotFoundError:
        Path(root).mkdir(parents=True, exist_ok=True)
    for child in children:
        try:
            os.mkdir(child)
        except FileExistsError:
            pass


def _write_atomic(folder: str, name: str, text: str, mode: int) -> None:
    """paths.write_atomic (temp file + rename, mode 0600) with the final mode set on
    the temp file, in fewer system calls: generate writes two files per experiment."""
    path = f"{folder}/{name}"
    tmp = f"{folder}/.{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:  # a stale temp file of a killed run: the general way
        write_atomic(Path(path), text)
        os.chmod(path, mode)
        return
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shares_containers(data: Any) -> bool:
    """Does one list or dict appear twice in `data`? (YAML writes an anchor then)."""
    seen: set[int] = set()

    def walk(node: Any) -> bool:
        if isinstance(node, (dict, list, tuple, set)):
            if id(node) in seen:
                return True
            seen.add(id(node))
            children = node.values() if isinstance(node, dict) else node
            return any(walk(child) for child in children)
        return False

    return walk(data)


def generate(grid: Grid, sweep_dir: Path, template: Path = DEFAULT_TEMPLATE,
             python: str = sys.executable, experiments: list[Experiment] | None = None) -> list[Experiment]:
    """Writes the sweep for `grid` under `sweep_dir`; returns its experiments
    (`experiments`: these instead of the grid's expansion; ee/search.py's steps so far)."""
    sweep_dir = sweep_dir.resolve()
    paths = SweepPaths(sweep_dir)
    template_text = template.read_text()
    experiments = expand(grid) if experiments is None else experiments
    render = Renderer(template_text)  # cloudmesh-ee renders once per set of keys
    config_text = ConfigTexts(sweep_dir)
    rendered = []
    for experiment in experiments:  # render all before writing any
        exp_dir = paths.experiment(experiment.id).root
        script = render(variables(experiment, exp_dir, python))
        rendered.append((str(exp_dir), script, config_text(experiment)))

    # Three folders and two files per experiment: system calls are most of the
    # time, and they run in parallel outside the GIL, so a few threads share them.
    names = _ExperimentNames()
    step = 256
    chunks = [rendered[i:i + step] for i in range(0, len(rendered), step)]
    if len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
            for _ in pool.map(names.write, chunks):
                pass
    else:
        for chunk in chunks:
            names.write(chunk)

    # How submit sends the sweep (one job array per resource shape), and the folder
    # `cms ee list` scans: both from the experiments just written.
    write_arrays(grid, paths, experiments, python)
    write_ee_view(paths, [e.id for e in experiments])
    write_json(paths.sweep, {
        "name": grid.name,
        "grid": str(grid.source.resolve()),
        "overrides": list(grid.overrides),  # applied on top of the grid file, in this order
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": grid.profile.name,
        # batching only where some experiment has it on: other sweeps keep their columns
        "axes": [a for a in AXES if a != "batching" or any("batching" in e.params for e in experiments)],
        "experiments": [e.id for e in experiments],
        "params": {e.id: e.params for e in experiments},
    })
    return experiments
