"""Data contract and Arrow cache: clear errors, round trip, fingerprint hits/misses, atomic builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from atft_core.config import CacheConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.normalise import past_only_zscore
from atft_core.data.cache.store import MANIFEST_FILE, open_cache
from atft_core.errors import DatasetError
from tests.panels import make_panel, write


def _cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.iterdir()) if cache_dir.exists() else []


@pytest.mark.parametrize("mutate, column, words", [
    (lambda df: df.drop("Date"), "Date", "missing"),
    (lambda df: df.drop("Code"), "Code", "missing"),
    (lambda df: pl.concat([df, df.head(3)]), "Date, Code", "duplicate"),
    (lambda df: df.with_columns(pl.lit("x").alias("feat_1")), "feat_1", "non-numeric"),
    (lambda df: df.drop("target_1d", "target_5d"), "target_*", "no target"),
    (lambda df: df.with_columns(pl.lit(None, pl.Float32).alias("target_5d")), "target_5d", "entirely missing"),
    (lambda df: df.head(0), "", "zero rows"),
    (lambda df: df.filter(pl.col("Code") == pl.col("Code").first()), "Code", "only 1 stock"),
    (lambda df: df.with_columns(pl.col("Date").cast(pl.String).str.replace(r"^2022-01-04$", "01/04/2022")),
     "Date", "not ISO"),
])
def test_each_contract_violation_has_its_own_clear_error(tmp_path, mutate, column, words):
    path = write(mutate(make_panel()), tmp_path / "bad.parquet")
    cache_dir = tmp_path / "cache"
    with pytest.raises(DatasetError) as err:
        build_cache(path, cache_dir, progress=False)
    msg = str(err.value)
    assert str(path) in msg
    assert words in msg
    if column:
        assert column in msg
    assert not cache_dir.exists()  # nothing created for bad input


def test_all_problems_reported_at_once(tmp_path):
    df = make_panel().drop("Code").with_columns(pl.lit("x").alias("feat_0")).drop("target_1d", "target_5d")
    with pytest.raises(DatasetError) as err:
        build_cache(write(df, tmp_path / "bad.parquet"), tmp_path / "cache")
    assert len(err.value.problems) == 3


def test_missing_file_and_not_parquet(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_cache(tmp_path / "nope.parquet", tmp_path / "cache")
    junk = tmp_path / "junk.parquet"
    junk.write_text("Date,Code\n2024-01-04,13010\n")
    with pytest.raises(DatasetError, match="not a readable parquet"):
        build_cache(junk, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_round_trip_returns_source_values(tmp_path):
    df = make_panel(days=40, stocks=12, features=3, drop=0.1)
    path = write(df.sample(fraction=1.0, shuffle=True, seed=3), tmp_path / "p.parquet")  # unsorted is fine
    build = build_cache(path, tmp_path / "cache", progress=False)
    cache = open_cache(build.path)
    assert cache.shape == (40, 12, 3)
    assert cache.dates == sorted(cache.dates)
    # every source row lands on its (day, stock) cell; absent rows are invalid
    day = {d: i for i, d in enumerate(cache.dates)}
    stock = {c: i for i, c in enumerate(cache.codes)}
    di = np.array([day[str(d)] for d in df["Date"].to_list()])
    si = np.array([stock[c] for c in df["Code"].to_list()])
    assert cache.valid.sum() == len(df) and cache.valid[di, si].all()
    np.testing.assert_allclose(cache.y[di, si, 0], df["target_1d"].to_numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(cache.y[di, si, 1], df["target_5d"].to_numpy(), rtol=0, atol=0)
    # features: per-day robust z-score of the source (same-day data only)
    one_day = df.filter(pl.col("Date") == pl.col("Date").min())
    v = one_day["feat_0"].to_numpy().astype(np.float64)
    med = np.median(v)
    mad = np.median(np.abs(v - med)) * 1.4826
    expect = np.clip((v - med) / mad, -5, 5)
    got = cache.x[0, [stock[c] for c in one_day["Code"].to_list()], 0]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    assert cache.x[~cache.valid].sum() == 0
    # categories per (day, stock): known on every row, -1 where the stock had no row
    assert cache.manifest["section_vocab"] == ["Growth", "Prime", "Standard"]
    assert cache.static.shape == (40, 12, 2)
    assert (cache.static[cache.valid] >= 0).all() and (cache.static[~cache.valid] == -1).all()


def test_open_is_zero_copy_memory_map(tmp_path):
    build = build_cache(write(make_panel(), tmp_path / "p.parquet"), tmp_path / "cache", progress=False)
    cache = open_cache(build.path)
    assert not cache.x.flags.owndata and not cache.x.flags.writeable


def test_hit_on_rerun_miss_on_changed_file_same_size(tmp_path):
    df = make_panel()
    path = write(df, tmp_path / "p.parquet")
    first = build_cache(path, tmp_path / "cache", progress=False)
    again = build_cache(path, tmp_path / "cache", progress=False)
    assert not first.hit and again.hit and again.path == first.path
    size = path.stat().st_size
    # same shape, one value changed: the file keeps (almost surely) its size, and must still miss
    changed = df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(99.0).otherwise(pl.col("feat_0"))
                              .cast(pl.Float32).alias("feat_0"))
    write(changed, path)
    third = build_cache(path, tmp_path / "cache", progress=False)
    assert not third.hit and third.path != first.path
    assert abs(path.stat().st_size - size) < 64
    # a different build parameter is a different cache too
    fourth = build_cache(path, tmp_path / "cache", CacheConfig(clip=3.0), progress=False)
    assert not fourth.hit and fourth.path != third.path


def test_directory_input(tmp_path):
    df = make_panel()
    dates = sorted(set(df["Date"].to_list()))
    write(df.filter(pl.col("Date") < dates[30]), tmp_path / "panel" / "a.parquet")
    write(df.filter(pl.col("Date") >= dates[30]), tmp_path / "panel" / "b.parquet")
    build = build_cache(tmp_path / "panel", tmp_path / "cache", progress=False)
    assert build.summary["days"] == len(dates)


def test_market_level_feature_is_normalised_over_time_not_zeroed(tmp_path):
    df = make_panel(days=80)
    rng = np.random.default_rng(1)
    level = dict(zip(sorted(set(df["Date"].to_list())), rng.normal(size=80)))
    df = df.with_columns(pl.col("Date").replace_strict(level, return_dtype=pl.Float64).alias("topix_ret"))
    build = build_cache(write(df, tmp_path / "p.parquet"), tmp_path / "cache", progress=False)
    cache = open_cache(build.path)
    assert cache.manifest["market_features"] == ["topix_ret"]
    j = cache.feature_names.index("topix_ret")
    col = cache.x[:, :, j]
    assert np.abs(col).sum() > 0  # not all zeros, unlike a cross-sectional z-score would give
    # past-only statistics: day t's value does not depend on later days
    series = np.array([level[d] for d in sorted(level)])
    z_full = past_only_zscore(series)
    z_cut = past_only_zscore(series[:50])
    np.testing.assert_allclose(z_full[:50], z_cut)


def test_warnings_name_useless_features(tmp_path):
    df = make_panel().with_columns(pl.lit(3.0).alias("const"), pl.lit(None, pl.Float32).alias("empty"),
                                   pl.when(pl.col("feat_0") > 100).then(1.0).otherwise(0.0).alias("zeros_after"))
    df = df.with_columns(pl.when(pl.int_range(pl.len()) < 5).then(float("inf")).otherwise(pl.col("feat_1"))
                         .alias("feat_1"))
    build = build_cache(write(df, tmp_path / "p.parquet"), tmp_path / "cache", progress=False)
    text = "\n".join(build.warnings)
    assert "'const'" in text and "constant" in text
    assert "'empty'" in text and "all values missing" in text
    assert "'feat_1': 5 infinite" in text
    cache = open_cache(build.path)
    assert "empty" not in cache.feature_names
    assert np.isfinite(cache.x).all()


def test_planted_lookahead_column_is_flagged(tmp_path):
    df = make_panel(days=60, stocks=40).with_columns((pl.col("target_1d") * 3 + 0.001).alias("peek"))
    build = build_cache(write(df, tmp_path / "p.parquet"), tmp_path / "cache", progress=False)
    assert "peek" in build.summary["leak_suspects"]
    assert not any(s.startswith("feat_") for s in build.summary["leak_suspects"])
    assert any("'peek'" in w and "look-ahead" in w for w in build.warnings)


_BUILD_SCRIPT = textwrap.dedent("""
    import sys
    from atft_core.data.cache.build import build_cache
    build_cache(sys.argv[1], sys.argv[2], progress=False)
