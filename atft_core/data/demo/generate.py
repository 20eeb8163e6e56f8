"""The demo panel: `generate_demo` writes the market `DemoConfig.market` names, and its oracle.

`market="prices"` (the default) is the market simulated from prices (`prices.py`, `effects.py`,
`features.py`, written by `price_panel.py`); `market="planted"`, described below, is the synthetic
panel with a planted signal of known functional form, kept for tests of the model's mechanisms.

Synthetic Japanese equity panel with a planted, known-achievable signal.

Every later stage (training, dry-run gate, HPO, benchmarks) is judged on this panel, so it has to
look like the real one where it matters for the pipeline, and its achievable signal must be known
exactly: a model that finds nothing, or finds more than is there (a leak), must be obvious.

What is real
    The Tokyo trading calendar (`exchange_calendars` "XTKS", holidays included), 4-digit codes
    + "0", the three market sections, the 33 TSE sector codes with realistic sector sizes,
    listings and delistings during the sample (no rows outside a stock's life), and trading halts
    (a few random missing rows; the latent price keeps evolving, as when a vendor misses a day).

Returns (simple, close to close, clipped at +-30 % like a daily price limit)
    r[i, t+1] = mu[i, t] + beta_i * market[t+1] + gamma_i * sector[s(i), t+1] + idio[i, t+1]
    The market, each sector and each stock's idiosyncratic term are GARCH(1,1) with
    student-t shocks (volatility clustering, fat tails); Growth names are the most volatile.

The planted signal mu[i, t] (expected next-day return, a function of published data up to t)
    mu = alpha * (w1 g_interaction + w2 g_extreme + w3 g_temporal + w4 g_sector + w5 g_linear),
    each g of unit cross-sectional variance and independent, so alpha is the cross-sectional
    standard deviation of mu (calibrated so the oracle RankIC for 1d is about 0.15):
    - g_interaction = sig_interact_x * sign(sig_interact_gate): the sign of x's effect flips with
      another feature, so a linear model sees nothing (w1^2 = 0.30 of the signal variance);
    - g_extreme = threshold effect, names with |sig_extreme| > 1 underperform: symmetric, no
      linear part (0.15);
    - g_temporal = the 10-day moving sum of sig_daily_noisy (i.i.d. daily noise), scaled by
      1/sqrt(days): the last day alone carries 1/10 of it (0.25);
    - g_sector = sig_sector_rel minus its same-day sector mean; the raw feature is dominated by a
      slow sector-wide component, so the last day's raw value carries 1/4 of it (0.15);
    - g_linear = sig_linear (0.15), so linear models do find something.
    A ridge on the last day's features can therefore explain at most ~21 % of mu's variance
    (a RankIC of at most ~46 % of the oracle's), while a model that sees a 20-day window and the
    day's cross-section can recover all of it. The feature processes are short-memory AR(1)s
    (and the 10-day window), so mu persists only partially: the oracle IC of mu_t against
    longer-horizon targets is positive but falls with the horizon.

Other features: price/volume features computed causally from the simulated prices (returns over
1/5/20 days, 20-day volatility, moving-average gaps, volume z-score, turnover; NaN until a newly
listed stock has enough history), two market-level features identical for every stock on a day
(the cross-sectional mean return and an AR(1) "macro" series), and noise columns filling up to
`features`: noisy transforms of the price features, slow (fundamental-like) AR(1)s, i.i.d. noise
and sector-level noise. None of them carries signal beyond what leaks through mu's persistence.

Targets: target_h[t] = price[t+h] / price[t] - 1 from the simulated prices, null when day t+h is
past the stock's life, halted, or past the data end (never a backward-looking fallback).

Oracle (`PATH.oracle.json`, and `PATH.oracle.parquet` with Date, Code, mu: the planted expected
return per row, so the oracle can be scored on exactly the days a model is scored on): the generator
parameters, which features carry the signal and which
are market-level, and per horizon the mean daily IC / RankIC of mu_t (the one-day conditional
expectation, known at t) against target_h, from `atft_core.ic.daily_ic`. mu_t is used for
every horizon because it is the achievable predictor: summing future mu would use information
from after t.

Scale: the simulation runs day by day (a recursion) but vectorised over stocks, and writes in
chunks of `chunk_days` days (one parquet row group each) with all state carried across chunks;
every day draws from its own seeded stream, so the output does not depend on the chunk size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from atft_core.data.demo.config import MARKETS, DemoConfig
from atft_core.data.demo.market import (
    ALPHA,
    BURN_IN,
    EXTREME_THRESHOLD,
    LOOKBACK,
    MARKET_FEATURES,
    N_FIXED_FEATURES,
    NOISE_KINDS,
    PHI,
    PRICE_FEATURES,
    SECTIONS,
    SECTOR33,
    SECTOR_COMMON_VAR,
    SIGNAL_FEATURES,
    SIGNAL_SHARES,
    TEMPORAL_WINDOW,
    Buffer,
    NoiseFeatures,
    Simulator,
    Static,
    build_chunk,
    make_static,
)
from atft_core.ic import daily_ic


def load_oracle(parquet_path: str | Path) -> dict | None:
    """The oracle written next to a demo parquet (`PATH.oracle.json`), or None for other data."""
    path = Path(str(parquet_path) + ".oracle.json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def feature_names(n_features: int) -> list[str]:
    """Numeric feature columns in file order: returns_1d first, then price, market, signal, noise."""
    if n_features < N_FIXED_FEATURES:
        raise ValueError(f"features={n_features}: the demo needs at least {N_FIXED_FEATURES} "
                         f"(price, market-level and signal features)")
    noise = [f"{NOISE_KINDS[k % len(NOISE_KINDS)]}_{k:03d}" for k in range(n_features - N_FIXED_FEATURES)]
    return [*PRICE_FEATURES, *MARKET_FEATURES, *SIGNAL_FEATURES, *noise]


def generate_demo(out: str | Path, cfg: DemoConfig) -> dict:
    """Simulate the panel of `cfg.market`, write parquet `out` (+ `out.oracle.json`, `out.oracle.parquet`)
    and return the oracle dict."""
    _check_config(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dates = trading_days(cfg.start, cfg.days)
    tmp = out.with_name(out.name + ".tmp")
    try:
        if cfg.market == "prices":
            from atft_core.data.demo.price_panel import write_price_panel
            oracle, codes, mu_all = write_price_panel(tmp, cfg, dates)
        else:
            oracle, codes, mu_all = _write_planted(tmp, cfg, dates)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written panel behind
        raise
    # Readers never see a half-written file, nor a new panel next to an old oracle for long.
    oracle_path = Path(str(out) + ".oracle.json")
    oracle_tmp = oracle_path.with_name(oracle_path.name + ".tmp")
    oracle_tmp.write_text(json.dumps(oracle, indent=2))
    mu_path = Path(str(out) + ".oracle.parquet")
    mu_tmp = mu_path.with_name(mu_path.name + ".tmp")
    _write_mu(mu_tmp, dates, codes, mu_all)
    os.replace(tmp, out)
    os.replace(oracle_tmp, oracle_path)
    os.replace(mu_tmp, mu_path)
    return oracle


def _write_planted(tmp: Path, cfg: DemoConfig, dates: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """The planted market's panel into `tmp`; returns (oracle, codes, mu [days, S])."""
    static = make_static(cfg)
    names = feature_names(cfg.features)
    sim = Simulator(cfg, static)
    noise = NoiseFeatures(cfg, static)
    buf = Buffer()
    buf.append(sim.run(BURN_IN))
    horizons = tuple(sorted(cfg.horizons))
    h_max = horizons[-1]
    mu_all = np.full((cfg.days, cfg.stocks), np.nan, dtype=np.float64)
    tgt_all = np.full((len(horizons), cfg.days, cfg.stocks), np.nan, dtype=np.float32)
    n_rows = 0
    schema = _schema(names, horizons)
    with pq.ParquetWriter(tmp, schema, compression="snappy",
                          use_dictionary=["Code", "Section", "sector33_code"]) as writer:
        for a in range(0, cfg.days, cfg.chunk_days):
            b = min(a + cfg.chunk_days, cfg.days)
            need = min(b + h_max, cfg.days)  # forward targets look h_max days past the chunk
            if buf.end < need:
                buf.append(sim.run(need - buf.end))
            chunk = build_chunk(buf, a, b, static, noise, horizons)
            mu_all[a:b] = np.where(chunk["obs"], chunk["mu"], np.nan)
            tgt_all[:, a:b] = chunk["targets"]
            table = _to_table(chunk, dates[a:b], static, names, horizons, schema)
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
            n_rows += table.num_rows
            buf.drop_before(b - LOOKBACK)
            del chunk, table  # free this chunk before the next is built: peak = one chunk
    oracle = _oracle(cfg, names, dates, static, mu_all, tgt_all, horizons, n_rows)
    return oracle, static.codes, mu_all


