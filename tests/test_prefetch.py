"""The prefetch thread yields exactly the direct gather, in order, stops cleanly, and surfaces errors."""

from __future__ import annotations

import dataclasses
import gc
import threading
import time

import numpy as np
import pytest
import torch

from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import open_cache
from atft_core.data.split import eligible_days
from atft_core.train.batches import DayBatchSampler, GridTensors
from atft_core.train.prefetch import Prefetcher, PrefetchError, cache_nbytes, fits_on_device
from tests.panels import make_panel, write


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefetch")
    path = write(make_panel(days=80, stocks=20, features=3, drop=0.1, horizons=(1, 5)), d / "p.parquet")
    return open_cache(build_cache(path, d / "cache", progress=False).path)


def _equal(a, b) -> bool:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x is None or y is None:  # an optional part (the long-history blocks) is absent from both or wrong
            if x is not y:
                return False
            continue
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)):
            return False
    return True


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("atft-prefetch")]


@pytest.mark.parametrize("depth", [1, 3])
def test_same_batches_same_order_as_direct_gather(cache, depth):
    grid = GridTensors(cache, window=10)
    sampler = DayBatchSampler(eligible_days(cache, 10, 5), days_per_batch=2, seed=3)
    sampler.set_epoch(1)
    direct = [grid.gather(days) for days in sampler]
    got = list(Prefetcher(grid.gather, sampler, device="cpu", depth=depth))
    assert len(got) == len(direct) == len(sampler)
    assert all(_equal(a, b) for a, b in zip(got, direct))
    assert [b.days.tolist() for b in got] == [d.tolist() for d in sampler]


def test_context_manager_and_early_break_stop_the_thread(cache):
    grid = GridTensors(cache, window=10)
    days = [np.array([d]) for d in eligible_days(cache, 10, 5)]
    with Prefetcher(grid.gather, days, depth=2) as batches:
        for i, _ in enumerate(batches):
            if i == 2:
                break
    assert not batches.alive

    pf = Prefetcher(grid.gather, days, depth=2)
    it = iter(pf)
    next(it)
    del it  # an abandoned generator closes the prefetcher
    gc.collect()
    deadline = time.monotonic() + 5
    while pf.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pf.alive
    assert not _prefetch_threads()


def test_exhausted_prefetcher_has_no_thread_and_is_one_pass(cache):
    grid = GridTensors(cache, window=10)
    pf = Prefetcher(grid.gather, [np.array([20]), np.array([21])])
    assert len(list(pf)) == 2
    assert not pf.alive
    with pytest.raises(RuntimeError, match="one pass"):
        list(pf)


def test_producer_exception_surfaces_in_consumer(cache):
    grid = GridTensors(cache, window=10)
    days = [np.array([20]), np.array([21]), np.array([3]), np.array([22])]  # day 3 has no full window
    seen = []
    with pytest.raises(PrefetchError, match=r"day batch \[3\].*IndexError") as info:
        for batch in Prefetcher(grid.gather, days):
            seen.append(batch.days.tolist())
    assert seen == [[20], [21]]  # everything before the failure was delivered, in order
    assert isinstance(info.value.__cause__, IndexError)
    assert not _prefetch_threads()


def test_exception_from_the_day_iterable_surfaces_too(cache):
    grid = GridTensors(cache, window=10)

    def days():
        yield np.array([20])
        raise ValueError("sampler broke")

    with pytest.raises(PrefetchError, match="sampler broke"):
        list(Prefetcher(grid.gather, days()))


def test_consumer_exception_stops_producer(cache):
    grid = GridTensors(cache, window=10)
    days = [np.array([d]) for d in eligible_days(cache, 10, 5)]
    pf = Prefetcher(grid.gather, days, depth=1)
    with pytest.raises(KeyError):
        for _ in pf:
            raise KeyError("step failed")
    assert not pf.alive


def test_fits_on_device(cache):
    need = cache_nbytes(cache)
    assert need == cache.x.nbytes + cache.y.nbytes + cache.y_z.nbytes + cache.valid.nbytes + cache.static.nbytes
    assert cache_nbytes(cache, torch.bfloat16) == need - cache.x.nbytes // 2
    assert fits_on_device(cache, "cpu")  # the memory map is already there
    assert fits_on_device(cache, "cuda", free_bytes=need * 2, headroom=0.8)
    assert not fits_on_device(cache, "cuda", free_bytes=need, headroom=0.8)  # no room left for the model
    assert fits_on_device(cache, "cuda", torch.bfloat16, free_bytes=int(need * 0.9), headroom=0.8) == (
        cache_nbytes(cache, torch.bfloat16) <= 0.8 * int(need * 0.9))
    with pytest.raises(ValueError):
        fits_on_device(cache, "cpu", headroom=0)
