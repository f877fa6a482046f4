"""Telemetry during the measured window: server CPU and memory, GPU use and power.

Sampled on a background thread at a set interval. GPU figures come from NVML
(nvidia-ml-py) where a GPU exists; without one they are "not measured" (None),
never zero, and so is energy per inference.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from osmi_ee.ee.paths import atomic_write


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        return pynvml
    except Exception:  # no library, no driver, no device: GPU telemetry not measured
        return None


@dataclass
class Telemetry:
    servers: dict[str, int]  # shard name -> pid
    interval_s: float = 0.5
    samples: list[tuple[float, str, str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _energy_start: dict[int, float] = field(default_factory=dict)
    _energy_end: dict[int, float] = field(default_factory=dict)

    def start(self) -> None:
        self._nv = _nvml()
        self._handles = []
        if self._nv:
            self._handles = [self._nv.nvmlDeviceGetHandleByIndex(i) for i in range(self._nv.nvmlDeviceGetCount())]
            self._energy_start = self._energy()
        self._procs = {}
        for name, pid in self.servers.items():
            try:
                proc = psutil.Process(pid)
                proc.cpu_percent(None)  # first call only primes the counter
                self._procs[name] = proc
            except psutil.Error:
                pass
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)
        self._thread.start()

    def _energy(self) -> dict[int, float]:
        joules = {}
        for i, handle in enumerate(self._handles):
            try:  # millijoules since driver load (Volta and newer)
                joules[i] = self._nv.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
            except Exception:
                pass
        return joules

    def _sample(self) -> None:
        t = time.monotonic() - self._t0
        for name, proc in self._procs.items():
            try:
                with proc.oneshot():
                    cpu = proc.cpu_percent(None)
                    rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            self.samples += [(t, name, "cpu_percent", cpu), (t, name, "rss_mb", rss)]
        for i, handle in enumerate(self._handles):
            try:
                util = self._nv.nvmlDeviceGetUtilizationRates(handle).gpu
                mem = self._nv.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                power = self._nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except Exception:
                continue
            self.samples += [(t, f"gpu{i}", "gpu_util_percent", float(util)),
                             (t, f"gpu{i}", "gpu_mem_mb", mem), (t, f"gpu{i}", "power_w", power)]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._sample()  # always at least one sample, also for very short windows
        self.duration_s = time.monotonic() - self._t0
        if self._handles:
            self._energy_end = self._energy()

    def summary(self, samples_ok: int) -> dict[str, Any]:
        def stats(source: str, metric: str) -> list[float]:
            return [v for _, s, m, v in self.samples if s == source and m == metric]

        servers = {}
        for name in self._procs if self._thread else []:
            cpu, rss = stats(name, "cpu_percent"), stats(name, "rss_mb")
            servers[name] = {"cpu_percent_mean": sum(cpu) / len(cpu) if cpu else None,
                             "rss_mb_max": max(rss) if rss else None}
        gpus = None
        energy = None
        if self._handles:
            gpus = {}
            for i, handle in enumerate(self._handles):
                util, mem, power = (stats(f"gpu{i}", m) for m in ("gpu_util_percent", "gpu_mem_mb", "power_w"))
                gpus[f"gpu{i}"] = {"name": _name(self._nv, handle),
                                   "util_percent_mean": sum(util) / len(util) if util else None,
                                   "mem_used_mb_max": max(mem) if mem else None,
                                   "power_w_mean": sum(power) / len(power) if power else None}
            if self._energy_start and self._energy_end:
                energy = sum(self._energy_end[i] - self._energy_start[i] for i in self._energy_end
                             if i in self._energy_start)
            else:  # no energy counter: integrate mean power over the window
                powers = [g["power_w_mean"] for g in gpus.values() if g["power_w_mean"] is not None]
                energy = sum(powers) * self.duration_s if powers else None
        return {"interval_s": self.interval_s, "servers": servers, "gpus": gpus, "energy_j": energy,
                "energy_j_per_sample": (energy / samples_ok) if energy is not None and samples_ok else None}

    def write_parquet(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        t, source, metric, value = zip(*self.samples) if self.samples else ([], [], [], [])
        table = pa.table({"t_s": pa.array(t, pa.float64()), "source": pa.array(source, pa.string()),
                          "metric": pa.array(metric, pa.string()), "value": pa.array(value, pa.float64())})
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _name(nv: Any, handle: Any) -> str | None:
    try:
        name = nv.nvmlDeviceGetName(handle)
        return name.decode() if isinstance(name, bytes) else name
    except Exception:
        return None
