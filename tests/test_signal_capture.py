"""The capture diagnostic rebuilds the demo's planted parts exactly: their weighted sum is mu."""

from __future__ import annotations

import numpy as np
import polars as pl

from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.generate import generate_demo
from atft_core.data.demo.market import ALPHA, SIGNAL_SHARES
from bench.signal_capture import PARTS, planted_parts


def test_planted_parts_sum_to_the_oracle_mu(tmp_path):
    data = tmp_path / "demo.parquet"
    generate_demo(data, DemoConfig(seed=3, stocks=40, days=60, features=20, market="planted"))
    rows = pl.read_parquet(data, columns=["Date", "Code"])
    dates = sorted({str(d) for d in rows["Date"].cast(pl.Utf8)})
    codes = sorted(set(rows["Code"]))
    parts = planted_parts(data, dates, codes)
    oracle = pl.read_parquet(str(data) + ".oracle.parquet")
    mu = np.full((len(dates), len(codes)), np.nan)
    day, stock = {d: i for i, d in enumerate(dates)}, {c: i for i, c in enumerate(codes)}
    mu[[day[str(d)] for d in oracle["Date"].cast(pl.Utf8)], [stock[c] for c in oracle["Code"]]] = \
        oracle[[c for c in oracle.columns if c not in ("Date", "Code")][0]].to_numpy()
    keys = dict(zip(PARTS, ("interaction", "extreme", "temporal", "sector", "linear")))
    rebuilt = ALPHA * sum(np.sqrt(SIGNAL_SHARES[keys[p]]) * parts[p] for p in PARTS)
    late = slice(10, None)  # the first days' 10-day sums reach into the unpublished burn-in
    ok = np.isfinite(mu[late])
    assert ok.sum() > 1000
    np.testing.assert_allclose(rebuilt[late][ok], mu[late][ok], rtol=1e-4, atol=1e-6)
