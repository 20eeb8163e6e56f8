"""Background batch prefetch: gather the next day batch while the current training step runs.

When the cache fits in device memory (`fits_on_device`), the grid lives on the device and a batch
is a device-side slice (`GridTensors` on that device): nothing to prefetch. When it does not fit,
the grid stays a CPU memory map and `Prefetcher` gathers batches on a background thread, copies
them into pinned memory and starts a `non_blocking` copy to the GPU on a side stream, `depth`
batches ahead of the consumer. On CPU the same thread gathers ahead over the memory map.

Guarantees (tested on CPU): batches come out in the order of the day batches given, equal to a
direct gather; an exception in the producer is raised in the consumer (with the original as its
cause); leaving the loop early (break, exception, `close()`, garbage collection) stops the thread.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from atft_core.data.cache.store import Cache
from atft_core.train.batches import Batch

__all__ = ["Prefetcher", "PrefetchError", "cache_nbytes", "fits_on_device", "batch_to"]


class PrefetchError(RuntimeError):
    """Raised in the consumer when gathering a batch on the prefetch thread failed."""


def cache_nbytes(cache: Cache, feature_dtype: torch.dtype | None = None) -> int:
    """Bytes the cache's grid takes once moved to a device (features in `feature_dtype`)."""
    item = torch.empty((), dtype=feature_dtype).element_size() if feature_dtype is not None else cache.x.itemsize
    return int(cache.x.size * item + cache.y.nbytes + cache.y_z.nbytes + cache.valid.nbytes + cache.static.nbytes)


def fits_on_device(cache: Cache, device: torch.device | str, dtype: torch.dtype | None = torch.float32,
                   headroom: float = 0.8, free_bytes: int | None = None) -> bool:
    """Whether the whole grid fits on `device` using at most `headroom` of its free memory.

    CUDA: compares `cache_nbytes` with `torch.cuda.mem_get_info` (free bytes now), leaving
    ``1 - headroom`` of it for the model, activations and optimiser state. CPU: always True (the
    grid is already there, memory-mapped; the page cache decides what stays resident).
    `free_bytes` overrides the measured free memory (tests, or a budget smaller than the device).
    """
    device = torch.device(device)
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    if device.type == "cpu" and free_bytes is None:
        return True
    if free_bytes is None:
        if device.type != "cuda":
            return False  # unknown device kind: do not move a whole grid there blindly
        free_bytes, _total = torch.cuda.mem_get_info(device)
    return cache_nbytes(cache, dtype) <= headroom * free_bytes


def _map_tensors(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return dataclasses.replace(batch, **{k: fn(v) for k, v in fields.items() if torch.is_tensor(v)})


def batch_to(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    """Every tensor of `batch` moved to `device`."""
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException, where: Any):
        self.exc, self.where = exc, where


class Prefetcher:
    """Iterate `gather(days)` over `day_batches`, computed `depth` batches ahead on a thread.

    Args:
        gather: day indices -> `Batch` (typically `GridTensors(cache, window, "cpu").gather`).
        day_batches: iterable of day-index arrays (a `DayBatchSampler` epoch, or a list).
        device: where the consumer wants the batches. CUDA: the producer pins each batch and copies
            it with `non_blocking=True` on its own stream; the consumer's stream waits for that copy
            before the batch is handed out. CPU / None: batches are handed out as gathered.
        depth: batches ready ahead of the consumer (queue size); 2 overlaps one step with one gather.
        pin_memory: pin before a CUDA copy (default: True when `device` is CUDA).

    Use as an iterator (one pass) or a context manager::

        with Prefetcher(host_grid.gather, sampler, device=device) as batches:
            for batch in batches:
                ...
    """

    def __init__(self, gather: Callable[[np.ndarray], Batch], day_batches: Iterable[Any], *,
                 device: torch.device | str | None = None, depth: int = 2, pin_memory: bool | None = None,
                 name: str = "atft-prefetch"):
        if depth < 1:
            raise ValueError("depth must be >= 1")
        self.gather = gather
        self.day_batches = day_batches
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        self.pin = self.cuda if pin_memory is None else (pin_memory and torch.cuda.is_available())
        self.depth = depth
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._iterated = False
        self._stream = None

    # -- producer -------------------------------------------------------------------------------
    def _put(self, item: Any) -> bool:
        """Put unless asked to stop; False when stopping (the consumer has gone)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        days = None
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)
            for days in self.day_batches:
                if self._stop.is_set():
                    return
                batch = self.gather(days)
                event = None
                if self.cuda:
                    if self.pin:
                        batch = _map_tensors(batch, lambda t: t if t.is_cuda else t.pin_memory())
                    with torch.cuda.stream(self._stream):
                        batch = batch_to(batch, self.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(self._stream)
                elif self.device is not None:
                    batch = batch_to(batch, self.device)
                if not self._put((batch, event)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(_Failure(exc, days))
            return
        self._put(_End())

    # -- consumer -------------------------------------------------------------------------------
    def start(self) -> Prefetcher:
        if self._started:
            raise RuntimeError("a Prefetcher is one pass over its day batches; create a new one per epoch")
        self._started = True
        if self.cuda:
            self._stream = torch.cuda.Stream(device=self.device)
        self._thread = threading.Thread(target=self._produce, name=self.name, daemon=True)
        self._thread.start()
        return self

    def __iter__(self) -> Iterator[Batch]:
        if self._iterated:
            raise RuntimeError("a Prefetcher is one pass over its day batches; create a new one per epoch")
        self._iterated = True
        if not self._started:
            self.start()
        return self._consume()

    def _consume(self) -> Iterator[Batch]:
        try:
            while True:
                item = self._get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    where = f" (day batch {np.asarray(item.where).tolist()})" if item.where is not None else ""
                    raise PrefetchError(f"gathering a batch on the prefetch thread failed{where}: "
                                        f"{type(item.exc).__name__}: {item.exc}") from item.exc
                batch, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    # the caching allocator must not recycle these blocks before the consumer's stream is done
                    for f in dataclasses.fields(batch):
                        getattr(batch, f.name).record_stream(current)
                yield batch
        finally:
            self.close()

    def _get(self) -> Any:
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and self._queue.empty():
                    raise PrefetchError("the prefetch thread ended without a result") from None

    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer and wait for its thread (idempotent)."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue and drop pending batches
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
