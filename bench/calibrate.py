"""`osmi-ee calibrate`: our client against Triton's perf_analyzer, same server, same load.

For each server (tfserving mode: TF-Serving's API, i.e. tensorflow_model_server
where installed, else osmi-model-server; triton mode: the local tritonserver),
one shard is brought up as a job would, then measured in turns by our client
(closed loop, `concurrency` requests in flight) and by perf_analyzer
(--concurrency-range c:c, the same model and batch). Two independent load
generators that agree on throughput and median latency are evidence that
neither mismeasures; the ratios ours / perf_analyzer are printed and returned.

perf_analyzer's own stability rule (3 windows within 10%) rarely holds on a
small shared machine, so it runs with wider windows and a looser bound
(--measurement-interval, --stability-percentage, -r); our side measures for a
comparable time. Rounds alternate the two (ours, theirs, ours, theirs ...), so a
drifting machine spreads over both.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MODES = {"tfserving": "auto", "triton": "triton"}  # calibrate mode -> serve.server
DEFAULT_TOLERANCE = 0.25  # |ratio - 1| both figures may differ by (see README, "Calibration")


@dataclass(frozen=True)
class Load:
    model: str = "small_lstm"
    batch: int = 4
    concurrency: int = 2
    duration_s: float = 6.0  # ours per round; perf_analyzer: windows of duration_s / 3
    rounds: int = 2
    warmup: int = 20


@dataclass(frozen=True)
class Figures:
    samples_per_s: float
    p50_ms: float
    requests: int


def measure_ours(target: str, server: str, load: Load, records: Path) -> Figures:
    """Our client, in this process, exactly as a job's client runs (closed loop)."""
    import pandas as pd

    from osmi_ee.osmi.client import ClientSettings, run_client
    from osmi_ee.osmi.schema import MEASURED

    settings = ClientSettings(model=load.model, batch=load.batch, scenario="closed", streams=load.concurrency,
                              rate=None, requests=None, duration_s=load.duration_s, warmup=load.warmup,
                              warmup_s=0.0, timeout_s=60.0, seed=0, server=server)
    summary = run_client(settings, 0, target, records, barrier=None)
    if summary["failed"] or not summary["ok"]:
        raise RuntimeError(f"our client: {summary['failed']} of {summary['sent']} requests failed: "
                           f"{summary['errors']}")
    frame = pd.read_parquet(records)
    done = frame[(frame.phase == MEASURED) & (frame.code == 0)]
    window_s = ((done.start_ns + done.latency_ns).max() - done.start_ns.min()) / 1e9
    return Figures(len(done) * load.batch / window_s, float(done.latency_ns.median()) / 1e6, len(done))


def perf_analyzer_argv(binary: Path, target: str, mode: str, load: Load, csv_path: Path) -> list[str]:
    window_ms = max(1000, int(load.duration_s * 1000 / 3))
    return [str(binary), "-m", load.model, "-u", target, "-i", "grpc",
            *(["--service-kind=tfserving"] if mode == "tfserving" else []),
            "-b", str(load.batch), "--concurrency-range", f"{load.concurrency}:{load.concurrency}",
            "--measurement-interval", str(window_ms), "--stability-percentage", "50", "-r", "8",
            "-f", str(csv_path)]


def read_perf_csv(path: Path) -> Figures:
    """perf_analyzer's -f CSV: Inferences/Second counts samples (-b); latencies in µs."""
    with open(path, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    return Figures(float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000, 0)


def measure_perf_analyzer(target: str, mode: str, load: Load, work: Path) -> Figures:
    from osmi_ee.osmi.triton_setup import TritonInstall

    install = TritonInstall.default()
    csv_path = work / f"perf-{mode}.csv"
    argv = perf_analyzer_argv(install.perf_analyzer, target, mode, load, csv_path)
    out = subprocess.run(argv, capture_output=True, text=True, env=install.perf_env(), timeout=300)
    if out.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"perf_analyzer exited {out.returncode}: {(out.stderr or out.stdout).strip()[-400:]}")
    return read_perf_csv(csv_path)


def start_server(group: Any, mode: str, load: Load, models_dir: Path, work: Path) -> tuple[str, str]:
    """One shard of the mode's server, as a job starts it; returns (target, server kind)."""
    from osmi_ee.osmi.fleet import Fleet, write_server_configs
    from osmi_ee.osmi.triton_repo import write_triton_repository

    server = MODES[mode]
    model_config, monitoring = work / "models.config", work / "monitoring.config"
    write_server_configs(load.model, models_dir, model_config, monitoring)
    if server == "triton":
        model_config = write_triton_repository(work / "triton-models", load.model, models_dir)
    fleet = Fleet(group)
    fleet.start_shards(1, model=load.model, server=server, given_command=[], model_config=model_config,
                       monitoring_config=monitoring, log=lambda k: work / f"{mode}-server-{k}.log",
                       intra_op_threads=0, timeout_s=180)
    return f"127.0.0.1:{fleet.shards[0].port}", fleet.kind


