"""GPU utilisation sampled by NVML while training steps run (the gate's ``gpu_util_mean``).

A background daemon thread samples NVML every ``interval_s``, but only inside ``with
monitor.active():`` (or between ``resume()`` and ``pause()``), which the trainer wraps around its
training-step section. Validation, checkpointing and data setup are left out on purpose: the gate
asks whether the GPU is kept busy *while training*, and idle phases between epochs would otherwise
dilute the mean.

Without an NVIDIA GPU (or without the NVML library) nothing fails: ``summary()`` says
``available=False`` with the reason (the NVML error text) and the utilisation fields are None.
The monitor never raises into the training loop: an NVML error during sampling ends sampling and is
reported in ``summary()["reason"]``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

Sampler = Callable[[], tuple[float, float]]  # () -> (utilisation 0..1, device memory used in MB)


class GpuMonitor:
    """Samples GPU utilisation and memory in a daemon thread while ``active()``.

    Args:
        interval_s: seconds between samples (NVML's own utilisation window is 1/6 s to 1 s).
        device_index: CUDA device index as torch sees it (mapped through CUDA_VISIBLE_DEVICES to
            the NVML device, which NVML itself ignores).
        sampler: replaces NVML; for tests on machines without a GPU only.

    Usage::

        mon = GpuMonitor().start()
        for batch in loader:
            with mon.active():
                step(batch)
        mon.stop()
        mon.summary()  # {"available": ..., "util_mean": ..., ...}
    """

    def __init__(self, interval_s: float = 0.1, device_index: int = 0, sampler: Sampler | None = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self.device_index = int(device_index)
        self._sampler: Sampler | None = sampler
        self._nvml = None  # the pynvml module once initialised (for shutdown)
        self._device_name = ""
        self._available = False
        self._reason = "not started"
        self._cond = threading.Condition()
        self._active = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._active_since: float | None = None
        self._active_s = 0.0
        self._samples: list[tuple[float, float]] = []
        self._mem_peak_mb: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Open NVML (or take the injected sampler) and start the (paused) sampling thread."""
        if self._thread is not None:
            return self
        if self._sampler is None:
            self._sampler = self._open_nvml()
        else:
            self._available, self._reason = True, ""
        torch = _cuda_torch()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats(self.device_index)  # the peak reported is this run's
        self._t0 = time.monotonic()
        self._stopping = False
        if self._sampler is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, join the thread and close NVML. Safe to call twice or without start()."""
        self.pause()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 10 * self.interval_s))
            self._thread = None
        if self._nvml is not None:
            nvml, self._nvml = self._nvml, None
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError:
                pass  # shutting down a library that is going away anyway; nothing to report

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- activity --------------------------------------------------------------------------------

    def resume(self) -> None:
        """Count samples from now on (training steps start)."""
        with self._cond:
            if not self._active:
                self._active = True
                self._active_since = time.monotonic()
                self._cond.notify_all()

    def pause(self) -> None:
        """Stop counting. Returns after any sample in progress is recorded, never during one."""
        with self._cond:
            if self._active:
                self._active = False
                if self._active_since is not None:
                    self._active_s += time.monotonic() - self._active_since
                self._active_since = None
                self._cond.notify_all()

    @contextmanager
    def active(self) -> Iterator[Self]:
        """Sample only inside this block (wrap the training-step section with it)."""
        self.resume()
        try:
            yield self
        finally:
            self.pause()

    # -- results ---------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Statistics of the samples taken while active.

        Returns:
            available (bool), reason (str, "" when fine), device (name), util_mean / util_median /
            util_max (fractions 0..1, None without samples), mem_peak_mb (NVML device memory used,
            max over samples), torch_max_allocated_mb (this process, None without CUDA),
            n_samples, active_s (seconds spent active), interval_s, samples (list of
            (seconds since start, util) for plotting).
        """
        with self._cond:
            samples = list(self._samples)
            active_s = self._active_s + (
                time.monotonic() - self._active_since if self._active_since is not None else 0.0
            )
            available, reason = self._available, self._reason
        utils = [u for _, u in samples]
        if available and not utils and not reason:
            reason = "no samples taken while training steps ran (run shorter than interval_s?)"
        return {
            "available": available,
            "reason": reason,
            "device": self._device_name,
            "util_mean": statistics.fmean(utils) if utils else None,
            "util_median": statistics.median(utils) if utils else None,
            "util_max": max(utils) if utils else None,
            "mem_peak_mb": self._mem_peak_mb,
            "torch_max_allocated_mb": _torch_max_allocated_mb(self.device_index),
            "n_samples": len(utils),
            "active_s": active_s,
            "interval_s": self.interval_s,
            "samples": samples,
        }

    # -- internals -------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sampler is not None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._active)
                if self._stopping:
                    return
                # one interval of activity before each sample: NVML utilisation is a trailing
                # average, so a sample right at resume() would still see the idle time before it
                woke_early = self._cond.wait_for(lambda: self._stopping or not self._active, self.interval_s)
                if woke_early:
                    continue
                # sampling under the lock is what lets pause() guarantee no sample after it returns
                try:
                    util, mem_mb = self._sampler()
                except Exception as exc:  # noqa: BLE001 - reported in summary(), never into training
                    self._available = False
                    self._reason = f"sampling failed: {type(exc).__name__}: {exc}"
                    return
                self._samples.append((time.monotonic() - self._t0, float(util)))
                if self._mem_peak_mb is None or mem_mb > self._mem_peak_mb:
                    self._mem_peak_mb = float(mem_mb)

    def _open_nvml(self) -> Sampler | None:
        """Initialise NVML for our device; on failure record why and return None."""
        try:
            import pynvml
        except ImportError as exc:
            self._available, self._reason = False, f"nvidia-ml-py (pynvml) is not installed: {exc}"
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._available, self._reason = False, f"NVML unavailable: {exc}"
            return None
        self._nvml = pynvml
        try:
            handle = _nvml_handle(pynvml, self.device_index)
            name = pynvml.nvmlDeviceGetName(handle)
            self._device_name = name.decode() if isinstance(name, bytes) else str(name)
            pynvml.nvmlDeviceGetUtilizationRates(handle)  # MIG slices raise NotSupported here
        except (pynvml.NVMLError, IndexError, ValueError) as exc:
            self._available, self._reason = False, f"NVML device {self.device_index} unusable: {exc}"
            return None
        self._available, self._reason = True, ""

        def sample() -> tuple[float, float]:
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            return util, mem

        return sample


def _nvml_handle(pynvml: Any, device_index: int) -> Any:
    """NVML handle of torch's CUDA device ``device_index``.

    NVML enumerates every GPU and ignores CUDA_VISIBLE_DEVICES, so torch's device 0 can be NVML
    device 3; this reads the mapping the CUDA runtime itself uses.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    entry = [e.strip() for e in visible.split(",") if e.strip()][device_index]
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


def _cuda_torch() -> Any:
    """torch when it is importable and has CUDA, else None (the monitor works without torch)."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _torch_max_allocated_mb(device_index: int) -> float | None:
    torch = _cuda_torch()
    if torch is None:
        return None
    return torch.cuda.max_memory_allocated(device_index) / 2**20
