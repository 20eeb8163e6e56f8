"""The price market (the default demo): its oracle in a realistic band, no look-ahead in its features,
listings, delistings and halts, the data contract's columns, seed determinism, and the CLI's flag.

Signal checks use scipy's spearmanr per day, independently of atft_core.ic.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.features import CORE, MARKET_FEATURES, compute_features, feature_names
from atft_core.data.demo.generate import generate_demo, load_oracle
from atft_core.data.demo.market import SECTOR33
from atft_core.data.demo.prices import BURN_IN, simulate

SMALL = DemoConfig(stocks=150, days=300, seed=0, chunk_days=120)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("prices") / "panel.parquet"
    return path, generate_demo(path, SMALL)


@pytest.fixture(scope="module")
def grid(demo: tuple[Path, dict]) -> dict[str, np.ndarray]:
    """Columns as dense [D, S] arrays (NaN = no row or missing), plus `present`."""
    table = pq.read_table(demo[0])
    _, di = np.unique(table["Date"].to_numpy(), return_inverse=True)
    _, si = np.unique(table["Code"].to_numpy(zero_copy_only=False), return_inverse=True)
    shape = (di.max() + 1, si.max() + 1)
    out: dict[str, np.ndarray] = {"present": np.zeros(shape, dtype=bool)}
    out["present"][di, si] = True
    for name in table.column_names:
        if table.schema.field(name).type == pa.float32():
            g = np.full(shape, np.nan)
            g[di, si] = table[name].to_numpy(zero_copy_only=False)
            out[name] = g
    return out


def test_default_demo_is_the_price_market():
    assert DemoConfig().market == "prices" and DemoConfig().features == 40
    assert feature_names(40) == list(CORE)


def test_columns_follow_the_data_contract(demo: tuple[Path, dict]):
    path, oracle = demo
    table = pq.read_table(path)
    names = feature_names(SMALL.features)
    assert table.column_names == ["Date", "Code", "Section", "sector33_code", *names,
                                  *[f"target_{h}d" for h in SMALL.horizons]]
    assert table.schema.field("Date").type == pa.date32()
    assert set(table["sector33_code"].to_pylist()) <= set(SECTOR33)
    assert oracle["features"] == names and oracle["market_features"] == list(MARKET_FEATURES)
    assert load_oracle(path)["oracle"] == oracle["oracle"]
    mu = pq.read_table(f"{path}.oracle.parquet")
    assert mu.num_rows == table.num_rows and mu.column_names == ["Date", "Code", "mu"]


def test_oracle_rankic_is_in_the_realistic_band(demo: tuple[Path, dict], grid: dict[str, np.ndarray]):
    per_h = demo[1]["oracle"]
    assert 0.06 <= per_h["target_1d"]["rankic"] <= 0.12, per_h
    # Recomputed with scipy from the written mu and targets.
    mu = pq.read_table(f"{demo[0]}.oracle.parquet")
    _, di = np.unique(mu["Date"].to_numpy(), return_inverse=True)
    _, si = np.unique(mu["Code"].to_numpy(zero_copy_only=False), return_inverse=True)
    m = np.full(grid["present"].shape, np.nan)
    m[di, si] = mu["mu"].to_numpy()
    y = grid["target_1d"]
    rics = [spearmanr(m[d][ok], y[d][ok]).statistic for d in range(len(y))
            if (ok := np.isfinite(m[d]) & np.isfinite(y[d])).sum() >= 20]
    assert np.mean(rics) == pytest.approx(per_h["target_1d"]["rankic"], abs=1e-6)


def test_no_single_feature_looks_like_a_leak(grid: dict[str, np.ndarray]):
    y = grid["target_1d"]
    for name in ("returns_1d", "returns_5d", "returns_20d", "earn_surprise", "high_52w"):
        x = grid[name]
        rics = [spearmanr(x[d][ok], y[d][ok]).statistic for d in range(0, len(y), 5)
                if (ok := np.isfinite(x[d]) & np.isfinite(y[d])).sum() >= 20]
        assert abs(np.mean(rics)) < 0.08, name


def test_targets_are_forward_returns(grid: dict[str, np.ndarray]):
    r1, t1, t5 = grid["returns_1d"], grid["target_1d"], grid["target_5d"]
    both = np.isfinite(t1[:-1]) & np.isfinite(r1[1:])
    np.testing.assert_array_equal(t1[:-1][both], r1[1:][both])
    p = grid["present"]
    assert (np.isfinite(t1[:-1]) == (p[:-1] & p[1:])).all()
    assert np.isnan(t1[-1]).all() and np.isnan(t5[-5:]).all()


def test_listings_delistings_and_halts(grid: dict[str, np.ndarray], demo: tuple[Path, dict]):
    p = grid["present"]
    first = np.where(p.any(axis=0), p.argmax(axis=0), len(p))
    last = len(p) - 1 - p[::-1].argmax(axis=0)
    span = np.arange(len(p))[:, None]
    in_life = (span >= first) & (span <= last)
    assert (last < len(p) - 1).sum() >= 3, "some stocks delist"
    halted = (in_life & ~p).sum()
    assert 0 < halted < 0.01 * in_life.sum() and halted == demo[1]["stocks"]["halted_rows"]
    r1, r20 = grid["returns_1d"], grid["returns_20d"]
    late = np.flatnonzero((first > 0) & np.isnan(r20[np.minimum(first, len(p) - 1), np.arange(p.shape[1])]))
    assert len(late) >= 3, "some stocks list during the sample"
    assert np.isnan(r1[first[late], late]).all(), "a new listing has no history on its first day"


def test_market_features_are_the_same_for_every_stock(grid: dict[str, np.ndarray]):
    for name in MARKET_FEATURES:
        g = grid[name]
        assert np.nanmax(np.nanmax(g, axis=1) - np.nanmin(g, axis=1)) == 0, name
        assert np.nanstd(np.nanmean(g, axis=1)) > 0, name


def test_features_use_no_data_after_their_day():
    cfg = DemoConfig(stocks=40, days=60, seed=2)
    h = simulate(cfg)
    names = feature_names(60)
    k0, k1, t = BURN_IN, BURN_IN + 60, BURN_IN + 30
    before = compute_features(h, k0, k1, names)
    for arr in (h.log_close, h.log_open, h.log_high, h.log_low, h.log_volume, h.mu):
        arr[t + 1:] += np.random.default_rng(0).standard_normal(arr[t + 1:].shape)
    h.published[t + 1:] = ~h.published[t + 1:]
    h.surprise[t + 1:] = 9.0
    h.days_since_event[t + 1:] = 9.0
    after = compute_features(h, k0, k1, names)
    np.testing.assert_array_equal(before[:, :t - k0 + 1], after[:, :t - k0 + 1])
    assert not np.array_equal(before[:, t - k0 + 1:], after[:, t - k0 + 1:], equal_nan=True)


def test_deterministic_per_seed(demo: tuple[Path, dict], tmp_path: Path):
    same, other = tmp_path / "same.parquet", tmp_path / "other.parquet"
    generate_demo(same, SMALL)
    generate_demo(other, dataclasses.replace(SMALL, seed=4))
    assert same.read_bytes() == demo[0].read_bytes()
    assert not pq.read_table(other)["returns_1d"].equals(pq.read_table(same)["returns_1d"])


def test_bad_configs_fail_clearly(tmp_path: Path):
    with pytest.raises(ValueError, match="at least 8"):
        generate_demo(tmp_path / "x.parquet", DemoConfig(features=5))
    with pytest.raises(ValueError, match="market='nasdaq'"):
        generate_demo(tmp_path / "x.parquet", DemoConfig(market="nasdaq"))
    assert not (tmp_path / "x.parquet").exists()


def _atft(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = "from flows.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                            "ATFT_HOME": str(cwd / "home")})


def test_cli_market_flag(tmp_path: Path):
    out = tmp_path / "p.parquet"
    proc = _atft(["demo-data", "--out", str(out), "--stocks", "30", "--days", "40", "--market", "planted",
                  "--features", "16"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sig_interact_x" in pq.read_schema(out).names
    proc = _atft(["demo-data", "--out", str(out), "--stocks", "30", "--days", "40"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_schema(out).names[4:8] == list(CORE[:4])
    proc = _atft(["demo-data", "--out", str(out), "--market", "nasdaq"], tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'nasdaq'" in proc.stderr
    assert "Traceback" not in proc.stderr
