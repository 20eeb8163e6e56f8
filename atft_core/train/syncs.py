"""Count the host syncs a piece of code makes: the reads that make the CPU wait for the device.

`SyncCounter` is a dispatch mode (it sees every aten op, on any device) plus a function mode (it
sees the Python-level reads that never reach aten as ops, such as ``Tensor.tolist`` on a scalar).
It records the ops whose result the host must wait for:

- ``aten::_local_scalar_dense`` (``item()``, ``float(t)``, ``int(t)``, ``bool(t)``, a tensor in ``if``);
- ops whose output size depends on the data: ``nonzero``, ``unique*``, ``masked_select``,
  boolean-mask indexing (it runs ``nonzero``), ``repeat_interleave`` with tensor repeats;
- copies to the host: ``Tensor.tolist`` / ``numpy`` / ``.cpu()`` / ``.to("cpu")`` of a device tensor.

On CPU nothing waits, but the same ops are what would stall a CUDA stream, so the count made on CPU
is the count the GPU step would pay (`bench/gpu_check.py` also runs the step under
``torch.cuda.set_sync_debug_mode("error")`` on CUDA). Tensors named in ``ignore`` are left out: the
non-fused CPU optimiser keeps its step counters as host scalars and reads them (no device involved).
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCounter", "SYNC_OPS", "allowed_sync"]

SYNC_OPS: frozenset[str] = frozenset({
    "_local_scalar_dense", "nonzero", "nonzero_static_placeholder", "unique", "_unique", "_unique2",
    "unique_dim", "unique_consecutive", "unique_dim_consecutive", "masked_select", "_assert_async",
})
_HOST_READS = {"tolist", "numpy", "item", "__bool__", "__int__", "__float__", "__index__"}


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: SyncCounter):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in SYNC_OPS and not self.owner.ignored(first):
            self.owner.record(f"aten::{name}")
        elif name == "repeat_interleave" and func._overloadname != "self_int" and "output_size" not in kwargs:
            self.owner.record("aten::repeat_interleave(tensor repeats)")
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_") and _bool_index(args):
            self.owner.record(f"aten::{name}(boolean mask)")  # runs nonzero below the dispatcher
        elif name in ("_to_copy", "copy_") and self.owner.device_to_host(func, args, kwargs):
            self.owner.record(f"aten::{name}(to host)")
            out = func(*args, **kwargs)
            self.owner.host_copies.add(out)  # reading it afterwards (tolist) is the same sync, counted here
            return out
        return func(*args, **kwargs)


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class _Function(TorchFunctionMode):
    def __init__(self, owner: SyncCounter):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        # a device tensor's read shows up below as its copy to the host; a CPU tensor's read stands
        # for the same read of the CUDA run
        if name in ("tolist", "numpy") and args and isinstance(args[0], torch.Tensor) \
                and args[0].device.type == "cpu" and args[0] not in self.owner.host_copies:
            if not self.owner.ignored(args[0]):
                self.owner.record(f"Tensor.{name}")
        return func(*args, **kwargs)


class SyncCounter:
    """``with SyncCounter() as c: step()`` then ``c.total`` / ``c.counts`` (op -> times).

    Args:
        ignore: tensors whose reads are host-only by design (optimiser step counters on the host).
    """

    def __init__(self, ignore: Iterable[torch.Tensor] = ()):
        self.counts: Counter[str] = Counter()
        self.host_copies: weakref.WeakSet[torch.Tensor] = weakref.WeakSet()
        self._ignore = {id(t) for t in ignore}
        self._modes: list[Any] = []

    def ignored(self, t: torch.Tensor | None) -> bool:
        return t is not None and id(t) in self._ignore

    def record(self, what: str) -> None:
        self.counts[what] += 1

    @staticmethod
    def device_to_host(func, args, kwargs) -> bool:
        """A copy from a non-CPU tensor into host memory (``_to_copy`` to cpu, or ``copy_`` into a CPU tensor)."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if func._schema.name.endswith("_to_copy"):
            dev = kwargs.get("device")
            return bool(tensors) and tensors[0].device.type != "cpu" and dev is not None \
                and torch.device(dev).type == "cpu"
        return len(tensors) > 1 and tensors[0].device.type == "cpu" and tensors[1].device.type != "cpu"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> SyncCounter:
        self._modes = [_Function(self), _Dispatch(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        self._modes = []


@contextmanager
def allowed_sync() -> Iterator[None]:
    """A sync made on purpose (the trainer's read once per log interval): lifts CUDA's sync debug mode.

    Under ``torch.cuda.set_sync_debug_mode("error")`` every other sync raises; this one is allowed.
    """
    if not torch.cuda.is_available():
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)
