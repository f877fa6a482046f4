"""The static HTML report of one sweep: `<sweep>/report/index.html`, rendered
from templates/report.html (Jinja2, autoescaped), with its PNG figures in the
same folder (relative links only: the folder can be copied or served as is).

Its inputs are built elsewhere, once per analysis: the dataset (`collect`),
its per-configuration table (`aggregate`), the charts (`charts`) and the
recommendation (`recommend`). What the report promises:
  * speeds, latencies and costs come only from valid runs; invalid, unreadable
    and unfinished runs are listed with every reason in their own table;
  * it names what produced the numbers (server software and version, host,
    balancer, commit), from the runs' own manifests;
  * every value is escaped by the template engine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from osmi_ee.ee.paths import ExperimentPaths, SweepPaths, atomic_write

from . import report_tables as tables
from . import search_charts
from .aggregate import SUMMARY_FILE, key_columns
from .charts import Chart
from .collect import SweepError, load_sweep
from .dataset import param_columns
from .distribution_charts import MAX_CDF_LINES
from .panels import levels, value_text, varying
from .perf_analyzer import CSV_FILE as PERF_ANALYZER_FILE
from .plots import page_stem
from .records import MAX_SAMPLES

TEMPLATE = "report.html"
FIG_PREFIX = "fig-"
DPI = 100  # figures drawn here when plots/ was not written

THROUGHPUT_MEANING = (
    "Throughput is the number of successful samples per second over the measured window, "
    "all clients together (samples = requests × batch size). The window runs from the first "
    "measured request's start to the last one's end; warm-up requests are never counted. "
    "Latency percentiles are over successful measured requests, per request as the client saw "
    "it. Only valid runs carry a speed: a run with any failed or unaccounted request, a client "
    "that did not exit cleanly, or a starved backend is invalid and appears only in the table "
    "of invalid runs."
)
# (anchor, heading, introduction, what to say when the section has no chart)
SECTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("recommendation", "Recommendation", "", ""),
    ("search", "Peak search", "", ""),  # only in sweeps `osmi-ee search` wrote (analysis/search_charts.py)
    ("latency-throughput", "Latency vs throughput",
     "The first chart to read: each configuration is a point, its throughput against its p50 "
     "(solid) and p99 (dashed) latency, and a line joins one server count's configurations in "
     "order of increasing concurrency (clients × streams: the number at each point). Right and "
     "low is good; where a line turns steeply up, more load only queues.", ""),
    ("throughput", "Throughput vs load", "Colours are server counts, the same in every figure.", ""),
    ("scaling", "Scaling efficiency vs servers",
     "With all other parameters equal, how much of N× the one-server throughput N servers "
     "deliver (1 = linear scaling). Open-loop runs are left out: their throughput is set by the "
     "offered rate.",
     "Not computable: no configuration was measured validly both with 1 server and with more "
     "(all other parameters equal)."),
    ("latency", "Latency p50 / p90 / p99 vs load", "", ""),
    ("cdf", "Latency distribution: CDF and tail",
     "Left: the fraction of requests at or below each latency (dotted: median and p99). Right: "
     "the tail, 1 − CDF on a log scale, the fraction of requests at or above each latency, where "
     f"p99 (0.01) and p99.9 (0.001) are read. One line per valid run (at most {MAX_CDF_LINES} a "
     f"panel, records sampled to at most {MAX_SAMPLES:,} per run); colour = server count.",
     "No valid runs with request records."),
    ("heatmap", "Throughput over batch × clients", "",
     "Not drawn: batch size and clients do not both vary among the valid closed-loop runs."),
    ("backends", "Per-backend share",
     "Share of the measured requests each backend (model-server shard) received, as counted by "
     "HAProxy: a dot per backend, dashed = fair share 1/N, red dotted = the least a backend may "
     "get in a valid run (min_backend_share × 1/N), a red cross = a backend below it. Invalid "
     "runs are included here (marked), since a starved backend is often why a run is invalid.", ""),
    ("resources", "Resource use: CPU, GPU and energy", "", ""),
    ("batching", "Server-side batching", "", ""),  # only in sweeps with the batching axis
    ("invalid", "Invalid and missing runs", "", ""),
    ("repeats", "Configurations and repeats (95% CI)", "", ""),
)
REPEATS_TEXT = ("One row per configuration (all parameters but repeat). Means and the 95% confidence "
                "interval of the mean (Student t, n − 1 degrees of freedom; a single run: its own "
                "batch-means interval) are over valid runs only; invalid and unfinished repeats are "
                "counted, never averaged.")


# --------------------------------------------------------------------------
# What produced the numbers


def provenance(sweep_dir: Path, runs: pd.DataFrame) -> dict[str, list[str]]:
    """What produced these figures, from the runs' own manifests (env.json): each
    fact with every distinct value seen, so a mixed sweep shows as mixed."""
    facts: dict[str, set[str]] = {k: set() for k in (
        "server", "balancer", "host", "cpu", "gpu", "date", "osmi-ee", "git commit")}
    for _, row in runs.iterrows():
        try:
            env = json.loads(ExperimentPaths(sweep_dir / str(row["experiment_id"])).env.read_text())
        except (OSError, ValueError):
            continue
        version = row.get("server_version")
        facts["server"].add(str(version) if version else str(row.get("server_kind") or "?"))
        facts["balancer"].add(env.get("haproxy") or "?")
        facts["host"].add(env.get("host") or "?")
        facts["cpu"].add(f"{env.get('cpu_model') or '?'} ({env.get('cpu_count')} cores)")
        gpus = env.get("cuda_visible_devices")
        facts["gpu"].add(f"CUDA_VISIBLE_DEVICES={gpus}" if gpus else "none (CPU)")
        facts["date"].add(str(env.get("started_at") or "")[:10] or "?")
        facts["osmi-ee"].add(str((env.get("packages") or {}).get("osmi-ee") or "?"))
        facts["git commit"].add(str(env.get("git_commit") or "?")[:12])
    return {k: sorted(v) for k, v in facts.items() if v}


# --------------------------------------------------------------------------
# Figures


def _images(charts: Sequence[Chart], out_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Each chart's pages as PNGs in the report folder, by section: copied from
    plots/ when it drew them, drawn here otherwise. A chart with nothing to draw
    gives its message instead of an image. Stale figures are removed."""
    by_section: dict[str, list[dict[str, str]]] = {}
    written = set()
    for chart in charts:
        items = by_section.setdefault(chart.section, [])
        if chart.message:
            items.append({"message": f"{chart.title}: {chart.message}."})
            continue
        for i, fig in enumerate(chart.figures, 1):
            name = f"{FIG_PREFIX}{page_stem(chart.stem, i)}.png"
            dest = out_dir / name
            if i <= len(chart.pngs) and chart.pngs[i - 1].is_file():
                atomic_write(dest, lambda tmp, src=chart.pngs[i - 1]: shutil.copyfile(src, tmp))
            else:
                atomic_write(dest, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=DPI))
            written.add(name)
            pages = f" ({i}/{len(chart.figures)})" if len(chart.figures) > 1 else ""
            items.append({"src": name, "alt": f"{chart.title}{pages}"})
    for path in out_dir.glob(f"{FIG_PREFIX}*.png"):
        if path.name not in written:
            path.unlink(missing_ok=True)
    return by_section


