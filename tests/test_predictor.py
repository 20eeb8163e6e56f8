"""One predict contract: the model, ridge, peer and oracle all give [D, S, H]; a checkpoint loads into a
predictor that predicts what the trainer predicted; `atft predict` ranks every stock of a panel's day."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from atft_core.config import AtftConfig, DataConfig, SplitConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import open_cache
from atft_core.data.split import make_split
from atft_core.evaluate.baselines import DemoOracle, RidgeModel, fit_ridge, oracle_on_days, ridge_baseline
from atft_core.evaluate.metrics import summarize
from atft_core.evaluate.peer import PeerConfig, PeerModel, fit_peer, peer_baseline
from atft_core.evaluate.predictor import Predictor
from atft_core.train.checkpoint import CheckpointMismatch
from atft_core.train.predictor import ModelPredictor, load_model
from atft_core.train.trainer import Trainer
from tests.panels import make_panel, write
from tests.test_baselines import synthetic_cache
from tests.test_cli_answers import assert_one_answer, atft

DATA = DataConfig(window=1, min_stocks=20, split=SplitConfig(val_days=40, test_days=40, embargo_days=5))


def _small_cfg(**train) -> AtftConfig:
    return AtftConfig.from_dict({"data": {"window": 5, "min_stocks": 5, "min_train_days": 5,
                                            "split": {"val_days": 10, "test_days": 0}},
                                   "model": {"hidden": 8, "attn_heads": 2, "gat_heads": [2], "static_dim": 4},
                                   "train": {"max_epochs": 1, "progress": False, "device": "cpu",
                                             "max_train_days": 6, **train}})


def test_every_predictor_satisfies_the_contract():
    for predictor in (RidgeModel(), PeerModel(), DemoOracle(), ModelPredictor(AtftConfig(), device="cpu")):
        assert isinstance(predictor, Predictor), type(predictor).__name__


# ------------------------------------------------------------------------------------------- baselines


def test_ridge_predicts_every_horizon_and_its_first_is_the_one_horizon_ridge(tmp_path):
    cache = synthetic_cache(tmp_path, seed=1)
    split = make_split(cache, DATA)
    days = split.test
    pred = RidgeModel(alpha=2.0).fit(cache, split).predict(cache, days)
    assert pred.shape == (len(days), 80, 2) and pred.dtype == np.float64
    for k in range(2):  # each horizon is the per-horizon fit the baseline has always made
        np.testing.assert_array_equal(pred[:, :, k], fit_ridge(cache, split.train, 2.0, k).apply(cache, days))
    assert np.isnan(pred[~cache.valid[days]]).all() and np.isfinite(pred[cache.valid[days]]).all()
    only_first = RidgeModel(horizon_indices=(0,)).fit(cache, split).predict(cache, days)
    assert np.isnan(only_first[:, :, 1]).all()
    # the baseline's score is the score of that grid's first horizon
    out = ridge_baseline(cache, split, alpha=2.0, days=days)
    target = np.where(cache.valid[days], cache.y[days, :, 0], np.nan)
    assert out["rankic"] == summarize(pred[:, :, 0].copy(), target).rankic and out["train_days"] == len(split.train)
    with pytest.raises(ValueError, match="not fitted"):
        RidgeModel().predict(cache, days)


def test_peer_models_its_first_horizon_and_leaves_the_others_nan(tmp_path):
    cache = synthetic_cache(tmp_path, days=160, stocks=60, features=3, seed=3)
    split = make_split(cache, DATA)
    cfg = PeerConfig(max_rounds=20, num_threads=1, min_data_in_leaf=50)
    pred = PeerModel(cfg).fit(cache, split).predict(cache, split.test)
    assert pred.shape == (len(split.test), 60, 2)
    one = fit_peer(cache, split, cfg).apply(cache, split.test)  # the one-horizon peer
    np.testing.assert_array_equal(pred[:, :, 0], one)
    assert np.isnan(pred[:, :, 1]).all()
    valid = cache.valid[split.test]
    assert np.isfinite(pred[:, :, 0][valid]).all() and np.isnan(pred[:, :, 0][~valid]).all()
    both = PeerModel(cfg, horizon_indices=(0, 1)).fit(cache, split).predict(cache, split.test)
    np.testing.assert_array_equal(both[:, :, 0], one)
    assert np.isfinite(both[:, :, 1][valid]).all()
    out = peer_baseline(cache, split, cfg=cfg, return_pred=True)
    np.testing.assert_array_equal(out["pred"], one)


# ------------------------------------------------------------------------------------ model round trip


@pytest.fixture(scope="module")
def trained(tiny_demo, tiny_config, tmp_path_factory):
    """(config, cache folder root, opened cache, checkpoint, the trainer's result) on the tiny demo."""
    root = tmp_path_factory.mktemp("predict")
    cfg = AtftConfig.from_yaml(tiny_config)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=2, device="cpu"))
    cache = open_cache(build_cache(tiny_demo, root / "cache", cfg.cache, progress=False).path)
    ckpt = root / "run" / "checkpoint.pt"
    result = Trainer(cache, cfg).fit(checkpoint_path=ckpt)
    return cfg, root, cache, ckpt, result


