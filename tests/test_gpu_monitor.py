"""atft_core.train.gpu_monitor: graceful without a GPU; sampling only while active (fake sampler)."""

from __future__ import annotations

import statistics
import threading
import time
import types

import pytest
import torch

from atft_core.train.gpu_monitor import GpuMonitor, monitor_for_device


def test_monitor_of_a_cpu_run_measures_nothing_and_says_why():
    mon = monitor_for_device(torch.device("cpu"), interval_s=0.01).start()
    with mon.active():
        time.sleep(0.05)
    mon.stop()
    s = mon.summary()
    assert s["available"] is False and s["reason"] == "the trainer ran on cpu: no GPU to measure"
    assert s["util_mean"] is None and s["n_samples"] == 0 and s["torch_max_allocated_mb"] is None
    assert not any(t.name == "gpu-monitor" for t in threading.enumerate())


def test_real_nvml_on_this_host():
    """No GPU: unavailable with NVML's reason. A GPU host: the trainer's device is measured, with its scope."""
    mon = GpuMonitor(interval_s=0.01).start()
    with mon.active():
        if torch.cuda.is_available():
            a = torch.randn(2048, 2048, device="cuda")
            for _ in range(50):
                a = a @ a / 2048
            torch.cuda.synchronize()
        else:
            time.sleep(0.05)
    mon.stop()
    s = mon.summary()
    if torch.cuda.is_available():
        assert s["available"] is True or s["reason"].startswith("cannot measure"), s["reason"]
        if s["available"]:
            assert s["scope"] in ("process", "device") and s["scope_note"] and s["n_samples"] > 0
            assert s["torch_max_allocated_mb"] > 0
    else:
        assert s["available"] is False and s["reason"].startswith("cannot measure")
        assert "NVML" in s["reason"] or "pynvml" in s["reason"]
        assert s["util_mean"] is None and s["n_samples"] == 0 and s["samples"] == []
        assert s["torch_max_allocated_mb"] is None
    assert not any(t.name == "gpu-monitor" for t in threading.enumerate())
    mon.stop()  # idempotent


class FakeNvml:
    """The slice of the pynvml module the monitor uses, scripted (a machine without a GPU tests the logic)."""

    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_SUCCESS = 0
    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        def __init__(self, value):
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, *, util=80, per_process=None, mig=False, init_fails=False, process_pids=(4242,)):
        self.util, self.per_process, self.mig, self.init_fails = util, per_process, mig, init_fails
        self.process_pids = process_pids
        self.handles: list = []

    def nvmlInit(self):
        if self.init_fails:
            raise self.NVMLError(9)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        self.handles.append(i)
        return ("h", i)

    def nvmlDeviceGetName(self, h):
        return b"FakeGPU"

    def nvmlDeviceGetMigMode(self, h):
        return (1, 1) if self.mig else (0, 0)

    def nvmlDeviceGetUtilizationRates(self, h):
        if self.mig:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return types.SimpleNamespace(gpu=self.util)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=3 * 2**30)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=p) for p in self.process_pids]

    def nvmlDeviceGetProcessUtilization(self, h, last_seen):
        if self.per_process is None:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        rows = [types.SimpleNamespace(pid=pid, timeStamp=last_seen + 1, smUtil=u) for pid, u in self.per_process]
        if not rows:
            raise self.NVMLError(self.NVML_ERROR_NOT_FOUND)
        return rows


def _run(nvml, device_index=0, pid=4242):
    mon = GpuMonitor(interval_s=0.005, device_index=device_index, nvml=nvml, pid=pid).start()
    with mon.active():
        time.sleep(0.08)
    mon.stop()
    return mon.summary()


