"""`osmi-analyze SWEEP_DIR`: dataset, per-configuration summary, perf_analyzer
CSV, figures and the HTML report for one sweep, and a summary table.

The stages run once each, in order: read the results (`collect`), aggregate
them per configuration (`aggregate`, once: everything downstream gets this
table), write the tables, build the charts (`charts`) and save them into
`plots/`, recommend (`recommend`) and render the report (`report`); plots and
report are skipped with --no-plots. The last stdout line is always
`dataset: <absolute path to dataset.csv>` so scripts (and `make analyze`) can
pick the file up without parsing the table; `report: <path>` comes just before.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from osmi_ee.ee.paths import SweepPaths

from .aggregate import aggregate, write_summary
from .collect import SweepError, collect
from .dataset import backend_columns, natural_key, write_dataset
from .perf_analyzer import write_perf_analyzer

MAX_INVALID_LISTED = 20  # keep the "invalid:" line a line, not a page

_FMT_NUM = "{:,.1f}"


def _cell(value: Any, fmt: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if value == "":
        return "-"
    return fmt.format(value) if fmt else str(value)


def _speed_cell(row: pd.Series) -> str:
    """samples/s ± half its 95% interval, e.g. `620.2 ±53.1`."""
    speed = _cell(row["samples_per_s"], _FMT_NUM)
    low, high = row.get("samples_per_s_ci95_low"), row.get("samples_per_s_ci95_high")
    if speed == "-" or _cell(low) == "-" or _cell(high) == "-":
        return speed
    return f"{speed} ±{(high - low) / 2:,.1f}"


def _shares_cell(row: pd.Series, backends: list[str]) -> str:
    """Each backend's share of the requests, e.g. `0.50/0.50`; `-` without counts."""
    counts = [row[c] for c in backends if not pd.isna(row[c])]
    total = sum(counts)
    return "/".join(f"{c / total:.2f}" for c in counts) if total else "-"


def _latency_cell(row: pd.Series) -> str:
    p50, p99 = row.get("latency_p50_ms"), row.get("latency_p99_ms")
    if not row["valid"]:
        return "-"
    return f"{_cell(p50, '{:.1f}')}/{_cell(p99, '{:.1f}')}"


def _table_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(header, column) pairs; gpu/scenario/rate/repeat only when they vary, to stay short."""
    cols = [(c, c) for c in ("model", "servers", "clients", "batch") if c in df.columns]
    for extra in ("gpu", "scenario", "rate", "repeat"):
        if extra in df.columns and df[extra].nunique(dropna=False) > 1:
            cols.append((extra, extra))
    return cols


def format_table(df: pd.DataFrame, max_rows: int) -> list[str]:
    """Fixed-width lines: params, valid, samples/s, p50/p99 ms, shares."""
    axes = _table_columns(df)
    backends = sorted(backend_columns(df), key=natural_key)
    header = [h for h, _ in axes] + ["valid", "samples/s (95% CI)", "p50/p99 ms", "shares"]
    body = []
    for _, row in df.head(max_rows).iterrows():
        cells = [_cell(row[c]) for _, c in axes]
        valid = "yes" if row["valid"] else ("missing" if row["status"] == "missing" else "NO")
        cells += [valid, _speed_cell(row), _latency_cell(row), _shares_cell(row, backends)]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric = {h for h in header if h not in ("model", "valid", "shares", "gpu", "scenario")}

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, header)]
        return "  ".join(out).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(cells) for cells in body]
    if len(df) > max_rows:
        lines.append(f"... {len(df) - max_rows} more experiments in the dataset")
    return lines


def invalid_line(df: pd.DataFrame) -> str | None:
    """`invalid (N): id (reason); ...`, or None when every run is valid."""
    bad = df[~df["valid"]]
    if bad.empty:
        return None
    items = [f"{r.experiment_id} ({r.reason})" for r in bad.head(MAX_INVALID_LISTED).itertuples()]
    more = len(bad) - len(items)
    tail = f"; ... {more} more" if more > 0 else ""
    return f"invalid ({len(bad)} of {len(df)}): " + "; ".join(items) + tail


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of milliseconds, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osmi-analyze",
        description="Collect a sweep's results into dataset.csv/.parquet, "
        "dataset_summary.csv (one row per configuration, with the 95% CI over repeats) and "
        "perf_analyzer.csv (perf_analyzer's CSV layout, one row per valid configuration), "
        "draw its figures (PNG + SVG) into SWEEP_DIR/plots/ and write the HTML report "
        "SWEEP_DIR/report/index.html with a recommended configuration per model.",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path,
                        help="sweep directory holding sweep.json and one folder per experiment")
    parser.add_argument("--no-plots", action="store_true",
                        help="write the dataset and its summary only (no plots, no report)")
    parser.add_argument("--slo-p99-ms", type=_positive_float, default=None, metavar="X",
                        help="latency objective for the recommendation: p99 <= X ms (default: "
                        "none; the fastest valid configuration is named, and the report says so)")
    parser.add_argument("--rows", type=int, default=40, metavar="N",
                        help="print at most N table rows (default 40)")
    return parser


def _figures_and_report(df: pd.DataFrame, table: pd.DataFrame, sweep_dir: Path,
                        slo_p99_ms: float | None) -> Path:
    # matplotlib and Jinja2 are imported only when drawing
    from .charts import build_charts
    from .plots import write_plots
    from .recommend import recommend
    from .records import LatencySamples
    from .report import write_report

    valid = df[df["valid"].astype(bool)]["experiment_id"].astype(str).tolist()
    charts = build_charts(df, table, LatencySamples(sweep_dir, valid))
    plots_dir = SweepPaths(sweep_dir).plots
    paths = write_plots(charts, plots_dir)
    print(f"plots: {len(paths)} files in {plots_dir}")
    return write_report(sweep_dir, df, table, charts, recommend(table, slo_p99_ms), slo_p99_ms=slo_p99_ms)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sweep_dir: Path = args.sweep_dir.resolve()
    try:
        df = collect(sweep_dir)  # raises before anything is written
    except SweepError as exc:
        print(f"osmi-analyze: error: {exc}", file=sys.stderr)
        return 2
    csv_path, _ = write_dataset(df, sweep_dir)
    table = aggregate(df)  # once: the summary, the figures, the recommender and the report share it
    summary_path = write_summary(table, sweep_dir)
    perf_path = write_perf_analyzer(table, sweep_dir)
    report_path = None
    if not args.no_plots:
        report_path = _figures_and_report(df, table, sweep_dir, args.slo_p99_ms)
    for line in format_table(df, max(0, args.rows)):
        print(line)
    bad = invalid_line(df)
    if bad:
        print(bad)
    print(f"summary: {summary_path.resolve()}")
    print(f"perf_analyzer: {perf_path.resolve()}")
    if report_path is not None:
        print(f"report: {report_path.resolve()}")
    print(f"dataset: {csv_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
