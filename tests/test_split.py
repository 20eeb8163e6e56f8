"""Day splits: validation and test labels never overlap a training one; eligible days and the day
index equal plain references."""

from __future__ import annotations

import numpy as np
import pytest

from atft_core.config import SplitConfig
from atft_core.data.cache.indexing import day_index
from atft_core.data.split import eligible_days, walk_forward_split
from atft_core.errors import DatasetError
from tests.panels import small_split_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return small_split_cache(tmp_path_factory.mktemp("batches"))


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