def test_demo_oracle_repeats_mu_along_the_horizons(trained, tmp_path):
    cfg, _, cache, _, _ = trained
    days = np.arange(100, 130)
    pred = DemoOracle().fit(cache, make_split(cache, cfg.data)).predict(cache, days)
    assert pred.shape == (30, cache.x.shape[1], len(cache.horizons))
    for k in range(1, len(cache.horizons)):
        np.testing.assert_array_equal(pred[:, :, k], pred[:, :, 0])
    assert np.isfinite(pred[:, :, 0][cache.valid[days]]).all()
    target = np.where(cache.valid[days], cache.y[days, :, 1], np.nan)
    assert oracle_on_days(cache, days, horizon_index=1)["rankic"] == summarize(pred[:, :, 1].copy(), target).rankic
    with pytest.raises(ValueError, match="demo panels only"):
        DemoOracle().predict(synthetic_cache(tmp_path), days)


def test_checkpoint_loads_and_predicts_what_the_trainer_predicted(trained):
    cfg, _, cache, ckpt, result = trained
    model = load_model(ckpt, device="cpu")
    assert isinstance(model, Predictor) and model.horizons == cache.horizons and model.epoch == result.best_epoch
    val = model.predict(cache, result.val_days)
    assert val.shape == (len(result.val_days), cache.x.shape[1], len(cache.horizons)) and val.dtype == np.float32
    np.testing.assert_array_equal(val, result.val_pred)  # bit for bit, NaN where no row included
    np.testing.assert_array_equal(model.predict(cache, result.test_days), result.test_pred)
    # fit trains the same model from the same seed: the contract's fit is the trainer's
    refit = ModelPredictor(cfg, device="cpu").fit(cache, make_split(cache, cfg.data))
    np.testing.assert_array_equal(refit.predict(cache, result.test_days), result.test_pred)


def test_round_trip_is_exact_with_the_plain_weights_too(tmp_path):
    """train.ema_decay = 0: the trainer predicts with its trainable weights, and so does the loaded model."""
    cfg = _small_cfg(ema_decay=0.0)
    cache = open_cache(build_cache(write(make_panel(days=60, stocks=30, seed=1), tmp_path / "a.parquet"),
                                   tmp_path / "cache", progress=False).path)
    result = Trainer(cache, cfg).fit(checkpoint_path=tmp_path / "checkpoint.pt")
    model = load_model(tmp_path / "checkpoint.pt", device="cpu")
    np.testing.assert_array_equal(model.predict(cache, result.val_days), result.val_pred)


def test_loaded_model_refuses_another_layout_and_a_day_without_history(trained, tmp_path):
    _, _, cache, ckpt, _ = trained
    model = load_model(ckpt, device="cpu")
    with pytest.raises(CheckpointMismatch, match="features"):
        model.predict(synthetic_cache(tmp_path), np.array([50]))
    with pytest.raises(ValueError, match="pick a later date"):
        model.predict(cache, np.array([3]))
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "none.pt")


# ------------------------------------------------------------------------------------------ atft predict


def test_atft_predict_ranks_every_stock_of_the_last_day(trained, tiny_demo, tmp_path):
    _, root, cache, ckpt, _ = trained
    proc = atft(["predict", "--checkpoint", str(ckpt), "--data-path", str(tiny_demo),
                 "--cache-dir", str(root / "cache")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = len(cache.dates) - 1
    df = pl.read_parquet(ckpt.parent / f"predictions-{cache.dates[last]}.parquet")
    n = int(cache.valid[last].sum())
    assert df.height == n and df["Code"].n_unique() == n
    assert df["Date"].cast(pl.String).unique().to_list() == [cache.dates[last]]
    assert df.columns == ["Date", "Code", *(c for h in cache.horizons for c in (f"score_{h}d", f"rank_{h}d"))]
    for h in cache.horizons:
        assert sorted(df[f"rank_{h}d"].to_list()) == list(range(1, n + 1))
        best = df.filter(pl.col(f"rank_{h}d") == 1)[f"score_{h}d"].item()
        assert best == df[f"score_{h}d"].max()  # rank 1 = highest score
    expected = load_model(ckpt, device="cpu").predict(cache, np.array([last]))[0]  # [S, H]
    codes = np.asarray(cache.codes)
    rows = {c: i for i, c in enumerate(codes)}
    got = df["score_1d"].to_numpy()
    want = expected[[rows[c] for c in df["Code"].to_list()], 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "no target known yet" in proc.stdout and "top 10 by the 1d score" in proc.stdout
    assert "bottom 5" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def _other_layout(tiny_demo: Path, cache, tmp: Path) -> Path:
    df = pl.read_parquet(tiny_demo).drop(cache.feature_names[-1])
    path = tmp / "other.parquet"
    df.write_parquet(path)
    return path


@pytest.mark.parametrize("case", ["bad-date", "missing-checkpoint", "other-layout"])
def test_atft_predict_bad_input_is_one_error_line(trained, tiny_demo, tmp_path, case):
    _, root, cache, ckpt, _ = trained
    args = ["predict", "--checkpoint", str(ckpt), "--data-path", str(tiny_demo), "--cache-dir", str(root / "cache")]
    words = {"bad-date": ["1999-01-04", "not a trading day"], "missing-checkpoint": ["does not exist"],
             "other-layout": ["different panel layout", "features"]}[case]
    if case == "bad-date":
        args += ["--date", "1999-01-04"]
    elif case == "missing-checkpoint":
        args[2] = str(tmp_path / "run" / "checkpoint.pt")
    else:
        args[4] = str(_other_layout(tiny_demo, cache, tmp_path))
    assert_one_answer(atft(args, tmp_path), 2, *words)
