"""`osmi-analyze SWEEP_DIR`: dataset + figures for one sweep, and a summary table.

The last stdout line is always `dataset: <absolute path to dataset.csv>` so
scripts (and `make analyze`) can pick the file up without parsing the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .collect import SweepError, collect, write_dataset

MAX_INVALID_LISTED = 20  # keep the "invalid:" line a line, not a page

_FMT_NUM = "{:,.1f}"


def _cell(value: Any, fmt: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if value == "":
        return "-"
    return fmt.format(value) if fmt else str(value)


def _latency_cell(row: pd.Series) -> str:
    p50, p99 = row.get("latency_p50_ms"), row.get("latency_p99_ms")
    if not row["valid"]:
        return "-"
    return f"{_cell(p50, '{:.1f}')}/{_cell(p99, '{:.1f}')}"


def _table_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(header, column) pairs; gpu/repeat only when they vary, to stay short."""
    cols = [(c, c) for c in ("model", "servers", "clients", "batch") if c in df.columns]
    for extra in ("gpu", "repeat"):
        if extra in df.columns and df[extra].nunique(dropna=False) > 1:
            cols.append((extra, extra))
    return cols


def format_table(df: pd.DataFrame, max_rows: int) -> list[str]:
    """Fixed-width lines: params, valid, samples/s, p50/p99 ms, shares."""
    axes = _table_columns(df)
    header = [h for h, _ in axes] + ["valid", "samples/s", "p50/p99 ms", "shares"]
    body = []
    for _, row in df.head(max_rows).iterrows():
        cells = [_cell(row[c]) for _, c in axes]
        valid = "yes" if row["valid"] else ("missing" if row["status"] == "missing" else "NO")
        cells += [valid, _cell(row["samples_per_s"], _FMT_NUM), _latency_cell(row),
                  _cell(row["backend_shares"])]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    numeric = {h for h in header if h not in ("model", "valid", "shares", "gpu")}

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osmi-analyze",
        description="Collect a sweep's results into dataset.csv/.parquet and draw "
        "its figures (PNG + SVG) into SWEEP_DIR/plots/.",
    )
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=Path,
                        help="sweep directory holding sweep.json and one folder per experiment")
    parser.add_argument("--no-plots", action="store_true", help="write the dataset only")
    parser.add_argument("--rows", type=int, default=40, metavar="N",
                        help="print at most N table rows (default 40)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sweep_dir: Path = args.sweep_dir.resolve()
    try:
        df = collect(sweep_dir)  # raises before anything is written
    except SweepError as exc:
        print(f"osmi-analyze: error: {exc}", file=sys.stderr)
        return 2
    csv_path, _ = write_dataset(df, sweep_dir)
    if not args.no_plots:
        from .plots import make_plots  # matplotlib import only when plotting

        paths = make_plots(df, sweep_dir / "plots")
        print(f"plots: {len(paths)} files in {sweep_dir / 'plots'}")
    for line in format_table(df, max(0, args.rows)):
        print(line)
    bad = invalid_line(df)
    if bad:
        print(bad)
    print(f"dataset: {csv_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
