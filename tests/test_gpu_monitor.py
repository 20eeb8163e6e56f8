"""atft_core.train.gpu_monitor: graceful without a GPU; sampling only while active (fake sampler)."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
import torch

from atft_core.train.gpu_monitor import GpuMonitor

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


@needs_no_gpu
def test_without_gpu_reports_unavailable_with_reason():
    mon = GpuMonitor(interval_s=0.01).start()
    with mon.active():
        time.sleep(0.05)
    mon.stop()
    s = mon.summary()
    assert s["available"] is False
    assert "NVML" in s["reason"] or "pynvml" in s["reason"]
    assert s["util_mean"] is None and s["util_median"] is None and s["util_max"] is None
    assert s["n_samples"] == 0 and s["samples"] == [] and s["torch_max_allocated_mb"] is None
    assert not any(t.name == "gpu-monitor" for t in threading.enumerate())
    mon.stop()  # idempotent


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
