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

Whose utilisation: the trainer's own CUDA device (`monitor_for_device`), and on it this process's
share where NVML offers it (``nvmlDeviceGetProcessUtilization``, ``scope="process"``), so another
process on the same GPU does not count as ours. Where per-process samples are not offered, or do not
name this process (a container's PID namespace), it falls back to device-wide utilisation and says
so in ``scope_note``. A MIG slice (NVML gives no utilisation for one) or a failed NVML read is
``available=False`` with a reason starting "cannot measure", which fails the gate on a CUDA run.
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

    def __init__(self, interval_s: float = 0.1, device_index: int = 0, sampler: Sampler | None = None, *,
                 nvml: Any = None, disabled: str = "", trainer_device: str = "", pid: int | None = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self.device_index = int(device_index)
        self._sampler: Sampler | None = sampler
        self._nvml_module = nvml  # None = import pynvml (a fake module object in tests)
        self._disabled = disabled  # why nothing is measured (the trainer is not on a GPU)
        self.trainer_device = trainer_device
        self._pid = os.getpid() if pid is None else int(pid)
        self._scope, self._scope_note = "", ""
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
        if self._disabled:
            self._available, self._reason = False, self._disabled
        elif self._sampler is None:
            self._sampler = self._open_nvml()
        else:
            self._available, self._reason = True, ""
        torch = _cuda_torch() if not self._disabled else None
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
            "device_index": self.device_index,
            "trainer_device": self.trainer_device,
            "scope": self._scope or None,
            "scope_note": self._scope_note,
            "util_mean": statistics.fmean(utils) if utils else None,
            "util_median": statistics.median(utils) if utils else None,
            "util_max": max(utils) if utils else None,
            "mem_peak_mb": self._mem_peak_mb,
            "torch_max_allocated_mb": None if self._disabled else _torch_max_allocated_mb(self.device_index),
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
        """Initialise NVML for our device; on failure record why ("cannot measure: ...") and return None."""
        pynvml = self._nvml_module
        if pynvml is None:
            try:
                import pynvml
            except ImportError as exc:
                self._available, self._reason = False, f"cannot measure: nvidia-ml-py (pynvml) is not installed: {exc}"
                return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._available, self._reason = False, f"cannot measure: NVML unavailable: {exc}"
            return None
        self._nvml = pynvml
        try:
            handle = None if _visible_mig(self.device_index) else _nvml_handle(pynvml, self.device_index)
            if handle is not None:
                name = pynvml.nvmlDeviceGetName(handle)
                self._device_name = name.decode() if isinstance(name, bytes) else str(name)
            if handle is None or _is_mig(pynvml, handle):
                self._available, self._reason = False, (
                    f"cannot measure: device {self.device_index} is a MIG slice, for which NVML reports no "
                    "utilisation; run the check on a whole GPU")
                return None
            pynvml.nvmlDeviceGetUtilizationRates(handle)
        except (pynvml.NVMLError, IndexError, ValueError) as exc:
            self._available, self._reason = False, f"cannot measure: NVML device {self.device_index} unusable: {exc}"
            return None
        self._available, self._reason = True, ""

        def device_sample() -> tuple[float, float]:
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
            return util, mem

        try:
            pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
        except pynvml.NVMLError as exc:
            if not _no_samples_yet(pynvml, exc):
                self._scope, self._scope_note = "device", (
                    f"device-wide utilisation (every process on the GPU counts): per-process samples "
                    f"not offered here ({exc})")
                return device_sample
        self._scope, self._scope_note = "process", f"this process's utilisation (pid {self._pid}, per-process NVML)"
        return _ProcessSampler(self, pynvml, handle, device_sample)


class _ProcessSampler:
    """This process's SM utilisation from ``nvmlDeviceGetProcessUtilization``; device-wide if that fails.

    The first sample (training has started, so this process has a CUDA context) checks that NVML lists
    our pid among the device's compute processes; in a PID namespace it does not, and the monitor
    falls back to device-wide utilisation with a note saying so.
    """

    def __init__(self, monitor: GpuMonitor, nvml: Any, handle: Any, device_sample: Sampler):
        self.monitor, self.nvml, self.handle, self.device_sample = monitor, nvml, handle, device_sample
        self.last_seen = 0  # NVML timestamp (us) of the newest per-process sample read
        self.checked = False

    def _fall_back(self, why: str) -> None:
        self.monitor._scope = "device"
        self.monitor._scope_note = f"device-wide utilisation (every process on the GPU counts): {why}"

    def __call__(self) -> tuple[float, float]:
        util, mem = self.device_sample()
        if self.monitor._scope != "process":
            return util, mem
        pid = self.monitor._pid
        try:
            if not self.checked:
                self.checked = True
                pids = {int(p.pid) for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)}
                if pid not in pids:
                    self._fall_back(f"NVML does not list this process (pid {pid}; listed: {sorted(pids)[:8]}), "
                                    "a container's PID namespace?")
                    return util, mem
            rows = self.nvml.nvmlDeviceGetProcessUtilization(self.handle, self.last_seen)
        except self.nvml.NVMLError as exc:
            if _no_samples_yet(self.nvml, exc):
                return 0.0, mem  # no process sample since the last one: this process ran nothing
            self._fall_back(f"per-process read failed ({exc})")
            return util, mem
        if rows:
            self.last_seen = max(int(r.timeStamp) for r in rows)
        ours = [float(r.smUtil) for r in rows if int(r.pid) == pid]
        return (statistics.fmean(ours) / 100.0 if ours else 0.0), mem


def _no_samples_yet(nvml: Any, exc: Exception) -> bool:
    """NVML's "no per-process sample since that timestamp" (NOT_FOUND, or a bare SUCCESS code)."""
    code = getattr(exc, "value", None)
    return code in (getattr(nvml, "NVML_ERROR_NOT_FOUND", 6), getattr(nvml, "NVML_SUCCESS", 0))


def _visible_mig(device_index: int) -> bool:
    """CUDA_VISIBLE_DEVICES names a MIG instance for this torch device index."""
    visible = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    return device_index < len(visible) and visible[device_index].startswith("MIG-")


def _is_mig(pynvml: Any, handle: Any) -> bool:
    """MIG mode enabled on the device."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:
        return False  # a GPU without MIG support answers NOT_SUPPORTED
    return current == getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1)


def monitor_for_device(device: Any, interval_s: float = 0.1) -> GpuMonitor:
    """The monitor of the trainer's own device: its CUDA index, or, for a CPU run, one that measures nothing.

    A CPU run on a machine that has a GPU must not be judged by that GPU's (idle) utilisation.
    """
    dev_type = getattr(device, "type", str(device).split(":")[0])
    if dev_type != "cuda":
        return GpuMonitor(interval_s, disabled=f"the trainer ran on {device}: no GPU to measure",
                          trainer_device=str(device))
    index = getattr(device, "index", None)
    if index is None:
        torch = _cuda_torch()
        index = torch.cuda.current_device() if torch is not None else 0
    return GpuMonitor(interval_s, device_index=index, trainer_device=f"cuda:{index}")


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
