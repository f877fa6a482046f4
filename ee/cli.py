"""`osmi-ee`: generate | run | submit | status | analyze a sweep.

Every command takes the grid file (`--grid`, or EXPERIMENT= in make) and
finds its sweep directory from it (runs/<grid name>, or --out), so the same
argument drives the whole life of a sweep.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from osmi_ee.ee.config import GridError, load_grid
from osmi_ee.ee.outcome import ExperimentOutcome
from osmi_ee.ee.paths import SweepPaths, default_sweep_dir
from osmi_ee.ee.render import TemplateError
from osmi_ee.osmi.extras import MissingExtra

DEFAULT_GRID = "experiments/local.yaml"


def _sweep_for(args: argparse.Namespace) -> tuple[SweepPaths, object]:
    grid = load_grid(args.grid, profile_file=args.profile, overrides=args.overrides)
    root = Path(args.out) if args.out else default_sweep_dir(grid.name)
    return SweepPaths(root.resolve()), grid


def _require_generated(sweep: SweepPaths) -> None:
    if not sweep.sweep.exists():
        raise GridError(sweep.root, ["no generated sweep here; run `make generate` (osmi-ee generate) "
                                     "first, then `make run` or `make submit`"])


def cmd_models(args: argparse.Namespace) -> int:
    from osmi_ee.osmi.export import EXPORT_LOG, export_models
    from osmi_ee.osmi.extras import native_stderr_to, require_serve

    grid = load_grid(args.grid, profile_file=args.profile, overrides=args.overrides)
    require_serve("osmi-ee models")
    models_dir = Path(grid.serve.models_dir)
    with native_stderr_to(models_dir / EXPORT_LOG):
        export_models(grid.axes["model"], models_dir, samples=args.samples,
                      epochs=args.epochs, force=args.force)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from osmi_ee.ee.generate import generate

    sweep, grid = _sweep_for(args)
    if grid.search is not None and grid.search.enabled:  # its searched axis holds only search.start
        print(f"osmi-ee generate: this grid searches {grid.search.axis} (search:), so it is not expanded here; "
              f"`osmi-ee search --grid {args.grid}` runs the search", file=sys.stderr)
    if args.dry_run:
        from osmi_ee.ee.expand import expand

        experiments = expand(grid)
        axes = [a for a in grid.axes if len(grid.axes[a]) > 1] or list(grid.axes)
        for e in experiments:
            # Axes that are off by default (server, batching, balancer) are left out of params.
            print(f"{e.id}  " + " ".join(f"{a}={e.params[a]}" for a in axes if a in e.params))
        print(f"{len(experiments)} experiments would be written to {sweep.root} (dry run: nothing written)")
        return 0
    experiments = generate(grid, sweep.root)
    print(f"generated {len(experiments)} experiments in {sweep.root}")
    return 0


def _run_count_key(outcome: ExperimentOutcome) -> str:
    if not outcome.skipped:
        return outcome.state
    return "skipped (valid)" if outcome.state == "valid" else "skipped (running elsewhere)"


def unstable_note(sweep: SweepPaths, ids: list[str]) -> str | None:
    """One line when points of this run landed unstable, with what the machine was doing."""
    from osmi_ee.osmi.env import busy_machine_note

    unstable, busy = [], []
    for experiment_id in ids:
        summary = sweep.experiment(experiment_id).read_summary()
        if summary and (summary.get("measurement") or {}).get("stable") is False:
            unstable.append(experiment_id)
            note = busy_machine_note(summary.get("machine_load"))
            if note:
                busy.append(note)
    if not unstable:
        return None
    why = busy[-1] if busy else "no sign of a busy machine: the serving path itself fluctuates"
    return (f"{len(unstable)} of {len(ids)} point(s) landed unstable (their windows never agreed, so they "
            f"carry no speed): {why}. Rerun them on a quieter machine, or widen measure.stability_tolerance.")


def cmd_run(args: argparse.Namespace) -> int:
    from osmi_ee.ee.local import Interrupted, run_local

    sweep, _ = _sweep_for(args)
    _require_generated(sweep)
    try:
        outcomes = run_local(sweep, force=args.force)
    except Interrupted as stop:
        print(f"osmi-ee run: {stop}", file=sys.stderr)
        return 128 + stop.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    counts = Counter(_run_count_key(o) for o in outcomes)
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    note = unstable_note(sweep, [o.id for o in outcomes if not o.skipped])
    if note:
        print(note, file=sys.stderr)
    bad = sum(counts.get(k, 0) for k in ("invalid", "failed", "cancelled", "interrupted"))
    return 0 if not bad else 3


def cmd_search(args: argparse.Namespace) -> int:
    from osmi_ee.ee.search import main_search

    sweep, grid = _sweep_for(args)
    if grid.search is None or not grid.search.enabled:
        raise GridError(args.grid, ["search: this grid has no enabled `search:` section (e.g. "
                                    "search: {axis: clients, start: 1, max: 64}); see experiments/search.yaml"])
    rc = main_search(grid, sweep.root)
    if rc == 0 and args.analyze:
        from osmi_ee.analysis.cli import main as analyze_main

        extra = ["--slo-p99-ms", str(grid.objective.p99_ms)] if grid.objective and grid.objective.p99_ms else []
        return analyze_main([str(sweep.root), *extra])
    return rc


def cmd_submit(args: argparse.Namespace) -> int:
    from osmi_ee.ee import preflight
    from osmi_ee.ee.arrays import load_arrays
    from osmi_ee.ee.slurm import SubmissionError, plan, refusals, submit

    sweep, grid = _sweep_for(args)
    _require_generated(sweep)
    if not sweep.arrays.exists():
        raise GridError(sweep.root, ["generated before job arrays existed: run `make generate` again "
                                     "(results are kept), then `make submit`"])
    try:
        todo = plan(sweep, force=args.force)
        _, python = load_arrays(sweep)
        problems = preflight.check(grid, sweep, todo.to_submit, python,
                                   models_exported_by_job=args.export_models,
                                   export_hint=f"make models EXPERIMENT={args.grid}") if todo.to_submit else []
        problems += refusals(sweep, grid.job, todo, export_models=args.export_models)
        if problems:  # one message, nothing queued
            print(f"osmi-ee submit: nothing submitted; {len(problems)} problem(s) would fail the "
                  f"{len(todo.to_submit)} job(s):", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return 2
        sent = submit(sweep, grid.job, todo, export_models=args.export_models)
    except SubmissionError as exc:
        print(f"osmi-ee submit: {exc}", file=sys.stderr)
        return 2
    if sent.export_job:
        print(f"{sent.export_job}	export job: the arrays start once it has exported the models")
    for array in sent.arrays:
        print(f"{array['job_id']}	array {array['name']}: {array['tasks']} task(s), --array={array['array']}")
    if sent.collect_job:
        print(f"{sent.collect_job}	collect job: runs analyze once every array has ended")
    tasks = sum(a["tasks"] for a in sent.arrays)
    print(f"submitted {tasks} experiment(s) in {len(sent.arrays)} job array(s); "
          f"task ids (<array>_<index>) recorded in {sweep.jobs}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from osmi_ee.ee.slurm import experiment_states

    sweep, _ = _sweep_for(args)
    _require_generated(sweep)
    states = experiment_states(sweep)
    width = max((len(i) for i in states), default=10)
    for experiment_id, outcome in states.items():
        print(f"{experiment_id:<{width}}  {outcome.state:<13} {outcome.job_id or '-'}")
    counts = Counter(outcome.state for outcome in states.values())
    keys = ["valid", "failed", "invalid", "cancelled", "interrupted", "pending", "running"]
    others = sorted(set(counts) - set(keys))
    print(" ".join([f"total={len(states)}"]
                   + [f"{k.replace(' ', '_')}={counts.get(k, 0)}" for k in keys + others]))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from osmi_ee.analysis.cli import main as analyze_main

    sweep, _ = _sweep_for(args)
    _require_generated(sweep)
    if not any(sweep.experiment(i).summary.exists() for i in sweep.experiment_ids()):
        print(f"osmi-ee analyze: no experiment of {sweep.root} has finished yet; run them first "
              "(`make run` here, `make submit` on a cluster)", file=sys.stderr)
        return 2
    extra = ["--no-plots"] if args.no_plots else []
    if args.slo_p99_ms is not None:
        extra += ["--slo-p99-ms", str(args.slo_p99_ms)]
    return analyze_main([str(sweep.root), *extra])


def cmd_compare(args: argparse.Namespace) -> int:
    from osmi_ee.analysis.compare import main_compare

    for path in (args.sweep_a, args.sweep_b):
        if not (Path(path) / "sweep.json").exists():
            raise GridError(path, ["not a generated sweep directory (no sweep.json)"])
    return main_compare(args.sweep_a, args.sweep_b, as_json=args.json)


def cmd_setup(args: argparse.Namespace) -> int:
    from osmi_ee.osmi import triton_setup

    return triton_setup.main([*(["--check-only"] if args.check_only else []),
                              *(["--env", str(args.env)] if args.env else [])])


def cmd_calibrate(args: argparse.Namespace) -> int:
    from osmi_ee.bench import calibrate

    return calibrate.main(args=args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("osmi-ee")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osmi-ee",
        description="Sweep the OSMI inference benchmark over a grid: generate experiments, run them "
                    "locally or submit them to Slurm, follow their status, analyze the results.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--grid", default=DEFAULT_GRID, help=f"grid file (default {DEFAULT_GRID})")
        p.add_argument("--out", help="sweep directory (default runs/<grid name>)")
        p.add_argument("--profile", metavar="PATH",
                       help="cluster profile file to use instead of the grid's `profile:`")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="override grid keys, checked like the file: measure.duration_s=5 "
                            "experiment.batch=1,16 (recorded in sweep.json)")
        p.set_defaults(func=func)
        return p

    p = add("models", "train on synthetic data and export the grid's models as SavedModels "
                      "(skips models already exported)", cmd_models)
    p.add_argument("--samples", type=int, default=100, help="synthetic training samples (default 100)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    p.add_argument("--force", action="store_true", help="export again even if present")
    p = add("generate", "validate the grid and write one directory per experiment", cmd_generate)
    p.add_argument("--dry-run", action="store_true", help="print the experiments the grid expands to; write nothing")
    p = add("run", "run the generated experiments here, one after another (no Slurm)", cmd_run)
    p.add_argument("--force", action="store_true", help="rerun experiments that are already valid")
    p = add("search", "per configuration, find the highest load (search.axis: clients or rate) whose run is "
                      "VALID, stable and meets objective.p99_ms: doubling, then bisection; every step is an "
                      "experiment of the sweep, run here; record in <sweep>/search.json; resumable", cmd_search)
    p.add_argument("--analyze", action="store_true",
                   help="then analyze the sweep (dataset, plots, report with the search's curves)")
    p = add("submit", "check what the jobs need, then send every experiment without a valid result or a "
                      "queued task to Slurm: one job array per resource shape (job.max_running, job.retries, "
                      "job.collect)", cmd_submit)
    p.add_argument("--force", action="store_true", help="resubmit experiments that are already valid")
    p.add_argument("--export-models", action="store_true",
                   help="export missing models in a job of their own first; the arrays wait for it")
    add("status", "one line per experiment, then a summary line", cmd_status)
    p = add("analyze", "aggregate results into dataset.csv/.parquet, plots and report/index.html", cmd_analyze)
    p.add_argument("--no-plots", action="store_true", help="dataset only: no plots, no report")
    p.add_argument("--slo-p99-ms", type=float, help="latency objective for the recommender: "
                   "p99 <= X ms (default: none; the fastest valid configuration is named)")
    p = sub.add_parser("compare", help="set two sweeps of the same grid side by side",
                       description="Match the points of two sweeps by their parameters and list, for each, "
                                   "whether both are valid with overlapping 95%% intervals (agree), valid "
                                   "in both with disjoint intervals (DISAGREE: should never happen), or "
                                   "invalid in one. Exit 1 if any point disagrees.")
    p.add_argument("sweep_a", help="first sweep directory (e.g. runs/local)")
    p.add_argument("sweep_b", help="second sweep directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("setup", help="make an optional part ready and check it: triton (tritonserver, "
                                     "perf_analyzer and their Python 3.11 environment, from PyPI)",
                       description="Install (idempotent) and check an optional part. triton: a Debian Python 3.11 "
                                   "environment (default build/triton-env, or $OSMI_TRITON_ENV) with tensorflow-cpu, "
                                   "numpy 1.26.4, nvidia-pytriton (tritonserver 2.51) and tritonclient "
                                   "(perf_analyzer); the check runs a real round trip and fails loudly (exit 1) on "
                                   "a wrong numpy, which would otherwise make Triton answer with empty tensors.")
    p.add_argument("part", choices=["triton"], help="the part to set up")
    p.add_argument("--check-only", action="store_true", help="install nothing; only check")
    p.add_argument("--env", type=Path, help="the environment folder (default $OSMI_TRITON_ENV or build/triton-env)")
    p.set_defaults(func=cmd_setup)
    from osmi_ee.bench.calibrate import build_parser as calibrate_parser

    p = calibrate_parser(sub.add_parser("calibrate", help="our client vs perf_analyzer on the same server and load "
                                                          "(tfserving and triton modes): throughput and p50 ratios"))
    p.set_defaults(func=cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GridError as exc:
        print(exc, file=sys.stderr)
        return 2
    except TemplateError as exc:
        print(f"osmi-ee {args.command}: {exc}", file=sys.stderr)
        return 2
    except MissingExtra as exc:
        print(f"osmi-ee {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handling: one line, no traceback
        print(f"osmi-ee {args.command}: interrupted by SIGINT", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