def _write_mu(path: Path, dates: np.ndarray, codes: np.ndarray, mu: np.ndarray) -> None:
    """Long table Date, Code, mu (float64) of the published cells of ``mu [days, S]``."""
    di, si = np.nonzero(np.isfinite(mu))
    table = pa.table({"Date": pa.array(dates[di].astype("datetime64[D]"), type=pa.date32()),
                      "Code": pa.array(codes[si]), "mu": pa.array(mu[di, si])})
    pq.write_table(table, path, compression="snappy")


def trading_days(start: str, days: int) -> np.ndarray:
    """The first `days` XTKS sessions on or after `start`, as datetime64[D]."""
    import exchange_calendars as xc  # imported lazily: slow to import, and only generation needs it

    with warnings.catch_warnings():  # a pandas deprecation inside exchange_calendars, not ours
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        cal = xc.get_calendar("XTKS")
    first, last = cal.first_session, cal.last_session
    start_ts = np.datetime64(start, "D")
    sessions = cal.sessions.to_numpy().astype("datetime64[D]")
    if start_ts < sessions[0]:
        raise ValueError(f"demo start {start} is before the XTKS calendar's first session {first.date()}")
    picked = sessions[sessions >= start_ts][:days]
    if len(picked) < days:
        latest = sessions[-days] if days <= len(sessions) else None
        hint = f"use start <= {latest}" if latest is not None else f"use days <= {len(sessions)}"
        raise ValueError(f"demo days={days} from start {start} runs past the XTKS calendar's last session "
                         f"{last.date()} (only {len(picked)} sessions left); {hint}")
    return picked


