"""The planted demo market (`market="planted"`): real calendar, sane keys, honest targets,
seed-reproducible, chunk-invariant, and a planted signal that is really there (and mostly out of
reach of a last-day linear model).

Signal checks use scipy's spearmanr per day, independently of atft_core.ic.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.generate import generate_demo, load_oracle
from atft_core.data.demo.market import MARKET_FEATURES, SECTIONS, SECTOR33, SIGNAL_FEATURES

SMALL = DemoConfig(stocks=120, days=300, features=40, seed=0, chunk_days=100, market="planted")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def demo(demo_dir: Path) -> tuple[Path, dict]:
    path = demo_dir / "panel.parquet"
    oracle = generate_demo(path, SMALL)
    return path, oracle


@pytest.fixture(scope="module")
def table(demo: tuple[Path, dict]) -> pa.Table:
    return pq.read_table(demo[0])


class Grid:
    """The long table as dense [D, S] arrays (NaN = no row or missing value)."""

    def __init__(self, table: pa.Table):
        self.table = table
        dates = table["Date"].to_numpy()
        codes = table["Code"].to_numpy(zero_copy_only=False)
        self.dates, self.di = np.unique(dates, return_inverse=True)
        self.codes, self.si = np.unique(codes, return_inverse=True)
        self.present = np.zeros((len(self.dates), len(self.codes)), dtype=bool)
        self.present[self.di, self.si] = True

    def __getitem__(self, col: str) -> np.ndarray:
        g = np.full(self.present.shape, np.nan)
        g[self.di, self.si] = self.table[col].to_numpy(zero_copy_only=False)
        return g


@pytest.fixture(scope="module")
def grid(table: pa.Table) -> Grid:
    return Grid(table)


@pytest.mark.filterwarnings("ignore:Series.values returning an ndarray")
def test_dates_are_tokyo_sessions(table: pa.Table):
    import exchange_calendars as xc

    dates = table["Date"].to_numpy().astype("datetime64[D]")
    assert table.schema.field("Date").type == pa.date32()
    assert np.all(np.diff(dates.astype(np.int64)) >= 0), "rows must be sorted by date"
    unique = np.unique(dates)
    sessions = xc.get_calendar("XTKS").sessions.to_numpy().astype("datetime64[D]")
    expected = sessions[sessions >= np.datetime64(SMALL.start)][: SMALL.days]
    np.testing.assert_array_equal(unique, expected)
    weekday = (unique.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    assert weekday.max() <= 4, "no weekend rows"
    for holiday in ("2020-01-13", "2020-05-05", "2020-10-01", "2021-01-01", "2021-01-11"):
        assert np.datetime64(holiday) not in set(unique), f"{holiday} is not a TSE session"


def test_keys_static_columns_and_types(table: pa.Table):
    keys = np.char.add(table["Date"].to_numpy().astype(str).astype("U10"),
                       table["Code"].to_numpy(zero_copy_only=False).astype("U5"))
    assert len(np.unique(keys)) == table.num_rows, "(Date, Code) must be unique"
    assert np.all(keys[1:] > keys[:-1]), "rows sorted by Date then Code"
    codes = set(table["Code"].to_pylist())
    assert len(codes) == SMALL.stocks
    assert all(len(c) == 5 and c.isdigit() and c.endswith("0") for c in codes)
    assert set(table["Section"].to_pylist()) == set(SECTIONS)
    sectors = set(table["sector33_code"].to_pylist())
    assert sectors <= set(SECTOR33) and len(sectors) >= 15
    assert len(SECTOR33) == 33
    oracle_features = load_oracle_features(table)
    assert oracle_features[0] == "returns_1d"
    assert len(oracle_features) == SMALL.features
    for name in oracle_features + [f"target_{h}d" for h in SMALL.horizons]:
        assert table.schema.field(name).type == pa.float32(), name


def load_oracle_features(table: pa.Table) -> list[str]:
    skip = {"Date", "Code", "Section", "sector33_code"}
    return [n for n in table.column_names if n not in skip and not n.startswith("target_")]


def test_listings_delistings_and_halts(grid: Grid):
    p = grid.present
    first = p.argmax(axis=0)
    last = len(p) - 1 - p[::-1].argmax(axis=0)
    assert (last < len(p) - 1).sum() >= 3, "some stocks delist during the sample"
    span = np.arange(len(p))[:, None]
    in_life = (span >= first) & (span <= last)
    assert not (p & ~in_life).any()
    halts = (in_life & ~p).sum()
    assert 0 < halts < 0.01 * in_life.sum(), f"a few halted rows, got {halts}"
    # A new listing has no price history: windowed features start empty (a first row after
    # day 0 with a full 20-day history is a stock halted on day 0, not a listing).
    r1, r20 = grid["returns_1d"], grid["returns_20d"]
    late = np.flatnonzero((first > 0) & np.isnan(r20[first, np.arange(len(first))]))
    assert len(late) >= 3, "some stocks list during the sample"
    assert np.isnan(r1[first[late], late]).all()
    assert np.isnan(r20[first[late] + 10, late]).all()
    assert np.isfinite(r1[first[late] + 1, late]).mean() > 0.9


def test_targets_are_forward_returns(grid: Grid):
    r1 = grid["returns_1d"]
    t1, t5, t20 = grid["target_1d"], grid["target_5d"], grid["target_20d"]
    # returns_1d is the exact close-to-close return, so target_1d[t] is returns_1d[t+1].
    both = np.isfinite(t1[:-1]) & np.isfinite(r1[1:])
    assert both.sum() > 0.9 * np.isfinite(t1).sum()
    np.testing.assert_array_equal(t1[:-1][both], r1[1:][both])
    # Longer horizons compound the next h daily returns.
    growth = np.stack([1 + r1[k:len(r1) - 5 + k] for k in range(1, 6)]).prod(axis=0) - 1
    ok = np.isfinite(growth) & np.isfinite(t5[:-5])
    assert ok.sum() > 1000
    np.testing.assert_allclose(t5[:-5][ok], growth[ok], rtol=2e-4, atol=2e-6)
    # Never a backward-looking fallback: nothing at the end of the data or after a delisting.
    assert np.isnan(t1[-1]).all() and np.isnan(t20[-20:]).all()
    p = grid.present
    last = len(p) - 1 - p[::-1].argmax(axis=0)
    for s in np.flatnonzero(last < len(p) - 1):
        assert np.isnan(t1[last[s], s]) and np.isnan(t20[max(last[s] - 19, 0):last[s] + 1, s]).all()
    # Where the row h days ahead exists, the target exists (and only there).
    assert (np.isfinite(t1[:-1]) == (p[:-1] & p[1:])).all()


def test_market_features_are_the_same_for_every_stock(grid: Grid, demo: tuple[Path, dict]):
    oracle = demo[1]
    assert oracle["market_features"] == list(MARKET_FEATURES)
    for name in MARKET_FEATURES:
        g = grid[name]
        spread = np.nanmax(g, axis=1) - np.nanmin(g, axis=1)
        assert np.nanmax(spread) == 0, name
        assert np.nanstd(np.nanmean(g, axis=1)) > 0, f"{name} varies over time"


def test_oracle_file(demo: tuple[Path, dict]):
    path, oracle = demo
    assert load_oracle(path) == json.loads(json.dumps(oracle))
    assert load_oracle(path.with_name("other.parquet")) is None
    assert oracle["signal_features"] == list(SIGNAL_FEATURES)
    assert set(oracle["signal_features"]) <= set(oracle["features"])
    assert oracle["config"]["stocks"] == SMALL.stocks
    per_h = oracle["oracle"]
    assert set(per_h) == {f"target_{h}d" for h in SMALL.horizons}
    assert 0.10 <= per_h["target_1d"]["rankic"] <= 0.22
    assert all(v["rankic"] > 0.03 and v["ic"] > 0.03 for v in per_h.values())
    assert per_h["target_20d"]["rankic"] < per_h["target_1d"]["rankic"]


def _cs_z(x: np.ndarray) -> np.ndarray:
    """Per-day cross-sectional z-score [D, S, F]; missing -> 0."""
    mean = np.nanmean(x, axis=1, keepdims=True)
    std = np.nanstd(x, axis=1, keepdims=True)
    return np.nan_to_num(np.clip((x - mean) / np.where(std > 0, std, 1.0), -5, 5))


def _ridge_rankic(grid: Grid, names: list[str]) -> float:
    """Fit a ridge on the first half (last day's features), mean daily spearman on the second."""
    x = _cs_z(np.stack([grid[n] for n in names], axis=-1))
    y = grid["target_1d"]
    half = len(y) // 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():  # the last day has no target
        warnings.simplefilter("ignore", RuntimeWarning)
        y_fit = (y - np.nanmean(y, 1, keepdims=True)) / np.nanstd(y, 1, keepdims=True)
    a, b = x[:half].reshape(-1, len(names)), y_fit[:half].reshape(-1)
    ok = np.isfinite(b)
    w = np.linalg.solve(a[ok].T @ a[ok] + 10.0 * np.eye(len(names)), a[ok].T @ b[ok])
    pred = x[half:] @ w
    rics = []
    for d in range(len(pred)):
        valid = np.isfinite(y[half + d]) & grid.present[half + d]
        if valid.sum() >= 20:
            rics.append(spearmanr(pred[d][valid], y[half + d][valid]).statistic)
    return float(np.mean(rics))


@pytest.fixture(scope="module")
def ridge(grid: Grid, demo: tuple[Path, dict]) -> dict[str, float]:
    names = demo[1]["features"]
    noise = [n for n in names if n.startswith(("noise_iid", "fund_slow", "sector_noise"))]
    return {"signal": _ridge_rankic(grid, list(SIGNAL_FEATURES)),
            "noise": _ridge_rankic(grid, noise),
            "all": _ridge_rankic(grid, names)}


def test_planted_signal_is_real(ridge: dict[str, float]):
    assert ridge["signal"] > 0.03
    assert abs(ridge["noise"]) < 0.02


def test_last_day_linear_model_gets_well_below_the_oracle(ridge: dict[str, float], demo: tuple[Path, dict]):
    oracle = demo[1]["oracle"]["target_1d"]["rankic"]
    assert 0 < ridge["all"] <= 0.65 * oracle, (ridge, oracle)


def test_reproducible_by_seed(demo: tuple[Path, dict], demo_dir: Path):
    same = demo_dir / "same.parquet"
    other = demo_dir / "other.parquet"
    generate_demo(same, SMALL)
    generate_demo(other, dataclasses.replace(SMALL, seed=1))
    assert same.read_bytes() == demo[0].read_bytes()
    assert Path(str(same) + ".oracle.json").read_text() == Path(str(demo[0]) + ".oracle.json").read_text()
    a, b = pq.read_table(demo[0]), pq.read_table(other)
    assert not a["returns_1d"].equals(b["returns_1d"]) and not a["Code"].equals(b["Code"])


def test_chunking_is_seamless(demo: tuple[Path, dict], demo_dir: Path):
    # Chunks shorter than the longest horizon and the feature windows, and one single chunk.
    for chunk_days in (7, SMALL.days):
        path = demo_dir / f"chunk{chunk_days}.parquet"
        oracle = generate_demo(path, dataclasses.replace(SMALL, chunk_days=chunk_days))
        assert pq.read_table(path).equals(pq.read_table(demo[0])), chunk_days
        assert pq.ParquetFile(path).num_row_groups == -(-SMALL.days // chunk_days)
        assert oracle["oracle"] == demo[1]["oracle"]


def test_bad_configs_fail_clearly(tmp_path: Path):
    with pytest.raises(ValueError, match="at least 16"):
        generate_demo(tmp_path / "x.parquet", DemoConfig(features=10, market="planted"))
    with pytest.raises(ValueError, match="XTKS calendar's last session"):
        generate_demo(tmp_path / "x.parquet", DemoConfig(start="2026-01-05", days=5000))
    assert not (tmp_path / "x.parquet").exists()
