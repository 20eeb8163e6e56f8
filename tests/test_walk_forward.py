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


# ---------------------------------------------------------------------------------------------- ledger


def test_the_ledger_appends_one_line_per_look_and_counts_them(tmp_path):
    from bench import goal_ledger

    ledger = tmp_path / "goal_ledger.jsonl"
    assert goal_ledger.count_looks(ledger) == {} and goal_ledger.looks_at_seed("prices", 1, ledger) == 0
    line = goal_ledger.append_look({"market": "prices", "seeds": [3, 1, 2], "pooled": {"model": 0.06}}, ledger)
    goal_ledger.append_look({"market": "prices", "seeds": [1, 2, 3]}, ledger)
    goal_ledger.append_look({"market": "planted", "seeds": [1]}, ledger)
    assert line["seeds"] == [1, 2, 3] and line["utc"].endswith("+00:00") and "commit" in line and "dirty" in line
    assert len(line["commit"]) == 40  # the tests run inside the repository
    assert goal_ledger.count_looks(ledger) == {("prices", (1, 2, 3)): 2, ("planted", (1,)): 1}
    assert goal_ledger.looks_at_seed("prices", 2, ledger) == 2 and goal_ledger.looks_at_seed("planted", 1, ledger) == 1
    assert len(ledger.read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="market and the seeds"):
        goal_ledger.append_look({"seeds": [1]}, ledger)


@pytest.mark.parametrize("argv, words", [
    (["--goals", "--seeds", "0,1"], "tuning seeds"),
    (["--tuning", "--seeds", "2"], "goal seeds"),
    (["--tuning", "--goals"], "not allowed with"),
    (["--tuning", "--seeds", "a"], "comma list"),
    (["--tuning", "--seeds", "0", "--windows", "0"], ">= 1"),
    (["--goals", "--seeds", "5"], "tuning seeds"),
    (["--tuning", "--set", "model.no_such_field=1"], "existing config field"),
    (["--tuning", "--set", "model.long_blocks"], "SECTION.KEY=VALUE"),
    (["--tuning", "--set", "model.fan_mode=sideways"], "model.fan_mode"),
    (["--tuning", "--predictors", "model,trees"], "choose from"),
    (["--tuning", "--predictors", ","], "choose from"),
    (["--tuning", "--predictors", "model@0"], "choose from"),
])
def test_walk_forward_cli_refuses_seeds_of_the_other_mode_with_exit_2(argv, words, capsys):
    from bench.walk_forward import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and words in capsys.readouterr().err


def test_settings_override_the_config_by_section_and_key():
    from atft_core.config import AtftConfig
    from bench.walk_forward import with_settings

    cfg = with_settings(AtftConfig(), ["model.fan_mode=normalise", "model.piecewise_edges=[]", "model.long_blocks=6"])
    assert (cfg.model.fan_mode, cfg.model.piecewise_edges, cfg.model.long_blocks) == ("normalise", (), 6)
    assert AtftConfig().model.fan_mode == "streams"  # the default is not touched


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_cache(tiny_demo, tmp_path_factory):
    from atft_core.data.cache.build import build_cache

    return build_cache(tiny_demo, tmp_path_factory.mktemp("wf") / "cache", progress=False).path


def _tiny_cfg(tiny_config):
    from atft_core.config import AtftConfig

    cfg = AtftConfig.from_yaml(tiny_config)
    cfg.train.max_epochs, cfg.train.device = 1, "cpu"
    return cfg


def _peer_cfg():
    from atft_core.evaluate.peer import PeerConfig

    return PeerConfig(max_rounds=20, num_threads=1, min_data_in_leaf=50, min_stocks=10)


