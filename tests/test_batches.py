"""Day batches equal a plain reference; splits never let a validation label overlap a training one."""

from __future__ import annotations

import numpy as np
import pytest

from atft_core.config import SplitConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.indexing import day_index
from atft_core.data.cache.store import open_cache
from atft_core.data.split import eligible_days, walk_forward_split
from atft_core.errors import DatasetError
from atft_core.train.batches import DayBatchSampler, GridTensors
from tests.panels import make_panel, write


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    path = write(make_panel(days=90, stocks=25, features=3, drop=0.15, horizons=(1, 5, 10)), d / "p.parquet")
    return open_cache(build_cache(path, d / "cache", progress=False).path)


def test_day_index_equals_python_loop():
    rng = np.random.default_rng(0)
    dates = rng.integers(0, 50, size=5000)
    codes = rng.choice(np.array([f"{c}0" for c in range(1000, 1100)]), size=5000)
    cal, names, day, stock = day_index(dates, codes)
    cal_ref, names_ref = sorted(set(dates.tolist())), sorted(set(codes.tolist()))
    dpos = {d: i for i, d in enumerate(cal_ref)}
    spos = {c: i for i, c in enumerate(names_ref)}
    assert cal.tolist() == cal_ref and names.tolist() == names_ref
    assert day.tolist() == [dpos[d] for d in dates.tolist()]
    assert stock.tolist() == [spos[c] for c in codes.tolist()]


def test_eligible_days_equal_reference(cache):
    got = eligible_days(cache, window=10, min_stocks=20)
    ref = [t for t in range(cache.valid.shape[0])
           if t >= 9 and sum(cache.valid[t, s] and np.isfinite(cache.y[t, s, 0]) for s in range(25)) >= 20]
    assert got.tolist() == ref


def test_sampler_whole_days_every_day_once_reshuffled_and_seeded():
    days = np.arange(10, 60)
    s = DayBatchSampler(days, days_per_batch=3, seed=7)
    e0 = np.concatenate(list(s))
    assert sorted(e0.tolist()) == days.tolist()  # every training day, once per epoch
    assert len(list(s)) == len(s) == 17
    s.set_epoch(1)
    e1 = np.concatenate(list(s))
    assert sorted(e1.tolist()) == days.tolist() and e1.tolist() != e0.tolist()  # reshuffled each epoch
    again = DayBatchSampler(days, days_per_batch=3, seed=7)
    assert np.concatenate(list(again)).tolist() == e0.tolist()  # reproducible
    capped = DayBatchSampler(days, days_per_batch=4, seed=7, max_days=8)
    assert len(np.concatenate(list(capped))) == 8  # a cap only when asked for


def test_gather_equals_reference(cache):
    L = 10
    grid = GridTensors(cache, window=L)
    days = np.array([40, 12])
    b = grid.gather(days)
    rows = 0
    for k, t in enumerate(days):
        stocks = [s for s in range(cache.valid.shape[1]) if cache.valid[t, s]]
        for i, s in enumerate(stocks):
            r = rows + i
            ref_x = np.stack([cache.x[t - L + 1 + j, s] for j in range(L)])
            np.testing.assert_array_equal(b.x[r].numpy(), ref_x)
            assert int(b.stock[r]) == s and int(b.day_id[r]) == k
            np.testing.assert_array_equal(b.static[r].numpy(), cache.static[t, s])
            y = cache.y[t, s]
            np.testing.assert_array_equal(b.y_mask[r].numpy(), np.isfinite(y) & np.isfinite(cache.y_z[t, s]))
            np.testing.assert_array_equal(b.y[r].numpy()[np.isfinite(y)], y[np.isfinite(y)])
        rows += len(stocks)
    assert b.x.shape == (rows, L, 3) and b.y.shape == (rows, 3)
    assert b.days.tolist() == days.tolist()


@pytest.mark.parametrize("val_days,test_days", [(20, 0), (15, 10)])
def test_split_labels_never_overlap(cache, val_days, test_days):
    days = eligible_days(cache, window=5, min_stocks=5)
    sp = walk_forward_split(days, cache.horizons, SplitConfig(val_days=val_days, test_days=test_days))
    H = max(cache.horizons)
    assert sp.embargo >= H
    parts = [p for p in (sp.train, sp.val, sp.test) if len(p)]
    for a, b in zip(parts, parts[1:]):
        # label of day t covers trading days (t, t+H]; two labels overlap iff their days differ by < H
        assert b.min() - a.max() > H
        label_a = set(np.concatenate([np.arange(t + 1, t + H + 1) for t in a]).tolist())
        label_b = set(np.concatenate([np.arange(t + 1, t + H + 1) for t in b]).tolist())
        assert not label_a & label_b
    assert len(sp.val) == val_days


def test_split_rejects_short_embargo_and_short_history(cache):
    days = eligible_days(cache, window=5, min_stocks=5)
    with pytest.raises(ValueError, match="shorter than the longest target horizon"):
        walk_forward_split(days, cache.horizons, SplitConfig(embargo_days=3))
    with pytest.raises(DatasetError, match="usable trading days"):
        walk_forward_split(days[:30], cache.horizons, SplitConfig(val_days=25))