# --------------------------------------------------------------------------
# Sections


def _slo_text(slo_p99_ms: float | None) -> str:
    if slo_p99_ms is None:
        return ("No objective was set (pass --slo-p99-ms): the fastest valid configuration is "
                "shown, whatever its latency.")
    return f"SLO: p99 latency ≤ {tables.fmt(slo_p99_ms, '{:g}')} ms (given)."


def _recommendation(rec: dict[Any, dict[str, Any]], cols: list[str], varied: list[str],
                    slo_p99_ms: float | None) -> dict[str, Any]:
    if not rec or all(entry["eligible"] == 0 for entry in rec.values()):
        return {"paragraphs": ["No valid runs (no configuration with every repeat valid): nothing to "
                               "recommend."]}
    return {"paragraphs": [
        _slo_text(slo_p99_ms) + " Candidates are configurations whose every repeat is valid; a "
        "candidate meets the SLO when its worst p99 over the repeats does. Fastest = highest mean "
        "samples/s; a configuration whose 95% interval overlaps the fastest's is a tie, listed below "
        "it, since the data cannot tell them apart; cheapest = lowest cost per million samples "
        "(price per GPU-hour × servers at the measured speed)."],
        "table": tables.recommendation(rec, cols, varied)}


def _resources(table: pd.DataFrame, cols: list[str]) -> dict[str, Any]:
    def measured(col: str) -> bool:
        return col in table.columns and bool(table[col].notna().any())

    strong = []
    if not (measured("gpu_util_percent_mean") or measured("gpu_power_w_mean") or measured("energy_j_per_sample_mean")):
        strong.append("GPU utilisation and energy per sample: not measured (no GPU telemetry).")
    elif not measured("energy_j_per_sample_mean"):
        strong.append("Energy per sample: not measured (no GPU telemetry with energy).")
    found = tables.resources(table, cols)
    if found is None:
        return {"strong": [*strong, "No server telemetry either (CPU, memory)."]}
    return {"strong": strong, "table": found, "paragraphs": [
        "Means over the valid repeats of each configuration; server figures are averaged over the "
        "shards (RSS: the largest), GPU figures over the GPUs; client CPU is all clients' CPU time "
        "in the measured window per successful request."]}


