"""Tomorrow's ranks: the champion's score, rank and decile of every stock on the panel's last day.

The last day of a nightly panel has no target yet (its returns are tomorrow's), which is exactly
the day a trader needs scored. The file (one per panel date) holds, per stock::

    Date, Code, sector, score_{h}d, rank_{h}d, decile_{h}d  (every horizon of the champion)
    peer_score_{h}d                                          (the LightGBM peer, the horizons it models)
    x_<feature>                                              (the last-day inputs the model weighted most)

rank 1 is the highest score; decile 1 is the top tenth, 10 the bottom. The peer's scores ride
along so the live record (`atft_core.nightly.live`) can score both on the same days. "Weighted most"
is the variable selection network's mean weight on the last day of the window over every stock of
that day: what the model actually leaned on tonight, not a global importance from training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from atft_core.data.cache.store import Cache
from atft_core.train.predictor import MemberMean

DECILES = 10


def selection_weights(predictor: MemberMean, cache: Cache, day: int) -> np.ndarray | None:
    """``[F]`` mean variable-selection weight of each feature on `day`'s last window step (members averaged).

    None when the model has no per-feature selection (a layout with extra streams per variable).
    """
    seen: list[np.ndarray] = []

    def hook(_module, _inputs, output) -> None:
        weights = output[1].detach().float()  # [S, L, F]
        seen.append(weights[:, -1].mean(dim=0).cpu().numpy() if weights.ndim == 3 else
                    weights.reshape(-1, weights.shape[-1]).mean(dim=0).cpu().numpy())

    handles = [m.model.vsn.register_forward_hook(hook) for m in predictor.members if hasattr(m.model, "vsn")]
    try:
        predictor.predict(cache, np.array([day]))
    finally:
        for h in handles:
            h.remove()
    n_features = len(cache.feature_names)
    seen = [w for w in seen if w.shape == (n_features,)]
    return np.mean(seen, axis=0) if seen else None


def rank_day(predictor: MemberMean, cache: Cache, day: int, *, peer: np.ndarray | None = None,
             top_features: int = 5) -> tuple[pl.DataFrame, list[str]]:
    """Every stock with a row on cache day `day`, scored, ranked and bucketed; and the features shown.

    peer: ``[S, H]`` the peer's scores on that day (NaN in the horizons it does not model).
    Rows are sorted by the first horizon's rank.
    """
    pred = predictor.predict(cache, np.array([day]))[0]  # [S, H]
    stocks = np.flatnonzero(cache.valid[day])
    vocab = list(cache.manifest.get("sector_vocab", []))
    sector_ids = cache.static[day, stocks, 1]
    cols: dict[str, Any] = {
        "Date": pl.Series([cache.dates[day]] * len(stocks)).str.to_date(),
        "Code": np.asarray(cache.codes)[stocks],
        "sector": [vocab[i] if 0 <= i < len(vocab) else "" for i in sector_ids.tolist()],
    }
    for k, h in enumerate(cache.horizons):
        cols[f"score_{h}d"] = pred[stocks, k].astype(np.float64)
    df = pl.DataFrame(cols).with_columns(pl.col(f"score_{h}d").fill_nan(None) for h in cache.horizons)
    for h in cache.horizons:
        rank = pl.col(f"score_{h}d").rank(method="ordinal", descending=True)
        df = df.with_columns(rank.alias(f"rank_{h}d"))
        df = df.with_columns(((pl.col(f"rank_{h}d") * DECILES - 1) // pl.col(f"score_{h}d").count() + 1)
                             .cast(pl.Int32).alias(f"decile_{h}d"))
    if peer is not None:
        for k, h in enumerate(cache.horizons):
            if np.isfinite(peer[stocks, k]).any():
                df = df.with_columns(pl.Series(f"peer_score_{h}d", peer[stocks, k].astype(np.float64)).fill_nan(None))
    shown: list[str] = []
    weights = selection_weights(predictor, cache, day) if top_features else None
    if weights is not None:
        order = np.argsort(-weights)[:top_features]
        shown = [cache.feature_names[int(i)] for i in order]
        df = df.with_columns(pl.Series(f"x_{cache.feature_names[int(i)]}", cache.x[day, stocks, int(i)]
                                       .astype(np.float64)).fill_nan(None) for i in order)
    h0 = cache.horizons[0]
    ordered = ["Date", "Code", "sector", *(c for h in cache.horizons for c in (f"score_{h}d", f"rank_{h}d",
                                                                                 f"decile_{h}d"))]
    return df.select(*ordered, *(c for c in df.columns if c not in ordered)).sort(f"rank_{h0}d", nulls_last=True), shown


def ends_table(ranks: pl.DataFrame, horizon: int, n: int = 20) -> list[dict[str, Any]]:
    """The top `n` and bottom `n` rows by the `horizon` score, as rows for a table artifact."""
    ranked = ranks.filter(pl.col(f"rank_{horizon}d").is_not_null()).sort(f"rank_{horizon}d")
    ends = ranked.head(n) if len(ranked) <= 2 * n else pl.concat([ranked.head(n), ranked.tail(n)])
    keep = ["Code", "sector", f"score_{horizon}d", f"rank_{horizon}d", f"decile_{horizon}d",
            *(c for c in ranks.columns if c.startswith(("peer_score_", "x_")))]
    rows = []
    for r in ends.select(keep).iter_rows(named=True):
        rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return rows
