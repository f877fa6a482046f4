"""The `plots/` folder: every chart of `charts.build_charts` as PNG and SVG.

Page 1 of a chart is `<stem>.png`/`.svg`, page i > 1 `<stem>-<i>.*`. Files of
our charts left by an earlier analysis that drew more pages are removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from osmi_ee.ee.paths import atomic_write

from .aggregate import aggregate
from .charts import Chart, build_charts

FORMATS = ("png", "svg")
DPI = 120


def page_stem(stem: str, page: int) -> str:
    return stem if page == 1 else f"{stem}-{page}"


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save as PNG and SVG, each atomically (temp file + os.replace)."""
    paths = []
    # Fixed hash salt and no date: the same data gives byte-identical SVGs.
    with matplotlib.rc_context({"svg.hashsalt": "osmi-ee"}):
        for fmt in FORMATS:
            path = out_dir / f"{stem}.{fmt}"
            metadata = {"Date": None} if fmt == "svg" else None
            atomic_write(path, lambda tmp, fmt=fmt, metadata=metadata: fig.savefig(
                tmp, format=fmt, dpi=DPI, metadata=metadata))
            paths.append(path)
            # The first save laid the figure out; keep that layout for the other
            # format instead of paying for constrained layout again.
            fig.set_layout_engine("none")
    return paths


def _remove_stale(out_dir: Path, charts: Sequence[Chart], written: set[Path]) -> None:
    ours = re.compile(rf"^({'|'.join(re.escape(c.stem) for c in charts)})(-\d+)?\.({'|'.join(FORMATS)})$")
    for path in out_dir.iterdir():
        if path not in written and ours.match(path.name):
            path.unlink(missing_ok=True)


def write_plots(charts: Sequence[Chart], out_dir: Path | str) -> list[Path]:
    """Every page of every chart into `out_dir`; each chart remembers its PNGs
    (`Chart.pngs`) so the report can reuse them instead of drawing again."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for chart in charts:
        chart.pngs = []
        for i, fig in enumerate(chart.figures, 1):
            saved = save_figure(fig, out_dir, page_stem(chart.stem, i))
            chart.pngs.append(saved[0])
            paths.extend(saved)
    _remove_stale(out_dir, charts, set(paths))
    return paths


def make_plots(df: pd.DataFrame, out_dir: Path | str) -> list[Path]:
    """Dataset -> plots/ in one call (without the latency CDF, which needs the
    request records): for scripts and tests; `osmi-analyze` builds the charts
    once and shares them with the report."""
    return write_plots(build_charts(df, aggregate(df)), out_dir)
