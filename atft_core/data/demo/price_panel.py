"""Writes the price market (`prices.py`) as a panel: its features (`features.py`), forward-return
targets and the oracle, in the same columns as the planted panel.

Targets: target_h[t] = close[t+h] / close[t] - 1, null unless both rows are published (never a
backward-looking fallback; null past the data end). The oracle predictor is mu_t, the expected
next-day return known at the close of day t, scored against every horizon (summing future mu would
use information from after t). The panel is written in chunks of `chunk_days` days; the latent
history (a few [days, stocks] arrays) is held whole.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from atft_core.data.demo import effects
from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.features import MARKET_FEATURES, compute_features, feature_names
from atft_core.data.demo.generate import _schema, _to_table, oracle_by_horizon, oracle_min_stocks
from atft_core.data.demo.prices import BURN_IN, PriceHistory, simulate


def write_price_panel(path: Path, cfg: DemoConfig, dates: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Simulate, write the panel to `path`; returns (oracle dict, codes [S], mu [days, S] NaN where unpublished)."""
    h = simulate(cfg)
    names = feature_names(cfg.features)
    horizons = tuple(sorted(cfg.horizons))
    published = h.published[BURN_IN:]
    mu = np.where(published, h.mu[BURN_IN:], np.nan)
    targets = forward_returns(h, horizons)
    schema = _schema(names, horizons)
    n_rows = 0
    with pq.ParquetWriter(path, schema, compression="snappy",
                          use_dictionary=["Code", "Section", "sector33_code"]) as writer:
        for a in range(0, cfg.days, cfg.chunk_days):
            b = min(a + cfg.chunk_days, cfg.days)
            chunk = {"obs": published[a:b], "features": compute_features(h, BURN_IN + a, BURN_IN + b, names),
                     "targets": targets[:, a:b]}
            table = _to_table(chunk, dates[a:b], h.static, names, horizons, schema)
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
            n_rows += table.num_rows
            del chunk, table
    return _oracle(cfg, h, names, dates, mu, targets, horizons, n_rows), h.static.codes, mu


def forward_returns(h: PriceHistory, horizons: tuple[int, ...]) -> np.ndarray:
    """[H, days, S] float32 target_h of the sample days; NaN unless day t and day t+h are published."""
    close = np.exp(h.log_close[BURN_IN:])
    pub = h.published[BURN_IN:]
    d, s = close.shape
    out = np.full((len(horizons), d, s), np.nan, dtype=np.float32)
    for k, hz in enumerate(horizons):
        if hz < d:
            fwd = close[hz:] / close[:-hz] - 1.0
            out[k, :d - hz] = np.where(pub[:-hz] & pub[hz:], fwd, np.nan)
    return out


def _oracle(cfg: DemoConfig, h: PriceHistory, names: list[str], dates: np.ndarray, mu: np.ndarray,
            targets: np.ndarray, horizons: tuple[int, ...], n_rows: int) -> dict[str, Any]:
    min_stocks = oracle_min_stocks(cfg)
    cfg_dict = dataclasses.asdict(cfg)
    cfg_dict["horizons"] = list(cfg.horizons)
    st = h.static
    pub = h.published[BURN_IN:]
    in_life = _in_life(pub)
    return {
        "generator": "atft_core.data.demo (prices)",
        "config": cfg_dict,
        "first_date": str(dates[0]), "last_date": str(dates[-1]), "rows": n_rows,
        "features": names,
        "signal_features": [],  # the signal is in the prices, not in named columns
        "market_features": [n for n in names if n in MARKET_FEATURES],
        "signal": {
            "mu": "alpha * z(sum_k sqrt(share_k) * strength_k(t) * g_k); expected next-day return known at day t",
            "alpha": effects.ALPHA,
            "shares": effects.SHARES,
            "effects": "atft_core/data/demo/effects.py (each effect, its horizon, its real-market reference)",
        },
        "oracle_predictor": "mu_t (one-day conditional expectation) against every horizon's target",
        "min_stocks": min_stocks,
        "oracle": oracle_by_horizon(mu, targets, horizons, min_stocks),
        "stocks": {
            "total": cfg.stocks,
            "late_listings": int((st.list_day > 0).sum()),
            "early_delistings": int((st.delist_day < cfg.days).sum()),
            "halted_rows": int((in_life & ~pub).sum()),
        },
    }


def _in_life(pub: np.ndarray) -> np.ndarray:
    """[D, S] between each stock's first and last published row."""
    span = np.arange(len(pub))[:, None]
    first = np.where(pub.any(axis=0), pub.argmax(axis=0), len(pub))
    last = len(pub) - 1 - pub[::-1].argmax(axis=0)
    return (span >= first) & (span <= last)
