"""The LightGBM peer, the same-days oracle, rank-gauss targets and the cross-section block."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import torch

from atft_core.config import DataConfig, SplitConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import open_cache
from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.generate import generate_demo
from atft_core.data.split import make_split
from atft_core.evaluate.baselines import oracle_on_days, ridge_baseline
from atft_core.evaluate.peer import feature_names, peer_baseline, peer_features
from atft_core.ic import daily_ic
from atft_core.model.cross_section import CrossSectionContext, group_mean, sector_relative
from atft_core.train.targets import rank_gauss
from tests.test_baselines import synthetic_cache

DATA = DataConfig(window=1, min_stocks=20, split=SplitConfig(val_days=40, test_days=40, embargo_days=5))


def test_peer_features_use_no_future_day_and_sector_deviation_is_centred(tmp_path):
    cache = synthetic_cache(tmp_path, days=60, stocks=50, features=3)
    cache.static[:, 1] = np.arange(50) % 4
    days = np.array([10, 30, 31])
    a = peer_features(cache, days)
    assert a.shape == (3, 50, 5 * 3) and len(feature_names(cache.feature_names)) == 15
    future = dataclasses.replace(cache, x=cache.x.copy())
    future.x[32:] = np.random.default_rng(1).standard_normal(future.x[32:].shape)
    np.testing.assert_array_equal(peer_features(future, days), a)  # days after 31 change nothing
    past = dataclasses.replace(cache, x=cache.x.copy())
    past.x[25] += 1.0 + np.arange(50)[:, None]  # day 25 enters the 10- and 20-day means of day 30, not its rank
    b = peer_features(past, days)
    np.testing.assert_array_equal(b[:, :, :3], a[:, :, :3])
    assert not np.allclose(b[1, :, 6:9], a[1, :, 6:9], equal_nan=True)
    v = cache.valid[30]
    dev = a[1, v, 12]
    for s in range(4):
        assert abs(dev[cache.static[v, 1] == s].mean()) < 1e-6


def test_peer_finds_a_nonlinear_signal_ridge_cannot(tmp_path):
    cache = synthetic_cache(tmp_path, days=200, stocks=80, features=4, signal=0.0, seed=3)
    signal = np.abs(cache.x[:, :, 0]).astype(np.float64) - 0.8  # symmetric: no linear part
    y = cache.y.copy()
    y[:, :, 0] = np.where(np.isfinite(y[:, :, 0]), 0.01 * (2.0 * signal + np.random.default_rng(0).standard_normal(
        signal.shape)), np.nan)
    from atft_core.data.cache.normalise import standardise_targets
    cache = dataclasses.replace(cache, y=y, y_z=standardise_targets(y, 5.0))
    split = make_split(cache, DATA)
    peer = peer_baseline(cache, split, min_stocks=20)
    ridge = ridge_baseline(cache, split, min_stocks=20)
    assert peer["eval_days"] == len(split.test) == 40
    assert peer["rankic"] > 0.3 and abs(ridge["rankic"]) < 0.1


def test_oracle_is_scored_on_exactly_the_given_days(tmp_path):
    data = tmp_path / "demo.parquet"
    generate_demo(data, DemoConfig(stocks=60, days=150, features=16, seed=5, market="planted"))
    mu = pl.read_parquet(str(data) + ".oracle.parquet")
    assert mu.columns == ["Date", "Code", "mu"] and mu.height == pl.read_parquet(data).height
    cache = open_cache(build_cache(data, tmp_path / "cache", progress=False).path)
    days = np.arange(40, 70)
    out = oracle_on_days(cache, days, min_stocks=20)
    grid = np.full((len(days), len(cache.codes)), np.nan)
    pos = {c: j for j, c in enumerate(cache.codes)}
    dates = list(np.asarray(cache.dates)[days])
    for row in mu.with_columns(pl.col("Date").cast(pl.String)).filter(pl.col("Date").is_in(dates)).iter_rows():
        grid[dates.index(row[0]), pos[row[1]]] = row[2]
    _, ric = daily_ic(grid, np.where(cache.valid[days], cache.y[days, :, 0], np.nan), min_stocks=20)
    assert out["n_days"] == len(days) and abs(out["rankic"] - np.nanmean(ric)) < 1e-9
    assert out["rankic"] > 0.05  # the planted signal is there


def test_rank_gauss_targets_are_per_day_normal_scores():
    rng = np.random.default_rng(0)
    y = rng.standard_t(2, (4, 200, 2))
    y[0, :5, 0] = np.nan
    valid = rng.random((4, 200)) > 0.1
    z = rank_gauss(y, valid)
    m = valid & np.isfinite(y[:, :, 0])
    assert np.isnan(z[:, :, 0][~m]).all() and np.isfinite(z[:, :, 0][m]).all()
    for d in range(4):
        row, zr = y[d, m[d], 0], z[d, m[d], 0]
        assert (np.argsort(row) == np.argsort(zr)).all()  # order kept, fat tails gone
        assert abs(zr.mean()) < 1e-6 and 0.9 < zr.std() < 1.0 and np.abs(zr).max() < 3.5


def test_cross_section_context_never_mixes_days():
    torch.manual_seed(0)
    block = CrossSectionContext(8).eval()
    h = torch.randn(20, 8)
    sector = torch.tensor([0, 1, 2, -1] * 5)
    day = torch.tensor([0] * 10 + [1] * 10)
    out = block(h, sector, day)
    h2 = h.clone()
    h2[10:] += 5.0 * torch.randn(10, 8)
    torch.testing.assert_close(block(h2, sector, day)[:10], out[:10])
    key = day * 4 + sector + 1
    ref = torch.stack([h[key == k].mean(0) for k in key.tolist()])
    torch.testing.assert_close(group_mean(h, key), ref)


def test_sector_relative_inputs_are_same_day_same_sector_deviations():
    """The model's sector-relative stream: x minus the mean of the observed values of its (day, sector)."""
    torch.manual_seed(1)
    x = torch.randn(12, 3, 2)
    observed = torch.rand(12, 3, 2) > 0.2
    sector = torch.tensor([0, 0, 1, 1, -1, -1] * 2)
    day = torch.tensor([0] * 6 + [1] * 6)
    rel = sector_relative(torch.where(observed, x, 0.0), observed, sector, day)
    for i in range(12):
        peers = (sector == sector[i]) & (day == day[i])
        for t in range(3):
            for f in range(2):
                if not observed[i, t, f]:
                    assert rel[i, t, f] == 0
                    continue
                m = peers & observed[:, t, f]
                torch.testing.assert_close(rel[i, t, f], x[i, t, f] - x[m, t, f].mean())
    # another day's values never move this day's deviations
    x2 = x.clone()
    x2[6:] += 10.0
    rel2 = sector_relative(torch.where(observed, x2, 0.0), observed, sector, day)
    torch.testing.assert_close(rel2[:6], rel[:6])


