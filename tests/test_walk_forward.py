"""Walk-forward evidence: consecutive test windows each with its own split, the paired-difference interval,
the goal ledger, and one tiny end-to-end walk-forward (ridge, peer, oracle and a 1-epoch model)."""

from __future__ import annotations

import numpy as np
import pytest

from atft_core.config import SplitConfig
from atft_core.data.split import walk_forward_windows
from atft_core.errors import DatasetError
from atft_core.evaluate.compare import block_bootstrap_interval, compare_daily, paired_daily_difference

# ------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("gap", [False, True])
def test_walk_forward_windows_are_consecutive_and_train_only_on_the_past(gap):
    days = np.arange(9, 700)
    if gap:  # days with too few names are missing from the usable days
        days = days[(days < 600) | (days > 610)]
    horizons = (1, 5, 20)
    splits = walk_forward_windows(days, horizons, SplitConfig(val_days=60), windows=4, window_days=60)
    assert len(splits) == 4
    tests = [s.test for s in splits]
    for k, s in enumerate(splits):
        assert s.embargo >= max(horizons)
        assert len(s.test) == (60 if not (gap and k == 2) else 49)
        assert s.test.max() - s.test.min() < 60
        first = s.test.min()
        # every training and validation day is before the test window minus the embargo
        assert s.val.max() < first - s.embargo and s.train.max() < s.val.min() - s.embargo
        assert len(s.val) == 60 or gap and len(s.val) == 49
        assert not np.isin(s.test, s.train).any() and not np.isin(s.test, s.val).any()
        assert set(s.train) == set(days[days < s.val.min() - s.embargo])  # everything before it
    flat = np.concatenate(tests)
    assert len(np.unique(flat)) == len(flat)  # non-overlapping
    assert tests[-1].max() == days.max()
    # consecutive: together the windows are exactly the usable days of the last 4 x 60 day indices
    np.testing.assert_array_equal(flat, days[days > days.max() - 240])
    # later windows train on more history, including earlier test windows
    assert all(len(b.train) > len(a.train) for a, b in zip(splits, splits[1:]))
    assert np.isin(tests[0], splits[-1].train).all()


def test_walk_forward_windows_refuse_too_short_a_history():
    with pytest.raises(DatasetError, match="usable trading days"):
        walk_forward_windows(np.arange(300), (1, 20), SplitConfig(val_days=60), windows=4, window_days=60)
    with pytest.raises(ValueError, match="windows >= 1"):
        walk_forward_windows(np.arange(300), (1,), SplitConfig(), windows=0, window_days=60)


# ------------------------------------------------------------------------------------- paired intervals


def test_block_bootstrap_covers_the_mean_of_iid_differences_at_about_the_nominal_rate():
    covered = 0
    runs = 200
    for seed in range(runs):
        d = np.random.default_rng(seed).normal(0.01, 0.1, 240)
        iv = block_bootstrap_interval([d], n_boot=1000, seed=seed)
        assert iv.lo < iv.mean < iv.hi and iv.n_days == 240 and iv.block == 6
        covered += iv.lo <= 0.01 <= iv.hi
    assert 0.88 * runs <= covered <= 0.99 * runs


def test_an_autocorrelated_series_gets_a_wider_interval_than_its_shuffle():
    rng = np.random.default_rng(1)
    e = rng.normal(0, 0.1, 480)
    ar = np.empty_like(e)
    ar[0] = e[0]
    for t in range(1, len(e)):
        ar[t] = 0.7 * ar[t - 1] + e[t]
    shuffled = rng.permutation(ar)
    wide = block_bootstrap_interval([ar], block=12)
    narrow = block_bootstrap_interval([shuffled], block=12)
    assert abs(wide.mean - narrow.mean) < 1e-12
    assert (wide.hi - wide.lo) > 1.6 * (narrow.hi - narrow.lo)  # AR(1) 0.7: sd of the mean ~2.4x


def test_pooling_weighs_every_day_once_and_never_pairs_across_series():
    a = [np.array([0.1, 0.2, np.nan, 0.3]), np.array([0.0, 0.1])]
    b = [np.array([0.0, 0.1, 0.5, np.nan]), np.array([0.1, 0.1])]
    np.testing.assert_allclose(paired_daily_difference(a[0], b[0]), [0.1, 0.1])
    iv = compare_daily(a, b, block=1)
    assert iv.n_days == 4 and abs(iv.mean - (0.1 + 0.1 - 0.1 + 0.0) / 4) < 1e-12
    assert iv.lo <= iv.mean <= iv.hi
    assert compare_daily(a, b, block=1) == iv  # a fixed seed: the same interval every time
    with pytest.raises(ValueError, match="no paired day"):
        compare_daily([np.array([np.nan])], [np.array([0.1])])
    with pytest.raises(ValueError, match="same length"):
        paired_daily_difference(np.zeros(3), np.zeros(4))
