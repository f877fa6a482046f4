"""What the bench's figures are held against, and what each figure means."""

from __future__ import annotations

from typing import Any

TARGETS = {  # the bounds targets_met checks
    "client_vs_raw": 1.3,  # client CPU/request <= 1.3 x raw
    "client_vs_anchor": 1 / 3,  # client CPU/request <= 1/3 x anchor
    "client_vs_perf_analyzer": 1.5,  # multiplexed client CPU/request <= 1.5 x perf_analyzer's, where it runs
    "lb_efficiency": 0.95,
    # served / in-process throughput at batch 16 (bench.stack), per model
    "stack_efficiency": {"medium_cnn": 0.9, "small_lstm": 0.8},
    "generate_10k_s": 5.0,
    "analyze_s": 30.0,
    "startup_s": 0.5,
    "rss_mb": 150.0,
}


def targets_met(r: dict[str, Any]) -> dict[str, bool]:
    """Each target whose figures this run measured: met or not."""
    checks = {  # name -> (figures it needs, test)
        "client_le_1.3x_raw": (("client_cpu_us_per_req", "raw_cpu_us_per_req"),
                               lambda: r["client_cpu_us_per_req"] <= TARGETS["client_vs_raw"] * r["raw_cpu_us_per_req"]),
        "client_le_third_of_anchor": (("client_cpu_us_per_req", "anchor_cpu_us_per_req"),
                                      lambda: r["client_cpu_us_per_req"]
                                      <= TARGETS["client_vs_anchor"] * r["anchor_cpu_us_per_req"]),
        # the multiplexed client (streams in one process, as jobs run it) against the OSMI-style client
        "client_mux_le_third_of_anchor": (("client_mux_cpu_us_per_req", "anchor_cpu_us_per_req"),
                                          lambda: r["client_mux_cpu_us_per_req"]
                                          <= TARGETS["client_vs_anchor"] * r["anchor_cpu_us_per_req"]),
        "client_mux_le_1.5x_perf_analyzer": (("client_mux_cpu_us_per_req", "perf_analyzer_cpu_us_per_req"),
                                             lambda: r["client_mux_cpu_us_per_req"]
                                             <= TARGETS["client_vs_perf_analyzer"]
                                             * r["perf_analyzer_cpu_us_per_req"]),
        "client_le_third_of_anchor_at_payload": (
            ("client_cpu_us_per_req_payload", "anchor_cpu_us_per_req_payload"),
            lambda: r["client_cpu_us_per_req_payload"]
            <= TARGETS["client_vs_anchor"] * r["anchor_cpu_us_per_req_payload"]),
        "lb_efficiency_ge_0.95": (("lb_efficiency",), lambda: r["lb_efficiency"] >= TARGETS["lb_efficiency"]),
        "generate_10k_lt_5s": (("generate_perms_per_s",),
                               lambda: 10_000 / r["generate_perms_per_s"] < TARGETS["generate_10k_s"]),
        "analyze_lt_30s": (("analyze_s_63M",), lambda: r["analyze_s_63M"] < TARGETS["analyze_s"]),
        "startup_lt_0.5s": (("client_startup_s",), lambda: r["client_startup_s"] < TARGETS["startup_s"]),
        "rss_lt_150mb": (("client_rss_mb",), lambda: r["client_rss_mb"] < TARGETS["rss_mb"]),
        "load_every_request_accounted": (("load_every_request_accounted",),
                                         lambda: r["load_every_request_accounted"]),
        "repro_no_disagreement": (("repro_counts",), lambda: r["repro_counts"]["DISAGREE"] == 0),
        "calibrate_within_tolerance": (("calibrate_agree",), lambda: r["calibrate_agree"]),
        "search_same_peak_in_half_the_runs": (("search_within_one_step", "search_runs", "search_dense_runs"),
                                              lambda: r["search_within_one_step"]
                                              and r["search_runs"] <= r["search_dense_runs"] / 2),
    }
    for model, bound in TARGETS["stack_efficiency"].items():  # each model the stack part measured
        if model in r.get("stack_efficiency", {}):
            checks[f"stack_efficiency_{model}_ge_{bound}"] = (
                ("stack_efficiency",), lambda model=model, bound=bound: r["stack_efficiency"][model] >= bound)
    # bool(): numpy comparisons give numpy bools, which JSON cannot write
    return {name: bool(test()) for name, (needs, test) in checks.items() if all(k in r for k in needs)}


