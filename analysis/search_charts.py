"""The peak search (`osmi-ee search`, <sweep>/search.json) in the report: per searched
configuration, every step on a latency-throughput curve with the knee (the found
peak) marked, and a table of the steps.

A step without a valid run has no speed: it is never placed on a throughput axis.
It appears in the left panel (load on x) as a red cross on the bottom edge, and in
the table with every reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from osmi_ee.ee.search import load_record

from .charts import Chart
from .report_tables import Table, num
from .panels import style_axes

SECTION = "search"
STEM = "search_peak"
TITLE = "Peak search"
INTRO = ("Each searched configuration: the load was doubled while each step passed (VALID, stable and "
         "within the objective), then bisected between the last load that passed and the first that "
         "failed. Left: throughput per step against the load, with its 95% interval; a red cross on the "
         "bottom edge is a step without a valid run (it has no speed). Right: the latency-throughput curve "
         "of the steps with a speed, in order of load (p50 solid, p99 dashed where measured; hollow: valid "
         "but failed the objective or stability); the star is the knee, the peak found.")


def _speed(step: dict[str, Any]) -> float | None:
    return step["samples_per_s"] if step.get("valid") and step.get("samples_per_s") is not None else None


def figure(entry: dict[str, Any], record: dict[str, Any]) -> Figure:
    """One configuration's steps: throughput vs load, and latency vs throughput, knee marked."""
    axis = record["axis"]
    objective = (record.get("objective") or {}).get("p99_ms")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    steps = sorted(entry["steps"], key=lambda s: s["load"])
    fast = [s for s in steps if _speed(s) is not None]
    if fast:
        lows = [_speed(s) - (s["samples_per_s_ci95"] or [_speed(s)] * 2)[0] for s in fast]
        highs = [(s["samples_per_s_ci95"] or [_speed(s)] * 2)[1] - _speed(s) for s in fast]
        left.errorbar([s["load"] for s in fast], [_speed(s) for s in fast], yerr=[lows, highs], marker="o",
                      capsize=3, color="tab:blue", label="valid step (95% CI)")
        failed = [s for s in fast if not s["passed"]]
        left.scatter([s["load"] for s in failed], [_speed(s) for s in failed], s=80, facecolors="none",
                     edgecolors="tab:orange", zorder=3, label="valid, failed objective/stability")
    invalid = [s for s in steps if _speed(s) is None]
    if invalid:  # x in data, y on the axes' bottom edge: a mark, not a speed
        left.scatter([s["load"] for s in invalid], [0.02] * len(invalid), marker="x", color="tab:red", s=60,
                     transform=left.get_xaxis_transform(), clip_on=False, label="no valid run (no speed)")
    peak = entry.get("peak")
    knee = next((s for s in fast if s["load"] == peak), None)
    if knee is not None:
        left.scatter([knee["load"]], [_speed(knee)], marker="*", s=260, color="gold", edgecolors="black",
                     zorder=4, label=f"peak: {axis}={peak:g}")
    loads = [s["load"] for s in steps]
    if axis == "clients":
        left.set_xscale("log", base=2)
    if loads:  # every step in view, the invalid ones' crosses too (autoscale skips them)
        left.set_xlim(*((min(loads) / 1.4, max(loads) * 1.4) if axis == "clients" else (0, max(loads) * 1.1)))
    style_axes(left, "throughput per step", f"{axis} (load)", "samples/s")
    left.set_ylim(bottom=0)
    left.legend(fontsize=7, loc="upper left")

    for key, style, name in (("latency_p50_ms", "-", "p50"), ("latency_p99_ms", "--", "p99")):
        points = [s for s in fast if s.get(key) is not None]
        if not points:
            continue
        right.plot([_speed(s) for s in points], [s[key] for s in points], linestyle=style, marker="o",
                   color="tab:blue", label=name)
        for s in points:
            if not s["passed"]:
                right.scatter([_speed(s)], [s[key]], s=80, facecolors="none", edgecolors="tab:orange", zorder=3)
            if key == "latency_p50_ms":
                right.annotate(f"{s['load']:g}", (_speed(s), s[key]), textcoords="offset points", xytext=(3, 4),
                               fontsize=7)
    if knee is not None and knee.get("latency_p50_ms") is not None:
        y = knee["latency_p99_ms"] if knee.get("latency_p99_ms") is not None else knee["latency_p50_ms"]
        right.scatter([_speed(knee)], [y], marker="*", s=260, color="gold", edgecolors="black", zorder=4,
                      label=f"knee: {axis}={peak:g}")
    if objective is not None:
        right.axhline(objective, color="tab:red", linestyle=":", label=f"objective p99 {objective:g} ms")
    style_axes(right, "latency vs throughput", "samples/s", "latency per request (ms)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{entry['label']}: " + (f"peak {axis}={peak:g}" if peak is not None else "no load passed"),
                 fontsize=10)
    return fig


def charts(sweep_dir: Path) -> list[Chart]:
    """One chart (a page per configuration) when the sweep has a search record."""
    record = load_record(sweep_dir)
    if not record or not record.get("configurations"):
        return []
    figures = [figure(entry, record) for entry in record["configurations"]]
    return [Chart(STEM, SECTION, TITLE, figures)]


def _step_row(entry: dict[str, Any], step: dict[str, Any], axis: str) -> list[Any]:
    ci = step.get("samples_per_s_ci95")
    speed = (f"{num(_speed(step))} [{num(ci[0])}, {num(ci[1])}]" if _speed(step) is not None and ci
             else num(_speed(step)) if _speed(step) is not None else "– (no speed)")
    verdict = "PASS" if step["passed"] else "fail"
    knee = " (peak)" if step["load"] == entry.get("peak") else ""
    return [entry["label"], f"{step['load']:g}{knee}", step.get("phase", ""), step["state"], verdict, speed,
            num(step.get("latency_p50_ms")), num(step.get("latency_p99_ms")),
            list(step["reasons"]) or "", step["experiment_id"]]


def section(sweep_dir: Path) -> dict[str, Any] | None:
    """The report section's table and text; None when the sweep was not searched."""
    record = load_record(sweep_dir)
    if not record:
        return None
    axis = record["axis"]
    rows, peaks = [], []
    for entry in record["configurations"]:
        for step in entry["steps"]:  # in the order they ran
            rows.append(_step_row(entry, step, axis))
        found = f"{axis}={entry['peak']:g}" if entry.get("peak") is not None else "none (the first load failed)"
        state = "" if entry.get("done") else " (search not finished)"
        peaks.append(f"{entry['label']}: peak {found}, {len(entry['steps'])} step(s){state}")
    objective = (record.get("objective") or {}).get("p99_ms")
    table = Table("search-steps", ["configuration", axis, "phase", "state", "verdict", "samples/s [95% CI]",
                                   "p50 ms", "p99 ms", "reasons", "experiment"], rows)
    rule = f"objective p99 ≤ {objective:g} ms" if objective is not None else "no latency objective"
    return {"strong": peaks, "table": table,
            "paragraphs": [INTRO, f"Search of {axis} from {record['start']:g} to {record['max']:g} "
                                  f"(resolution {record['resolution']:g}), {rule}. Without 1,000 requests a "
                                  "step has no p99; it then meets the objective only if its slowest request does."]}