def test_per_process_utilisation_counts_only_this_process(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNvml(util=95, per_process=[(4242, 30), (777, 65)], process_pids=(4242, 777))
    s = _run(nvml, device_index=1)
    assert nvml.handles == [1]  # the trainer's own device index, not device 0
    assert s["available"] and s["scope"] == "process" and "pid 4242" in s["scope_note"]
    assert s["util_mean"] == pytest.approx(0.30)  # not the device's 95 %: the other process is not ours


def test_falls_back_to_device_wide_and_says_so(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = _run(FakeNvml(util=70, per_process=None))
    assert s["available"] and s["scope"] == "device" and "device-wide" in s["scope_note"]
    assert s["util_mean"] == pytest.approx(0.70)
    # our pid hidden by a PID namespace: per-process samples exist but never name us
    s = _run(FakeNvml(util=60, per_process=[(1, 55)], process_pids=(1,)))
    assert s["scope"] == "device" and "PID namespace" in s["scope_note"] and s["util_mean"] == pytest.approx(0.60)


def test_mig_slice_and_failed_nvml_cannot_measure(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = _run(FakeNvml(mig=True))
    assert s["available"] is False and s["reason"].startswith("cannot measure") and "MIG" in s["reason"]
    s = _run(FakeNvml(init_fails=True))
    assert s["available"] is False and s["reason"].startswith("cannot measure: NVML unavailable")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1234abcd")
    s = _run(FakeNvml())
    assert s["available"] is False and "MIG" in s["reason"]


class FakeSampler:
    """Returns scripted utilisations and records whether the monitor was active at each call."""

    def __init__(self, monitor_ref: list[GpuMonitor]):
        self.ref = monitor_ref
        self.value = 0.0
        self.mem = 100.0
        self.calls = 0
        self.calls_while_paused = 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        if not self.ref[0]._active:
            self.calls_while_paused += 1
        return self.value, self.mem


def test_samples_only_while_active_and_statistics_are_right():
    ref: list[GpuMonitor] = []
    fake = FakeSampler(ref)
    mon = GpuMonitor(interval_s=0.005, sampler=fake)
    ref.append(mon)
    with mon:
        time.sleep(0.1)  # started but not active: nothing sampled
        assert fake.calls == 0

        fake.value, fake.mem = 0.2, 500.0
        with mon.active():
            time.sleep(0.15)
        n_first = fake.calls
        assert n_first >= 3

        fake.value = 5.0  # any sample taken while paused would show up in the mean
        time.sleep(0.1)
        assert fake.calls == n_first

        fake.value, fake.mem = 0.8, 300.0
        mon.resume()
        time.sleep(0.15)
        mon.pause()
        calls_at_pause = fake.calls
        time.sleep(0.05)
        assert fake.calls == calls_at_pause  # pause() returns only when no sample is in flight
    s = mon.summary()
    utils = [u for _, u in s["samples"]]
    assert fake.calls_while_paused == 0
    assert s["available"] is True and s["reason"] == ""
    assert s["n_samples"] == len(utils) == fake.calls
    assert set(utils) == {0.2, 0.8}
    assert s["util_mean"] == pytest.approx(statistics.fmean(utils))
    assert s["util_median"] == pytest.approx(statistics.median(utils))
    assert s["util_max"] == 0.8
    assert s["mem_peak_mb"] == 500.0
    assert 0.25 < s["active_s"] < 1.0
    times = [t for t, _ in s["samples"]]
    assert times == sorted(times)
    assert not any(t.name == "gpu-monitor" for t in threading.enumerate())


def test_sampling_error_is_reported_not_raised():
    def broken() -> tuple[float, float]:
        raise RuntimeError("GPU fell off the bus")

    mon = GpuMonitor(interval_s=0.005, sampler=broken).start()
    with mon.active():
        time.sleep(0.05)
    mon.stop()
    s = mon.summary()
    assert s["available"] is False and "fell off the bus" in s["reason"] and s["util_mean"] is None


def test_active_without_samples_says_why():
    mon = GpuMonitor(interval_s=10.0, sampler=lambda: (1.0, 1.0)).start()
    with mon.active():
        pass
    t0 = time.monotonic()
    mon.stop()
    assert time.monotonic() - t0 < 1.0  # stop() interrupts the interval wait
    s = mon.summary()
    assert s["available"] is True and s["util_mean"] is None and "no samples" in s["reason"]


def test_rejects_bad_interval():
    with pytest.raises(ValueError):
        GpuMonitor(interval_s=0)
