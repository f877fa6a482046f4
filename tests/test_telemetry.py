"""Telemetry: server CPU/memory always; GPU figures only where NVML sees a GPU.

No GPU here, so the NVML path runs against a fake `pynvml` module (this unit
isolates our sampling and arithmetic, not NVIDIA's library)."""

from __future__ import annotations

import os
import sys
import time
import types

import pyarrow.parquet as pq
import pytest

from osmi_ee.osmi.telemetry import Telemetry


def test_without_gpu_everything_gpu_is_not_measured(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no NVML
    t = Telemetry({"s0": os.getpid()}, interval_s=0.05)
    t.start()
    sum(i * i for i in range(2_000_000))  # some CPU to see
    time.sleep(0.2)
    t.stop()
    summary = t.summary(samples_ok=100)
    assert summary["gpus"] is None and summary["energy_j"] is None
    assert summary["energy_j_per_sample"] is None  # not measured, never 0
    assert summary["servers"]["s0"]["rss_mb_max"] > 10
    assert summary["servers"]["s0"]["cpu_percent_mean"] is not None
    t.write_parquet(tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet").to_pandas()
    assert set(table.metric) == {"cpu_percent", "rss_mb"} and (table.source == "s0").all()


def fake_nvml(energy_mj: list[float]) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=80)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2 * 2**30)
    nv.nvmlDeviceGetPowerUsage = lambda h: 300_000  # milliwatts
    nv.nvmlDeviceGetTotalEnergyConsumption = lambda h: energy_mj.pop(0)
    return nv


def test_gpu_utilisation_power_and_energy_per_sample(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([1_000_000.0, 1_600_000.0]))
    t = Telemetry({}, interval_s=0.05)
    t.start()
    time.sleep(0.15)
    t.stop()
    summary = t.summary(samples_ok=1200)
    gpu = summary["gpus"]["gpu0"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["util_percent_mean"] == 80 and gpu["power_w_mean"] == 300
    assert gpu["mem_used_mb_max"] == pytest.approx(2048)
    assert summary["energy_j"] == pytest.approx(600.0)  # counter delta: 600,000 mJ
    assert summary["energy_j_per_sample"] == pytest.approx(0.5)