""")


def test_a_hit_found_while_building_stops_the_build_and_keeps_the_cache(tmp_path, monkeypatch):
    """The content hash runs beside the build; when it names a cache that exists, the build stops."""
    import threading

    import atft_core.data.cache.build as cache_mod

    path = write(make_panel(days=120, stocks=60, features=12), tmp_path / "p.parquet")
    cache_dir = tmp_path / "cache"
    first = build_cache(path, cache_dir, progress=False)
    manifest_before = (first.path / MANIFEST_FILE).read_text()
    building = threading.Event()
    real_hash, real_build = cache_mod.fingerprint_files, cache_mod.build_grid
    batches = []

    def slow_hash(*args):  # the hash ends only once the build has begun: the hit can only be seen inside it
        assert building.wait(30)
        return real_hash(*args)

    def build_grid(*args, stop, **kw):
        building.set()
        deadline = time.time() + 30
        while not stop() and time.time() < deadline:
            time.sleep(0.01)

        def counted_stop():
            batches.append(1)
            return stop()

        return real_build(*args, stop=counted_stop, **kw)

    monkeypatch.setattr(cache_mod, "fingerprint_files", slow_hash)
    monkeypatch.setattr(cache_mod, "build_grid", build_grid)
    again = build_cache(path, cache_dir, progress=False)
    assert again.hit and again.path == first.path and again.fingerprint == first.fingerprint
    assert batches == [1]  # stopped after its first record batch
    assert _cache_entries(cache_dir) == [first.path]  # the stopped build's temp folder is gone
    assert (first.path / MANIFEST_FILE).read_text() == manifest_before


def test_fingerprint_reads_a_settled_file_once_and_a_changed_or_fresh_one_again(tmp_path, monkeypatch):
    """The flow hashes the panel for the task's cache key and again in the build: the second is free."""
    from atft_core.data import source

    path = write(make_panel(days=30, stocks=10, features=3), tmp_path / "p.parquet")
    reads = []
    real = source._hash_files
    monkeypatch.setattr(source, "_hash_files", lambda *a: reads.append(1) or real(*a))
    monkeypatch.setattr(source, "_FINGERPRINTS", {})
    fresh = source.fingerprint_files((path,))
    assert source.fingerprint_files((path,)) == fresh and len(reads) == 2  # just written: not remembered
    old = time.time() - 60
    os.utime(path, (old, old))
    assert source.fingerprint_files((path,)) == fresh and len(reads) == 3
    assert source.fingerprint_files((path,)) == fresh and len(reads) == 3  # settled: remembered
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # same size, one byte changed, and an old (but different) time stamp: rehashed
    path.write_bytes(bytes(data))
    os.utime(path, (old - 5, old - 5))
    assert source.fingerprint_files((path,)) != fresh and len(reads) == 4


