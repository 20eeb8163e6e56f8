"""Day batches equal a plain reference: every training day once per epoch, reshuffled and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from atft_core.train.batches import DayBatchSampler, GridTensors
from tests.panels import small_split_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return small_split_cache(tmp_path_factory.mktemp("batches"))


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
