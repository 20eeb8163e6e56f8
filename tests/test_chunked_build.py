"""The chunked build equals the whole-panel build: grid, statistics, leak screen, warnings."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from atft_core.config import CacheConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.normalise import standardise_targets
from atft_core.data.cache.store import open_cache
from tests.panels import make_panel


def _panel() -> pl.DataFrame:
    df = make_panel(days=50, stocks=25, features=4, drop=0.08, seed=4)
    day_mean = pl.col("feat_0").mean().over("Date")
    return df.with_columns(
        (day_mean * 3).alias("mkt_index"),  # one value per day for every stock: normalised over time
        pl.lit(1.5).alias("constant"),
        (pl.col("target_1d") * 2 + 0.001).alias("peek"),  # look-ahead: the screen must flag it
        pl.when(pl.int_range(pl.len()) % 9 == 0).then(None).otherwise(pl.col("feat_1")).alias("feat_1"),
        pl.when(pl.col("Code") == "13030").then(pl.lit("Growth")).otherwise(pl.col("Section")).alias("Section"),
    )


def test_chunked_build_equals_whole_panel_build(tmp_path):
    df = _panel()
    whole = tmp_path / "whole.parquet"
    df.sort("Date", "Code").write_parquet(whole, row_group_size=len(df))  # one row group, one chunk of days
    pieces = tmp_path / "pieces.parquet"  # shuffled rows in small row groups: days split across batches
    pq.write_table(df.sample(fraction=1.0, shuffle=True, seed=1).to_arrow(), pieces, row_group_size=97)

    a = build_cache(whole, tmp_path / "a", CacheConfig(chunk_days=10_000), progress=False)
    b = build_cache(pieces, tmp_path / "b", CacheConfig(chunk_days=3), progress=False)
    ca, cb = open_cache(a.path), open_cache(b.path)
    for name in ("x", "y", "y_z", "valid", "static"):
        np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name), err_msg=name)
    # the targets' z-scores, taken a chunk at a time, are the whole panel's
    np.testing.assert_array_equal(cb.y_z, standardise_targets(cb.y, CacheConfig().clip))
    ma, mb = (json.loads((c.path / "manifest.json").read_text()) for c in (ca, cb))
    for key in ("shape", "features", "feature_kinds", "market_features", "dates", "codes", "section_vocab",
                "sector_vocab", "leak_suspects", "leak_screen", "rows", "horizons", "targets"):
        assert ma[key] == mb[key], key
    assert sorted(ma["warnings"]) == sorted(mb["warnings"])
    # and the statistics are the ones asked for
    assert "mkt_index" in ma["market_features"] and "feat_0" not in ma["market_features"]
    assert any("'constant': constant" in w for w in ma["warnings"])
    assert {s["feature"] for s in ma["leak_suspects"]} == {"peek"}
    assert (ca.x[~ca.valid] == 0).all() and np.isfinite(ca.x).all()


def test_market_features_guessed_wrong_from_the_first_chunk_are_corrected(tmp_path, caplog):
    """The stream guesses market-level features from the first chunk; a wrong guess is rebuilt, not kept."""
    df = make_panel(days=50, stocks=25, features=3, drop=0.0, seed=5)
    day = pl.col("Date").rank("dense") - 1
    per_stock = pl.col("feat_0")
    day_value = pl.col("feat_1").mean().over("Date")
    df = df.with_columns(
        # equal for every stock on the first 10 days, then per stock: cross-sectional over all days
        pl.when(day < 10).then(day_value).otherwise(per_stock).alias("late_spread"),
        # per stock on the first 2 days only (2 of 50 < 5%): market-level over all days
        pl.when(day < 2).then(per_stock).otherwise(day_value).alias("early_spread"),
    )
    path = tmp_path / "p.parquet"
    df.sort("Date", "Code").write_parquet(path)
    a = build_cache(path, tmp_path / "a", CacheConfig(chunk_days=10_000), progress=False)
    with caplog.at_level("INFO", logger="atft_core.data.cache.grid_build"):
        b = build_cache(path, tmp_path / "b", CacheConfig(chunk_days=3), progress=False)
    assert any("building again" in r.getMessage() and "corrected" in r.getMessage() for r in caplog.records)
    ca, cb = open_cache(a.path), open_cache(b.path)
    np.testing.assert_array_equal(ca.x, cb.x)
    kinds = cb.manifest["feature_kinds"]
    assert kinds["late_spread"] == "cross_sectional" and kinds["early_spread"] == "market"
    assert ca.manifest["feature_kinds"] == kinds and ca.manifest["leak_screen"] == cb.manifest["leak_screen"]


def test_compiled_and_numpy_builds_give_the_same_cache(tmp_path, monkeypatch):
    """The numba kernels (gather, day statistics and z-scores) against the numpy path hosts without numba take,
    through the whole build: shuffled rows, chunks split across batches, an integer feature, infinite values."""
    from atft_core.data.cache import build_kernels

    df = _panel().with_columns(
        (pl.col("feat_2") * 100).round().cast(pl.Int32).alias("int_feat"),
        pl.when(pl.int_range(pl.len()) % 37 == 0).then(float("inf")).otherwise(pl.col("feat_3")).alias("feat_3"),
    )
    path = tmp_path / "p.parquet"
    pq.write_table(df.sample(fraction=1.0, shuffle=True, seed=2).to_arrow(), path, row_group_size=131)
    compiled = open_cache(build_cache(path, tmp_path / "a", CacheConfig(chunk_days=4), progress=False).path)
    monkeypatch.setattr(build_kernels, "AVAILABLE", False)
    plain = open_cache(build_cache(path, tmp_path / "b", CacheConfig(chunk_days=4), progress=False).path)
    np.testing.assert_allclose(compiled.x, plain.x, rtol=1e-6, atol=1e-6)
    assert (compiled.x == plain.x).mean() > 0.999
    for name in ("y", "y_z", "valid", "static"):
        np.testing.assert_array_equal(getattr(compiled, name), getattr(plain, name), err_msg=name)
    ma, mb = compiled.manifest, plain.manifest
    for key in ("features", "feature_kinds", "leak_suspects", "rows"):
        assert ma[key] == mb[key], key
    assert sorted(ma["warnings"]) == sorted(mb["warnings"])
    assert any("'feat_3'" in w and "infinite" in w for w in ma["warnings"]), ma["warnings"]
    assert "int_feat" in ma["features"] and np.isfinite(compiled.x).all()
