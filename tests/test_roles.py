"""Column roles through the CLI: gogooku3 files as they are, label-like names never inputs, categories as of
each day, and a too-short history refused at build-cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from atft_core.data.cache.store import open_cache
from atft_core.train.batches import GridTensors
from flows.cli import main
from tests.cli_output import has_traceback
from tests.panels import make_panel, write

GOGO_HORIZONS = (1, 5, 10, 20)


def _gogooku3_panel(days: int = 340, stocks: int = 20) -> pl.DataFrame:
    """gogooku3's layout: labels feat_ret_{h}d, sector33_code, past returns and text columns beside them."""
    df = make_panel(days=days, stocks=stocks, features=3, horizons=GOGO_HORIZONS, drop=0.0)
    df = df.rename({f"target_{h}d": f"feat_ret_{h}d" for h in GOGO_HORIZONS})
    return df.with_columns(pl.col("feat_0").alias("returns_1d"), pl.lit("ACME Corp").alias("CompanyName"),
                           pl.col("feat_1").alias("feat_ret_1d_lag"))  # label-like name: never an input


def _build(tmp_path: Path, data: Path, *extra: str) -> tuple[int, dict]:
    cache_dir = tmp_path / "cache"
    code = main(["build-cache", "--data-path", str(data), "--cache-dir", str(cache_dir), *extra])
    manifests = sorted(cache_dir.glob("*/manifest.json")) if cache_dir.exists() else []
    return code, json.loads(manifests[0].read_text()) if manifests else {}


@pytest.mark.parametrize("profile", [["--profile", "gogooku3"], []], ids=["explicit", "detected"])
def test_gogooku3_panel_builds_with_its_labels_and_none_of_them_as_features(tmp_path, capsys, caplog, profile):
    caplog.set_level(logging.INFO, logger="atft_core.data.roles")
    data = write(_gogooku3_panel(), tmp_path / "ml_dataset_latest_full.parquet")
    code, manifest = _build(tmp_path, data, *profile)
    out = capsys.readouterr()
    assert code == 0, out.err
    assert not has_traceback(out.err, out.out)
    assert manifest["horizons"] == list(GOGO_HORIZONS)
    assert manifest["targets"] == [f"feat_ret_{h}d" for h in GOGO_HORIZONS]
    assert not [f for f in manifest["features"] if f.startswith("feat_ret_")]
    assert "returns_1d" in manifest["features"] and "CompanyName" not in manifest["features"]
    assert manifest["roles"]["profile"] == "gogooku3" and manifest["roles"]["sector"] == "sector33_code"
    assert manifest["sector_vocab"] == ["0050", "1050", "3050", "3650"]
    assert "'feat_ret_1d_lag'" in out.out and "named like a label" in out.out  # said, not silent
    if not profile:
        assert "detected the gogooku3 layout" in caplog.text


def test_older_gogooku3_sector_column_name_is_read(tmp_path, capsys):
    data = write(_gogooku3_panel().rename({"sector33_code": "sector33"}), tmp_path / "p.parquet")
    code, manifest = _build(tmp_path, data, "--profile", "gogooku3")
    assert code == 0, capsys.readouterr().err
    assert manifest["roles"]["sector"] == "sector33" and len(manifest["sector_vocab"]) == 4


def test_label_like_columns_beside_target_are_never_features_unless_listed_by_name(tmp_path, capsys):
    extras = ["feat_ret_5d", "ret_fwd_3d", "fwd_return", "future_close", "label_up", "y_next", "target_excess"]
    df = make_panel(days=300).with_columns([pl.col("target_1d").alias(c) for c in extras])
    data = write(df, tmp_path / "p.parquet")
    code, manifest = _build(tmp_path, data)
    assert code == 0, capsys.readouterr().err
    assert manifest["horizons"] == [1, 5]
    assert set(manifest["features"]) == {"feat_0", "feat_1", "feat_2", "feat_3"}
    # a glob in include does not admit a label-like name; its exact name in features_allow does
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cache: {columns: {include: ['feat_*', 'y_*'], features_allow: [y_next]}}\n")
    code, _ = _build(tmp_path / "b", data, "--config", str(cfg))
    manifest = json.loads(next((tmp_path / "b" / "cache").glob("*/manifest.json")).read_text())
    assert code == 0 and set(manifest["features"]) == {"feat_0", "feat_1", "feat_2", "feat_3", "y_next"}


def test_explicit_roles_in_config(tmp_path, capsys):
    df = make_panel(days=300).rename({"Date": "trade_date", "Code": "ticker", "target_1d": "r1", "target_5d": "r5",
                                      "Section": "market"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cache: {columns: {date: trade_date, code: ticker, section: market, targets: {1: r1, 5: r5}, "
                   "exclude: ['feat_3']}}\n")
    code, manifest = _build(tmp_path, write(df, tmp_path / "p.parquet"), "--config", str(cfg))
    assert code == 0, capsys.readouterr().err
    assert manifest["targets"] == ["r1", "r5"] and manifest["features"] == ["feat_0", "feat_1", "feat_2"]
    assert manifest["section_vocab"] == ["Growth", "Prime", "Standard"]


def test_a_mapped_target_that_is_not_in_the_file_is_a_clear_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cache: {columns: {targets: {1: fwd_ret_1d}}}\n")
    code, _ = _build(tmp_path, write(make_panel(days=300), tmp_path / "p.parquet"), "--config", str(cfg))
    err = capsys.readouterr().err
    assert code == 2 and "'fwd_ret_1d'" in err and "columns.targets" in err and not has_traceback(err)
    assert not (tmp_path / "cache").exists()


def test_section_change_mid_history_is_seen_on_each_day_as_it_was(tmp_path, capsys):
    df = make_panel(days=300, stocks=30, drop=0.0)
    mover, switch = "13000", "2022-04-01"  # Prime -> Standard market change on this day
    df = df.with_columns(pl.when((pl.col("Code") == mover) & (pl.col("Date") >= pl.lit(switch).str.to_date()))
                         .then(pl.lit("Standard")).otherwise(pl.col("Section")).alias("Section"))
    code, _ = _build(tmp_path, write(df, tmp_path / "p.parquet"))
    assert code == 0, capsys.readouterr().err
    cache = open_cache(next((tmp_path / "cache").glob("*/")))
    vocab = cache.manifest["section_vocab"]
    s = cache.codes.index(mover)
    seen = [vocab[i] for i in cache.static[:, s, 0]]
    before = [d < switch for d in cache.dates]
    assert {v for v, b in zip(seen, before) if b} == {"Prime"}
    assert {v for v, b in zip(seen, before) if not b} == {"Standard"}
    # the batch gives the model that day's section
    grid = GridTensors(cache, window=10)
    first_after = before.index(False)
    for t, want in ((first_after - 1, "Prime"), (first_after, "Standard")):
        b = grid.gather(np.array([t]))
        row = int(np.flatnonzero(b.stock.numpy() == s)[0])
        assert vocab[int(b.static[row, 0])] == want


def test_eight_days_stop_at_build_cache_with_what_is_needed(tmp_path, capsys):
    data = write(make_panel(days=8), tmp_path / "p.parquet")
    code, _ = _build(tmp_path, data)
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and not has_traceback(err)
    # window 10 + longest horizon 5 + embargo 5 + validation 120 + test 120 + embargo 5 + training 20
    assert "only 8 trading days" in err and "at least 285" in err and "window 10" in err
    assert "validation 120" in err and "test 120" in err and "training 20" in err and str(data) in err
    assert not (tmp_path / "cache").exists()