def notes(r: dict[str, Any]) -> dict[str, str]:
    """What each figure is, in words (JSON has no comments)."""
    out = {
        "cpu": "client, raw and anchor CPU per request are each the least disturbed (minimum) of "
               "their runs (client and raw alternate over cpu_rounds): CPU time of fixed work only grows "
               "when other jobs share the cores; *_runs and *_median have every run, cpu_others_cores "
               "the other users' load during each",
        "raw_vs_client_ratio": "client CPU per request / raw grpcio loop CPU per request",
        "client_mux_cpu_us_per_req": "our client as jobs run it: client_mux_streams request streams in one "
                                     "process (futures on one channel), batch 1, least disturbed of cpu_rounds; "
                                     "held against the anchor (<= 1/3) and perf_analyzer (<= 1.5x) where "
                                     "perf_analyzer_cpu_us_per_req was measured",
        "raw_mux_cpu_us_per_req": "the floor of any grpcio futures client here: a bare loop keeping client_mux_streams "
                                  "calls in flight on one channel, prebuilt bytes, nothing checked or recorded, "
                                  "alternating with client_mux (least disturbed of cpu_rounds); client_mux_vs_raw_mux "
                                  "is the part of our cost that is ours",
        "anchor_vs_client_ratio": "client CPU per request / anchor CPU per request (target <= 1/3)",
        "generate_10k_lt_5s": "10,000 / generate_perms_per_s, the faster of 2 runs on disk (generate_s_runs); "
                              "quick mode runs a 200-experiment grid. On ext4, creating inodes soon after "
                              "many were deleted (by anyone on the box) costs far more kernel CPU "
                              "(recently_deleted() in the inode allocator): see generate_system_cpu_s; "
                              "generate_tmpfs_s is the same work on tmpfs",
        "client_rss_mb": "the client summary's max_rss_mb (ru_maxrss), the client spawned through a "
                         "forking bash: ru_maxrss inherits the spawning process's RSS across fork+exec",
        "client_startup_s": "spawn to first request, timed from outside (wall clock before Popen to "
                            "the first record's start, reading its config.yaml included, as in a job); "
                            "client_startup_s_reported is the client's own startup_s (its process start "
                            "from /proc to its first request)",
        "calibrate": "per server (tfserving mode: TF-Serving's API; triton mode), our client and perf_analyzer "
                     "at the same model, batch and concurrency, alternating rounds; ratios are ours / "
                     "perf_analyzer (throughput in samples/s, p50 latency); agreement = both within "
                     "calibrate_tolerance of 1",
        "search": "osmi-ee search (clients 1..search_dense_runs, doubling then bisection) vs the peak of a dense "
                  "1..search_dense_runs sweep, found as a user would find it without running all 64: the "
                  "doubling ladder search_exhaustive_loads, then every count between the ladder's peak and the "
                  "next ladder load (search_dense_bracket), where a monotone system's dense peak must lie; "
                  "search_dense_peak = the highest count that passed; within one step = |search_peak - "
                  "search_dense_peak| <= 1 client (the search's resolution); search_within_ladder_step is the "
                  "older, looser check against the ladder alone. The objective (search_objective_p99_ms) is set "
                  "between the ladder's middle loads' latencies. Runs are held against the search_dense_runs "
                  "runs of a dense sweep (target: at most half)",
        "stack_efficiency": "per model at stack_batch: best served throughput (osmi-client -> HAProxy -> 1 "
                            "osmi-model-server shard, stack_concurrency closed-loop clients) / best in-process "
                            "throughput of the same SavedModel loaded as the server loads it (same intra-op "
                            "threads, stack_concurrency concurrent callers), rounds interleaved on the same cores; "
                            "best = the concurrency with the highest median over rounds; stack.<model> has every "
                            "run and the served CPU per request of server, HAProxy and clients. On a shared "
                            "box (others_cores_max well above 0) the scheduler gives our several served "
                            "processes a different share of the cores than the one in-process worker, so "
                            "stack_efficiency_cpu (in-process CPU per call / our CPU per served request) is "
                            "the figure immune to other users' load",
        "lb_efficiency": "median over rounds of (HAProxy throughput / direct throughput; direct is "
                         "`balancer: none`: the same clients, each round-robining over both servers itself); lb_rounds has each round's CPU "
                         "per request of servers, HAProxy and clients and the machine's busy cores",
    }
    if "analyze_records" in r:
        out["analyze_s_63M"] = f"{r['analyze_records']:,} records of {r['analyze_runs']:,} runs"
    return out