def calibrate(modes: list[str], load: Load, models_dir: Path, say=print) -> list[dict[str, Any]]:
    """One row per mode: both tools' figures (means over the rounds) and the ratios ours / theirs."""
    from osmi_ee.osmi.env import MachineLoad, busy_machine_note
    from osmi_ee.osmi.procs import ProcessGroup

    rows = []
    with tempfile.TemporaryDirectory(prefix="osmi-calibrate-") as tmp:
        for mode in modes:
            work = Path(tmp) / mode
            work.mkdir()
            group = ProcessGroup()
            try:
                target, kind = start_server(group, mode, load, models_dir, work)
                machine = MachineLoad()  # what else ran while both tools measured
                ours, theirs = [], []
                for r in range(load.rounds):
                    ours.append(measure_ours(target, MODES[mode], load, work / f"ours-{r}.parquet"))
                    theirs.append(measure_perf_analyzer(target, mode, load, work))
                    say(f"calibrate {mode} round {r + 1}: ours {ours[-1].samples_per_s:.1f} samples/s "
                        f"p50 {ours[-1].p50_ms:.2f} ms; perf_analyzer {theirs[-1].samples_per_s:.1f} samples/s "
                        f"p50 {theirs[-1].p50_ms:.2f} ms")
                busy = machine.finish()
            finally:
                group.stop(grace_s=5)
            mean = lambda xs, f: statistics.fmean(getattr(x, f) for x in xs)  # noqa: E731
            row = {"mode": mode, "server_kind": kind, **asdict(load),
                   "ours_samples_per_s": mean(ours, "samples_per_s"), "ours_p50_ms": mean(ours, "p50_ms"),
                   "perf_analyzer_samples_per_s": mean(theirs, "samples_per_s"),
                   "perf_analyzer_p50_ms": mean(theirs, "p50_ms")}
            row["throughput_ratio"] = row["ours_samples_per_s"] / row["perf_analyzer_samples_per_s"]
            row["p50_ratio"] = row["ours_p50_ms"] / row["perf_analyzer_p50_ms"]
            row["machine_load"] = busy
            row["busy_note"] = busy_machine_note(busy)  # None on a quiet machine
            rows.append(row)
    return rows


def agree(row: dict[str, Any], tolerance: float) -> bool:
    return abs(row["throughput_ratio"] - 1) <= tolerance and abs(row["p50_ratio"] - 1) <= tolerance


def table(rows: list[dict[str, Any]], tolerance: float) -> str:
    lines = [f"{'mode':<10} {'server':<24} {'ours smp/s':>10} {'pa smp/s':>10} {'ratio':>6} "
             f"{'ours p50':>9} {'pa p50':>9} {'ratio':>6}  within {tolerance:.0%}"]
    for r in rows:
        lines.append(f"{r['mode']:<10} {r['server_kind']:<24} {r['ours_samples_per_s']:>10.1f} "
                     f"{r['perf_analyzer_samples_per_s']:>10.1f} {r['throughput_ratio']:>6.3f} "
                     f"{r['ours_p50_ms']:>7.2f}ms {r['perf_analyzer_p50_ms']:>7.2f}ms {r['p50_ratio']:>6.3f}  "
                     f"{'agree' if agree(r, tolerance) else 'DISAGREE'}")
    lines += [f"{r['mode']}: {r['busy_note']}; the ratios are not a quiet run's" for r in rows if r["busy_note"]]
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="osmi-ee calibrate")
    parser.description = (
        "Measure one server shard with our client and with Triton's perf_analyzer at the same model, "
        "batch and concurrency, in tfserving mode (TF-Serving's API: tensorflow_model_server if installed, "
        "else osmi-model-server) and triton mode (the local tritonserver), and print the ratios ours / "
        "perf_analyzer of throughput and p50 latency. Needs `make triton` (perf_analyzer) and an exported "
        "model (`make models`). Exit 1 when a ratio is off by more than --tolerance.")
    parser.add_argument("--modes", default="tfserving,triton", help="comma list of tfserving, triton")
    parser.add_argument("--model", default=Load.model, help=f"model (default {Load.model})")
    parser.add_argument("--batch", type=int, default=Load.batch, help=f"samples per request (default {Load.batch})")
    parser.add_argument("--concurrency", type=int, default=Load.concurrency,
                        help=f"requests in flight (default {Load.concurrency})")
    parser.add_argument("--duration-s", type=float, default=Load.duration_s,
                        help=f"our measured window per round (default {Load.duration_s:g})")
    parser.add_argument("--rounds", type=int, default=Load.rounds, help=f"alternating rounds (default {Load.rounds})")
    parser.add_argument("--models-dir", type=Path, default=Path("build/models"),
                        help="exported SavedModels (default build/models)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest |ratio - 1| that counts as agreement (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return parser


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes or min(args.batch, args.concurrency, args.rounds) < 1 or not args.duration_s > 0:
        print(f"osmi-ee calibrate: --modes takes {', '.join(MODES)}; --batch, --concurrency, --rounds >= 1, "
              "--duration-s > 0", file=sys.stderr)
        return 2
    from osmi_ee.osmi.fleet import SetupError

    load = Load(args.model, args.batch, args.concurrency, args.duration_s, args.rounds)
    try:
        rows = calibrate(modes, load, args.models_dir.resolve(), say=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, OSError, SetupError) as exc:
        print(f"osmi-ee calibrate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=1) if args.json else table(rows, args.tolerance))
    return 0 if all(agree(r, args.tolerance) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