def _check_config(cfg: DemoConfig) -> None:
    if cfg.stocks < 2 or cfg.days < 2:
        raise ValueError(f"demo needs at least 2 stocks and 2 days, got stocks={cfg.stocks} days={cfg.days}")
    if cfg.chunk_days < 1:
        raise ValueError(f"chunk_days must be >= 1, got {cfg.chunk_days}")
    if not cfg.horizons or min(cfg.horizons) < 1:
        raise ValueError(f"horizons must be positive day counts, got {cfg.horizons}")
    if cfg.stocks > 8600:
        raise ValueError(f"stocks={cfg.stocks}: there are only 8,600 four-digit codes from 1300 to 9999")
    if cfg.market not in MARKETS:
        raise ValueError(f"market={cfg.market!r}: choose one of {', '.join(MARKETS)}")
    if cfg.market == "prices":
        from atft_core.data.demo.features import feature_names as price_feature_names
        price_feature_names(cfg.features)
    else:
        feature_names(cfg.features)


def _schema(names: list[str], horizons: tuple[int, ...]) -> pa.Schema:
    fields = [pa.field("Date", pa.date32()), pa.field("Code", pa.string()),
              pa.field("Section", pa.string()), pa.field("sector33_code", pa.string())]
    fields += [pa.field(n, pa.float32()) for n in names]
    fields += [pa.field(f"target_{h}d", pa.float32()) for h in horizons]
    return pa.schema(fields)