def _batching(runs: pd.DataFrame) -> dict[str, Any] | None:
    found = tables.batching(runs)
    if found is None:
        return None
    return {"table": found, "paragraphs": [
        "One row per run. The setting (max batch, timeout, threads) is what the servers were started "
        "with; server batches and their sizes are what the servers reported for the measured window "
        "(all shards together; TF-Serving reports sizes in power-of-two buckets, osmi-model-server "
        "exactly). Empty: batching off, or the server reported none."]}


def _invalid(runs: pd.DataFrame) -> dict[str, Any]:
    found = tables.invalid(runs)
    if found is None:
        return {"paragraphs": ["None: every run is valid."]}
    return {"table": found, "paragraphs": [
        "These runs carry no speed and are in no figure or average above (except the "
        "backend-share chart, where they are marked)."]}


def _repeats(table: pd.DataFrame, cols: list[str]) -> dict[str, Any]:
    found = tables.repeats(table, cols)
    if found is None:
        return {"paragraphs": ["No configurations."]}
    return {"table": found, "paragraphs": [REPEATS_TEXT]}


def _overview(runs: pd.DataFrame, table: pd.DataFrame, sweep: dict[str, Any]) -> dict[str, Any]:
    varied, fixed = [], []
    for c in param_columns(runs):
        values = [value_text(v) for v in levels(runs[c])]  # grid order
        if len(values) > 1:
            varied.append(f"{c} ∈ {{{', '.join(values)}}}")
        else:
            fixed.append(f"{c}={values[0] if values else '–'}")
    return {"name": sweep.get("name") or "", "profile": sweep.get("profile") or "",
            "counts": tables.counts(runs, table), "varied": ", ".join(varied) or "nothing",
            "fixed": ", ".join(fixed), "meaning": THROUGHPUT_MEANING,
            "files": [(f"../{SweepPaths(Path('.')).dataset_csv.name}", "one row per run"),
                      (f"../{SUMMARY_FILE}", "one row per configuration"),
                      (f"../{PERF_ANALYZER_FILE}", "perf_analyzer's CSV layout, one row per valid configuration")]}


def _sections(runs: pd.DataFrame, table: pd.DataFrame, images: dict[str, list[dict[str, str]]],
              rec: dict[Any, dict[str, Any]], slo_p99_ms: float | None,
              search: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    cols = key_columns(table)
    special = {"search": lambda: search,
               "recommendation": lambda: _recommendation(rec, cols, varying(runs), slo_p99_ms),
               "resources": lambda: _resources(table, cols),
               "invalid": lambda: _invalid(runs),
               "batching": lambda: _batching(runs),
               "repeats": lambda: _repeats(table, cols)}
    out = []
    for anchor, heading, intro, empty in SECTIONS:
        shown = images.get(anchor, [])
        drawn = any("src" in item for item in shown)
        section: dict[str, Any] = {"id": anchor, "title": heading, "strong": [], "table": None,
                                   "images": shown, "paragraphs": [intro] if intro and drawn else []}
        extra = special[anchor]() if anchor in special else {}
        if extra is None:  # a section this sweep has nothing for
            continue
        section["paragraphs"] += extra.pop("paragraphs", [])
        section.update(extra)
        if not shown and empty:
            section["paragraphs"].append(empty)
        out.append(section)
    return out


def _render(context: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(**context)


def write_report(sweep_dir: Path | str, runs: pd.DataFrame, table: pd.DataFrame, charts: Sequence[Chart],
                 recommendation: dict[Any, dict[str, Any]], *, slo_p99_ms: float | None = None) -> Path:
    """Write `<sweep_dir>/report/index.html` and its PNG figures; return the page's path.

    `runs`: the dataset; `table`: its aggregate; `charts`: from charts.build_charts
    (their PNGs are copied from plots/ when write_plots saved them);
    `recommendation`: from recommend.recommend(table, slo_p99_ms)."""
    sweep_dir = Path(sweep_dir)
    out_dir = SweepPaths(sweep_dir).report
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        sweep = load_sweep(sweep_dir)
    except SweepError:
        sweep = {}
    title = f"osmi-ee report: {sweep.get('name') or sweep_dir.name}"
    charts = [*charts, *search_charts.charts(sweep_dir)]  # the peak search's curves, when it ran
    page = _render({"title": title, "provenance": provenance(sweep_dir, runs),
                    "overview": _overview(runs, table, sweep),
                    "sections": _sections(runs, table, _images(charts, out_dir), recommendation, slo_p99_ms,
                                          search_charts.section(sweep_dir))})
    index = SweepPaths(sweep_dir).report_index
    atomic_write(index, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return index
