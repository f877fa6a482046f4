"""The in-process side of `stack_efficiency`: one SavedModel loaded exactly as
osmi-model-server loads it (serving_models.load_model, the same TF thread settings),
called by N concurrent Python threads with no network, no proto and no balancer.

Run as a long-lived worker (`python -m osmi_ee.bench.inprocess --model-dir D
--model M --batch B --intra-op-threads T`): it loads and warms the model once,
prints `ready SECONDS_PER_CALL`, then answers each stdin line `CALLERS SECONDS` with one JSON line
(calls, samples/s, CPU). Between lines it blocks on stdin and costs nothing, so the
bench can interleave it with served rounds on the same cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure(sig: Any, arrays: dict[str, np.ndarray], callers: int, seconds: float) -> dict[str, Any]:
    """`callers` threads each call the signature back to back for `seconds`; every
    output is fetched to numpy, as the server does before encoding it."""
    counts = [0] * callers
    start = threading.Barrier(callers + 1)
    stop = threading.Event()

    def loop(k: int) -> None:
        start.wait()
        while not stop.is_set():
            for tensor in sig.run(arrays).values():
                tensor.numpy()
            counts[k] += 1

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    calls = sum(counts)
    return {"callers": callers, "calls": calls, "wall_s": wall, "calls_per_s": calls / wall,
            "cpu_cores": cpu / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m osmi_ee.bench.inprocess",
                                     description="In-process throughput of a SavedModel, loaded as the server loads it.")
    parser.add_argument("--model-dir", required=True, help="folder of version folders (build/models/<model>)")
    parser.add_argument("--model", required=True, help="model name (its input shape comes from osmi.specs)")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1, help="as --tensorflow_intra_op_parallelism")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from osmi_ee.osmi.serving_models import latest_version, load_model

    # Before the first op, as model_server.serve does (inter-op: TF's default there too).
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    version, path = latest_version(args.model, Path(args.model_dir))
    model = load_model(args.model, version, path)
    sig = model.signature("")
    arrays = {}
    rng = np.random.default_rng(0)
    for key, spec in sig.inputs.items():
        shape = [args.batch if d is None else d for d in spec.shape.as_list()]
        arrays[key] = rng.random(shape, dtype=np.float32).astype(spec.dtype.as_numpy_dtype)
    warm = measure(sig, arrays, 1, 0.5)  # past the first calls' one-off costs
    print(f"ready {warm['wall_s'] / max(1, warm['calls']):.6f}", flush=True)  # seconds per call
    for line in sys.stdin:
        if not line.strip():
            continue
        callers, seconds = line.split()
        result = measure(sig, arrays, int(callers), float(seconds))
        result["samples_per_s"] = result["calls_per_s"] * args.batch
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