def test_fair_peer_stops_on_the_validation_rankic_fits_every_day_and_bags(tmp_path):
    """Early stopping keeps the round of the highest validation RankIC; a row cap thins stocks, not days."""
    from atft_core.evaluate.peer import PeerConfig, PeerModel, fit_peer, row_mask

    cache = synthetic_cache(tmp_path, days=160, stocks=60, features=3, seed=3)
    split = make_split(cache, DATA)
    cfg = PeerConfig(max_rounds=40, early_stopping=10, num_threads=1, min_data_in_leaf=50)
    fit = fit_peer(cache, split, cfg)
    assert fit.train_days == len(split.train) and fit.cpu_seconds > 0 and fit.fit_seconds > 0
    target = np.where(cache.valid[split.val], cache.y[split.val, :, 0], np.nan)

    def val_rankic(rounds: int) -> float:
        grid = np.full(target.shape, np.nan)
        feats = peer_features(cache, split.val)
        grid[cache.valid[split.val]] = fit.boosters[0].predict(feats[cache.valid[split.val]], num_iteration=rounds)
        return float(np.nanmean(daily_ic(grid, target, min_stocks=20)[1]))

    best = fit.best_iteration
    assert abs(val_rankic(best) - fit.val_rankic[0]) < 1e-9  # the stopping metric is the validation RankIC
    assert all(val_rankic(r) <= fit.val_rankic[0] + 1e-12 for r in range(1, fit.boosters[0].current_iteration() + 1))
    # a cap far below the rows: every training day keeps some stocks
    mask = row_mask(cache, split.train, 0, max_rows=600, seed=0)
    assert mask.any(axis=1).all() and 300 < mask.sum() < 900
    capped = fit_peer(cache, split, PeerConfig(max_rows=600, max_rounds=5, num_threads=1, min_data_in_leaf=20))
    assert capped.train_days == len(split.train) and capped.train_rows == int(mask.sum())
    # a bag of 2: two boosters, the prediction is their mean
    bag = PeerModel(dataclasses.replace(cfg, bag=2)).fit(cache, split)
    one = bag.fits[0]
    assert len(one.boosters) == 2 and one.boosters[0].current_iteration() >= 1
    days = split.test
    feats = peer_features(cache, days)[cache.valid[days]]
    mean = np.mean([b.predict(feats, num_iteration=i) for b, i in zip(one.boosters, one.best_iterations)], axis=0)
    np.testing.assert_allclose(bag.predict(cache, days)[:, :, 0][cache.valid[days]], mean)