def test_fingerprint_in_mapped_windows_is_the_hash_of_name_and_bytes(tmp_path, monkeypatch):
    """Hashed a window at a time (mapped, or read where mapping fails): the same digest as one pass over
    the bytes, whatever the window, so caches keyed by older builds' fingerprints still hit."""
    import mmap

    import xxhash

    from atft_core.data import source

    path = write(make_panel(days=60, stocks=40, features=6), tmp_path / "p.parquet")
    expected = xxhash.xxh3_128(b"p.parquet\0" + path.read_bytes()).hexdigest()
    assert path.stat().st_size > 3 * mmap.ALLOCATIONGRANULARITY
    monkeypatch.setattr(source, "_HASH_BLOCK", mmap.ALLOCATIONGRANULARITY)  # many windows, a short last one
    assert source._hash_files((path,), None) == expected

    def no_mmap(*args, **kwargs):
        raise OSError("mmap not supported")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    assert source._hash_files((path,), None) == expected


def test_build_killed_midway_leaves_no_cache_and_next_build_is_clean(tmp_path):
    path = write(make_panel(days=300, stocks=200, features=40, drop=0.0), tmp_path / "p.parquet")
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for kill_when in ("tmp-dir-appears", "early"):
        proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(path), str(cache_dir)], env=env)
        deadline = time.time() + 60
        if kill_when == "early":
            time.sleep(1.0)
        else:
            while time.time() < deadline and not any(p.name.startswith(".tmp-") for p in _cache_entries(cache_dir)):
                time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = [p for p in _cache_entries(cache_dir) if not p.name.startswith(".")]
        for p in finished:  # anything visible under its final name must be complete
            assert (p / MANIFEST_FILE).exists()
            open_cache(p)
        if finished:
            import shutil
            shutil.rmtree(finished[0])
    build = build_cache(path, cache_dir, progress=False)
    assert not build.hit
    assert [p.name for p in _cache_entries(cache_dir)] == [build.path.name]  # stale temp folders swept
    assert json.loads((build.path / MANIFEST_FILE).read_text())["shape"]["stocks"] == 200


def test_two_concurrent_builds_leave_one_valid_cache(tmp_path):
    path = write(make_panel(days=200, stocks=100, features=20), tmp_path / "p.parquet")
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, str(path), str(cache_dir)], env=env)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    entries = _cache_entries(cache_dir)
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    assert open_cache(entries[0]).shape[1] == 100


def test_grid_file_holds_more_than_2_31_values_per_column(tmp_path):
    """4,000 x 2,500 x 400 features (4e9 floats, a 16 GB sparse file): Arrow's IPC writer refused the old
    FixedSizeList layout past 2^31 - 1 values; rows as fixed-size binary elements write and map zero-copy."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from atft_core.data.cache.grid_file import column_values, create_grid_file

    f32 = np.dtype(np.float32)
    grid = create_grid_file(tmp_path / "g.arrow", 2500, 4000, {"x": (f32, 400), "valid": (np.dtype(np.uint8), 0)})
    last = np.arange(4000 * 400, dtype=np.float32).reshape(1, 4000, 400)
    grid.write_days("x", 2499, last)
    batch = ipc.open_file(pa.memory_map(str(tmp_path / "g.arrow"), "r")).get_batch(0)
    x = column_values(batch, "x", f32).reshape(2500, 4000, 400)
    np.testing.assert_array_equal(x[-1], last[0])
    assert x[0, 0, 0] == 0 and x.base is not None  # a view on the map, not a copy