def test_tiny_walk_forward_scores_every_predictor_per_window_seed_and_pooled(tiny_cache, tiny_config):
    from bench.walk_forward import markdown, run

    cfg = _tiny_cfg(tiny_config)
    out = {}
    for mode in ("tuning", "goals"):
        out[mode] = run("planted", [0], mode, windows=2, window_days=20, days=260, stocks=60, cfg=cfg,
                        peer_cfg=_peer_cfg(), cache_for=lambda seed: tiny_cache)
    goals, tuning = out["goals"], out["tuning"]
    windows = goals["seeds"]["0"]["windows"]
    assert len(windows) == 2 and all(w["n_days"] == 20 for w in windows)
    assert windows[0]["last_day"] < windows[1]["first_day"] and windows[1]["train_days"] > windows[0]["train_days"]
    for w in windows:
        assert set(w["daily"]) == {"model", "peer", "ridge", "oracle"}
        assert all(len(v) == 20 for v in w["daily"].values())
        assert w["cpu_seconds"]["model"] > w["cpu_seconds"]["ridge"] >= 0 and w["cpu_seconds"]["peer"] > 0
    pooled = goals["pooled"]
    assert pooled["days"] == 40 and pooled["oracle"] > 0.05  # the planted signal is there
    diff = np.concatenate([np.array(w["daily"]["model"]) - np.array(w["daily"]["peer"]) for w in windows])
    d = pooled["model_minus_peer"]
    assert abs(d["mean"] - np.nanmean(diff)) < 1e-12 and d["lo"] <= d["mean"] <= d["hi"]
    assert goals["seeds"]["0"]["summary"]["model"] == pooled["model"]  # one seed: pooled is that seed
    # tuning scores each window's validation days: they end before its test window, minus the embargo
    for tw, gw in zip(tuning["seeds"]["0"]["windows"], windows):
        assert tw["last_day"] < gw["first_day"] and tw["n_days"] == 20
    table = markdown(goals, looks=1)
    assert "| pooled |" in table and "scored 1 time(s)" in table and "test days scored" in table


def test_tuning_reads_nothing_of_its_windows_test_days(tiny_cache, tiny_config):
    """Garbage on the last window's test days changes no tuning score: the splits carry no test day."""
    import dataclasses

    from atft_core.data.cache.store import open_cache
    from atft_core.data.split import make_walk_forward
    from bench.walk_forward import score_window

    cfg = _tiny_cfg(tiny_config)
    cache = open_cache(tiny_cache)
    split = make_walk_forward(cache, cfg.data, 1, 20)[0]
    rng = np.random.default_rng(0)
    x, y, y_z = cache.x.copy(), cache.y.copy(), cache.y_z.copy()
    t = split.test
    x[t] = rng.standard_normal(x[t].shape)
    y[t], y_z[t] = rng.standard_normal(y[t].shape), rng.standard_normal(y_z[t].shape)
    poisoned = dataclasses.replace(cache, x=x, y=y, y_z=y_z)
    args = (split, cfg, "tuning", _peer_cfg(), ("peer", "ridge"))
    a, b = score_window(cache, *args), score_window(poisoned, *args)
    assert a["daily"] == b["daily"]
    goals = ("goals", _peer_cfg(), ("ridge",))
    assert score_window(cache, split, cfg, *goals)["daily"] != score_window(poisoned, split, cfg, *goals)["daily"]


def test_the_shuffled_target_control_finds_nothing_and_a_real_signal_would_fail_its_band(tiny_cache, tiny_config):
    """The control (the model trained on targets shuffled within each training day) lands inside its band
    on the real test targets; the oracle's daily RankICs put through the same verdict land outside it."""
    import copy

    from bench.walk_forward import CONTROL, control_summary, markdown, run

    out = run("planted", [0], "goals", windows=2, window_days=20, days=260, stocks=60, cfg=_tiny_cfg(tiny_config),
              peer_cfg=_peer_cfg(), cache_for=lambda seed: tiny_cache,
              predictors=("peer", "oracle", CONTROL, "model@1"))
    windows = out["seeds"]["0"]["windows"]
    assert all(len(w["daily"][CONTROL]) == 20 and w["control_null"] > 0 for w in windows)
    assert all(w["cpu_seconds"][CONTROL] > 0 for w in windows) and out["pooled"]["model"] is None
    verdict = out["pooled"][CONTROL]
    assert verdict["n_days"] == 40 and verdict["inside"], verdict
    assert verdict["band"] >= verdict["noise_band"] > 0 and abs(verdict["rankic"]) <= verdict["band"]
    planted = copy.deepcopy(windows)
    for w in planted:
        w["daily"][CONTROL] = w["daily"]["oracle"]  # a "control" that sees the planted signal
    assert not control_summary(planted)["inside"]
    assert "control [band]" in markdown(out) and "inside" in markdown(out)
    early = out["pooled"]  # the model stopped after one epoch, paired with the peer on the same days
    assert np.isfinite(early["model@1"]) and early["model@1_cpu_seconds"] > 0
    assert early["model@1_minus_peer"]["lo"] <= early["model@1_minus_peer"]["mean"] <= early["model@1_minus_peer"]["hi"]
    assert "model@1 (the model stopped after 1 epoch(s))" in markdown(out)
