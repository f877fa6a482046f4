"""The `generate` part: how fast a large grid expands into experiment folders."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def bench_generate(axes: dict[str, list[Any]], work: Path, runs: int = 2) -> dict[str, Any]:
    """generate() of the grid `axes`, `runs` times into fresh folders on this disk
    (the best wall time counts: others share the box), plus once on tmpfs.

    The disk runs keep their files until the bench ends: ext4 skips inodes freed
    in the last 60-300 s when it allocates (fs/ext4/ialloc.c recently_deleted), so
    creating 50,000 inodes right after deleting as many scans inode tables and
    costs many times more kernel CPU (seen here: 2.7 s -> 14 s per 10,000). The
    tmpfs run shows the code's own speed, free of the disk and of what other
    users deleted lately."""
    import yaml

    from osmi_ee.ee.config import load_grid

    t0 = time.perf_counter()
    import cloudmesh.ee.experimentexecutor  # noqa: F401  (module import: once per CLI call, reported apart)

    from osmi_ee.ee.generate import generate

    import_s = time.perf_counter() - t0
    grid_path = work / "gen-grid.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "bench-gen", "profile": "localhost", "experiment": axes},
                                        sort_keys=False))
    grid = load_grid(grid_path)

    def timed(sweep: Path) -> tuple[int, float, float, float]:
        t0, c0 = time.perf_counter(), os.times()
        experiments = generate(grid, sweep)
        wall, c1 = time.perf_counter() - t0, os.times()
        n = len(experiments)
        written = sum(1 for _ in sweep.glob("*/job.slurm"))
        if written != n:
            raise RuntimeError(f"generate wrote {written} job scripts for {n} experiments")
        return n, wall, c1.user - c0.user, c1.system - c0.system

    walls, user, system = [], [], []
    for r in range(runs):
        n, wall, u, k = timed(work / f"gen-sweep-{r}")
        walls.append(wall)
        user.append(u)
        system.append(k)
    result = {"generate_perms": n, "generate_s": min(walls), "generate_s_runs": walls,
              "generate_user_cpu_s": user, "generate_system_cpu_s": system,
              "generate_perms_per_s": n / min(walls), "generate_import_s": import_s}
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="osmi-bench-gen-", dir=shm))
        try:
            _, wall, _, _ = timed(folder / "sweep")
            result.update(generate_tmpfs_s=wall, generate_tmpfs_perms_per_s=n / wall)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return result