def _to_table(chunk: dict[str, Any], dates: np.ndarray, st: Static, names: list[str],
              horizons: tuple[int, ...], schema: pa.Schema) -> pa.Table:
    # The stock axis is in Code order, so row-major nonzero() gives rows sorted by Date then Code.
    flat = np.flatnonzero(chunk["obs"])
    di, si = np.divmod(flat, chunk["obs"].shape[1])
    si32 = si.astype(np.int32)

    def categorical(values: np.ndarray | list[str], idx: np.ndarray) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)),
                                              pa.array(list(values))).dictionary_decode()

    cols: list[pa.Array] = [
        pa.array(dates[di].astype("datetime64[D]"), type=pa.date32()),
        categorical(st.codes, si32),
        categorical(SECTIONS, st.section[si]),
        categorical(list(SECTOR33), st.sector[si]),
    ]
    feats = chunk["features"].reshape(len(names), -1)
    targets = chunk["targets"].reshape(len(horizons), -1)
    cols += [pa.array(feats[j].take(flat), from_pandas=True) for j in range(len(names))]
    cols += [pa.array(targets[k].take(flat), from_pandas=True) for k in range(len(horizons))]
    return pa.Table.from_arrays(cols, schema=schema)


# ----------------------------------------------------------------------------------------------
# Oracle


def oracle_min_stocks(cfg: DemoConfig) -> int:
    return min(20, max(3, cfg.stocks // 2))


def oracle_by_horizon(mu: np.ndarray, targets: np.ndarray, horizons: tuple[int, ...],
                      min_stocks: int) -> dict[str, dict[str, float]]:
    """Per horizon, the daily IC / RankIC of ``mu [D, S]`` against ``targets [H, D, S]``: means, IRs, days."""
    per_h: dict[str, dict[str, float]] = {}
    for k, h in enumerate(horizons):
        ic, ric = daily_ic(mu, targets[k].astype(np.float64), min_stocks)
        per_h[f"target_{h}d"] = {
            "ic": _nanmean(ic), "rankic": _nanmean(ric),
            "ic_ir": _ir(ic), "rankic_ir": _ir(ric), "days": int(np.isfinite(ric).sum()),
        }
    return per_h


def _oracle(cfg: DemoConfig, names: list[str], dates: np.ndarray, st: Static, mu: np.ndarray,
            targets: np.ndarray, horizons: tuple[int, ...], n_rows: int) -> dict[str, Any]:
    min_stocks = oracle_min_stocks(cfg)
    per_h = oracle_by_horizon(mu, targets, horizons, min_stocks)
    cfg_dict = dataclasses.asdict(cfg)
    cfg_dict["horizons"] = list(cfg.horizons)
    return {
        "generator": "atft_core.data.demo",
        "config": cfg_dict,
        "first_date": str(dates[0]), "last_date": str(dates[-1]), "rows": n_rows,
        "features": names,
        "signal_features": list(SIGNAL_FEATURES),
        "market_features": list(MARKET_FEATURES),
        "signal": {
            "mu": "alpha * sum_k sqrt(share_k) * g_k; expected next-day return known at day t",
            "alpha": ALPHA,
            "shares": SIGNAL_SHARES,
            "components": {
                "interaction": "sig_interact_x * sign(sig_interact_gate)",
                "extreme": f"P(|z|>{EXTREME_THRESHOLD}) - 1[|sig_extreme| > {EXTREME_THRESHOLD}], unit var",
                "temporal": f"sum of sig_daily_noisy over the last {TEMPORAL_WINDOW} published days "
                            "/ sqrt(count)",
                "sector": "sig_sector_rel - same-day mean over the published names of its sector",
                "linear": "sig_linear",
            },
            "ar1_phi": PHI,
            "linear_last_day_variance_share": SIGNAL_SHARES["temporal"] / TEMPORAL_WINDOW
            + SIGNAL_SHARES["sector"] / (1 + SECTOR_COMMON_VAR) + SIGNAL_SHARES["linear"],
        },
        "oracle_predictor": "mu_t (one-day conditional expectation) against every horizon's target",
        "min_stocks": min_stocks,
        "oracle": per_h,
        "stocks": {
            "total": cfg.stocks,
            "late_listings": int((st.list_day > 0).sum()),
            "early_delistings": int((st.delist_day < cfg.days).sum()),
        },
    }


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _ir(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean() / x.std()) if len(x) > 1 and x.std() > 0 else float("nan")
