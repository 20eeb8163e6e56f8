"""Synthetic Japanese equity panel with a planted, known-achievable signal (the default dataset).

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
expectation, known at t) against target_h, from `atft_core.evaluate.metrics.daily_ic`. mu_t is used for
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# The 33 TSE sector codes with rough listed-company counts (sector sizes are very uneven).
SECTOR33: dict[str, int] = {
    "0050": 12, "1050": 6, "2050": 160, "3050": 125, "3100": 50, "3150": 25, "3200": 210,
    "3250": 70, "3300": 10, "3350": 20, "3400": 55, "3450": 45, "3500": 35, "3550": 90,
    "3600": 230, "3650": 240, "3700": 90, "3750": 50, "3800": 110, "4050": 25, "5050": 65,
    "5100": 12, "5150": 5, "5200": 25, "5250": 550, "6050": 310, "6100": 350, "7050": 80,
    "7100": 40, "7150": 15, "7200": 35, "8050": 160, "9050": 500,
}
SECTIONS = ("Prime", "Standard", "Growth")
SECTION_SHARE = (0.45, 0.40, 0.15)
SECTION_IDIO_VOL = (0.015, 0.019, 0.030)  # long-run daily idiosyncratic vol by section

PRICE_FEATURES = ("returns_1d", "returns_5d", "returns_20d", "volatility_20d", "ma_gap_5d",
                  "ma_gap_20d", "volume_z_20d", "log_turnover")
# Typical scale of each price feature, so noisy transforms of them get comparable noise.
PRICE_FEATURE_SCALE = (0.02, 0.045, 0.09, 0.01, 0.015, 0.04, 1.0, 0.8)
MARKET_FEATURES = ("mkt_return_1d", "macro_rate")
SIGNAL_FEATURES = ("sig_interact_x", "sig_interact_gate", "sig_extreme", "sig_daily_noisy",
                   "sig_sector_rel", "sig_linear")
NOISE_KINDS = ("tech_mix", "fund_slow", "noise_iid", "sector_noise")
N_FIXED_FEATURES = len(PRICE_FEATURES) + len(MARKET_FEATURES) + len(SIGNAL_FEATURES)

# Share of mu's variance carried by each component (they sum to 1).
SIGNAL_SHARES = {"interaction": 0.30, "extreme": 0.15, "temporal": 0.25, "sector": 0.15, "linear": 0.15}
ALPHA = 0.0026  # cross-sectional std of mu (daily return units): calibrated for oracle RankIC ~0.15
TEMPORAL_WINDOW = 10
EXTREME_THRESHOLD = 1.0
_P_EXTREME = 0.31731050786291415  # P(|N(0,1)| > 1)
# AR(1) persistence of the signal features: short memory, so mu decays over a few days.
PHI = {"x": 0.4, "gate": 0.8, "extreme": 0.5, "linear": 0.5, "sector_idio": 0.5, "sector_common": 0.97}
SECTOR_COMMON_VAR = 3.0  # variance of sig_sector_rel's sector-wide part (idiosyncratic part: 1)

BURN_IN = 60  # days simulated before the first date: GARCH warm-up and full feature windows
LOOKBACK = 21  # days of history the windowed price features need (returns_20d uses price[t-20])
PRICE_LIMIT = 0.30
HALT_PROB = 0.002
LATE_LISTING_SHARE = 0.12
EARLY_DELISTING_SHARE = 0.08
MIN_LIFE = 40
MARKET_DRIFT = 0.0003

# Independent random streams; each day gets its own (seed, stream, day) generator.
_STATIC, _DAY, _NOISE_DAY, _NOISE_INIT = 0, 1, 2, 3


@dataclass
class DemoConfig:
    stocks: int = 300
    days: int = 750
    features: int = 40
    seed: int = 0
    start: str = "2020-01-06"  # first trading day candidate (the first XTKS session on or after it)
    horizons: tuple[int, ...] = (1, 5, 10, 20)
    chunk_days: int = 250  # days simulated/written per chunk (bounded memory at real size)


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
    """Simulate the panel, write parquet `out` (+ `out.oracle.json`) and return the oracle dict."""
    _check_config(cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dates = trading_days(cfg.start, cfg.days)
    static = _make_static(cfg)
    names = feature_names(cfg.features)
    sim = _Simulator(cfg, static)
    noise = _NoiseFeatures(cfg, static)
    buf = _Buffer()
    buf.append(sim.run(BURN_IN))
    horizons = tuple(sorted(cfg.horizons))
    h_max = horizons[-1]
    mu_all = np.full((cfg.days, cfg.stocks), np.nan, dtype=np.float64)
    tgt_all = np.full((len(horizons), cfg.days, cfg.stocks), np.nan, dtype=np.float32)
    n_rows = 0
    tmp = out.with_name(out.name + ".tmp")
    schema = _schema(names, horizons)
    try:
        with pq.ParquetWriter(tmp, schema, compression="snappy",
                              use_dictionary=["Code", "Section", "sector33_code"]) as writer:
            for a in range(0, cfg.days, cfg.chunk_days):
                b = min(a + cfg.chunk_days, cfg.days)
                need = min(b + h_max, cfg.days)  # forward targets look h_max days past the chunk
                if buf.end < need:
                    buf.append(sim.run(need - buf.end))
                chunk = _build_chunk(buf, a, b, static, noise, horizons)
                mu_all[a:b] = np.where(chunk["obs"], chunk["mu"], np.nan)
                tgt_all[:, a:b] = chunk["targets"]
                table = _to_table(chunk, dates[a:b], static, names, horizons, schema)
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
                n_rows += table.num_rows
                buf.drop_before(b - LOOKBACK)
                del chunk, table  # free this chunk before the next is built: peak = one chunk
        oracle = _oracle(cfg, names, dates, static, mu_all, tgt_all, horizons, n_rows)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written panel behind
        raise
    # Readers never see a half-written file, nor a new panel next to an old oracle for long.
    oracle_path = Path(str(out) + ".oracle.json")
    oracle_tmp = oracle_path.with_name(oracle_path.name + ".tmp")
    oracle_tmp.write_text(json.dumps(oracle, indent=2))
    mu_path = Path(str(out) + ".oracle.parquet")
    mu_tmp = mu_path.with_name(mu_path.name + ".tmp")
    _write_mu(mu_tmp, dates, static.codes, mu_all)
    os.replace(tmp, out)
    os.replace(oracle_tmp, oracle_path)
    os.replace(mu_tmp, mu_path)
    return oracle


def _write_mu(path: Path, dates: np.ndarray, codes: np.ndarray, mu: np.ndarray) -> None:
    """Long table Date, Code, mu (float64) of the published cells of ``mu [days, S]``."""
    di, si = np.nonzero(np.isfinite(mu))
    table = pa.table({"Date": pa.array(dates[di].astype("datetime64[D]"), type=pa.date32()),
                      "Code": pa.array(codes[si]), "mu": pa.array(mu[di, si])})
    pq.write_table(table, path, compression="snappy")


def trading_days(start: str, days: int) -> np.ndarray:
    """The first `days` XTKS sessions on or after `start`, as datetime64[D]."""
    import exchange_calendars as xc  # imported lazily: it costs ~0.5 s and only generation needs it

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
    feature_names(cfg.features)


def _day_rng(seed: int, stream: int, day: int) -> np.random.Generator:
    # `day` counts from the start of the burn-in, so it is never negative.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, day)))


# ----------------------------------------------------------------------------------------------
# Static stock attributes


@dataclass
class _Static:
    codes: np.ndarray  # [S] str, sorted: the stock axis is in Code order, so rows come out sorted
    section: np.ndarray  # [S] int index into SECTIONS
    sector: np.ndarray  # [S] int index into SECTOR33
    list_day: np.ndarray  # [S] first day with a row (-BURN_IN = listed before the sample)
    delist_day: np.ndarray  # [S] first day without a row (days = still listed at the end)
    beta: np.ndarray
    gamma: np.ndarray  # loading on the stock's sector factor
    idio_vol: np.ndarray  # long-run daily idiosyncratic vol
    log_shares: np.ndarray
    log_volume: np.ndarray  # typical log share volume
    price0: np.ndarray


def _make_static(cfg: DemoConfig) -> _Static:
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_STATIC,)))
    s, d = cfg.stocks, cfg.days
    codes = np.sort(rng.choice(np.arange(1300, 9900), size=s, replace=False))
    codes = np.array([f"{c}0" for c in codes])
    weights = np.array(list(SECTOR33.values()), dtype=float)
    sector = rng.choice(len(SECTOR33), size=s, p=weights / weights.sum())
    section = rng.choice(len(SECTIONS), size=s, p=SECTION_SHARE)
    list_day = np.full(s, -BURN_IN)
    delist_day = np.full(s, d)
    if d >= 3 * MIN_LIFE:
        # New listings are mostly Growth names; delistings hit anyone.
        p_late = np.where(section == 2, 2.5, 0.75) * LATE_LISTING_SHARE
        late = rng.random(s) < p_late
        list_day[late] = rng.integers(1, d - MIN_LIFE, size=late.sum())
        early = rng.random(s) < EARLY_DELISTING_SHARE
        # Delisting day uniform in [lo, d): not too early in the sample, never before MIN_LIFE days.
        lo = np.maximum(list_day + MIN_LIFE, d // 5)
        cut = rng.integers(0, 1 << 30, size=s) % np.maximum(d - lo, 1) + lo
        early &= cut < d  # a listing too late to live MIN_LIFE days before the end stays listed
        delist_day[early] = cut[early]
    vol_level = np.array(SECTION_IDIO_VOL)[section] * np.exp(0.25 * rng.standard_normal(s))
    beta = np.where(section == 2, 1.2, 1.0) + 0.3 * rng.standard_normal(s)
    gamma = 1.0 + 0.25 * rng.standard_normal(s)
    log_shares = np.log(np.where(section == 0, 1e8, 2e7)) + 0.8 * rng.standard_normal(s)
    log_volume = log_shares - 5.5 + 0.5 * rng.standard_normal(s)
    price0 = np.exp(np.log(1500.0) + 0.8 * rng.standard_normal(s))
    return _Static(codes, section, sector, list_day, delist_day, beta, gamma, vol_level,
                   log_shares, log_volume, price0)


# ----------------------------------------------------------------------------------------------
# Day-by-day market simulation (state carried across chunks)

# Unit-variance student-t: t_df * sqrt((df - 2) / df).
_T4, _T5 = np.sqrt(2.0 / 4.0), np.sqrt(3.0 / 5.0)
_GARCH_MKT = (0.011, 0.08, 0.90)  # long-run vol, ARCH, GARCH
_GARCH_SEC = (0.008, 0.06, 0.92)
_GARCH_IDIO = (0.07, 0.90)  # ARCH, GARCH; long-run vol per stock (_Static.idio_vol)


class _Simulator:
    """Latent market: prices, volumes, signal features and mu, one day per step."""

    RAW = ("price", "log_volume", "x", "gate", "extreme", "daily", "sector_rel", "linear", "mu", "macro")

    def __init__(self, cfg: DemoConfig, st: _Static):
        self.cfg, self.st = cfg, st
        s = cfg.stocks
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_STATIC, 1)))
        self.day = -BURN_IN
        self.price = st.price0.copy()
        self.h_mkt = _GARCH_MKT[0] ** 2
        self.sec_vol = _GARCH_SEC[0] * np.exp(0.2 * rng.standard_normal(len(SECTOR33)))
        self.h_sec = self.sec_vol**2
        self.h_idio = st.idio_vol**2
        self.vol_ar = np.zeros(s)
        self.sig = {k: rng.standard_normal(s) for k in ("x", "gate", "extreme", "linear", "sector_idio")}
        self.sector_common = np.sqrt(SECTOR_COMMON_VAR) * rng.standard_normal(len(SECTOR33))
        self.daily_ring = np.full((TEMPORAL_WINDOW, s), np.nan)
        self.mu = np.zeros(s)
        self.macro = 0.0
        self.w = {k: np.sqrt(v) for k, v in SIGNAL_SHARES.items()}

    def run(self, n: int) -> dict[str, np.ndarray]:
        s = self.cfg.stocks
        out = {k: np.empty((n, s)) for k in self.RAW if k != "macro"}
        out["macro"] = np.empty(n)
        out["obs"] = np.empty((n, s), dtype=bool)
        out["start"] = np.array(self.day)
        for i in range(n):
            self._step(out, i)
        return out

    def _step(self, out: dict[str, np.ndarray], i: int) -> None:
        st, t = self.st, self.day
        s = self.cfg.stocks
        rng = _day_rng(self.cfg.seed, _DAY, t + BURN_IN)
        z_m = rng.standard_t(5) * _T5
        z_sec = rng.standard_t(5, len(SECTOR33)) * _T5
        z_i = rng.standard_t(4, s) * _T4
        n = rng.standard_normal((7, s))
        n_sec = rng.standard_normal(len(SECTOR33))
        n_macro = rng.standard_normal()
        halt = (rng.random(s) < HALT_PROB) & (st.list_day != t)  # a new listing trades on day one

        # Today's return realises yesterday's expectation plus factor and idiosyncratic shocks.
        m = np.sqrt(self.h_mkt) * z_m
        f = np.sqrt(self.h_sec) * z_sec
        e = np.sqrt(self.h_idio) * z_i
        r = self.mu + st.beta * (MARKET_DRIFT + m) + st.gamma * f[st.sector] + e
        self.price *= 1.0 + np.clip(r, -PRICE_LIMIT, PRICE_LIMIT)
        self.h_mkt = _garch(self.h_mkt, m, *_GARCH_MKT)
        self.h_sec = self.sec_vol**2 * (1 - _GARCH_SEC[1] - _GARCH_SEC[2]) \
            + _GARCH_SEC[1] * f**2 + _GARCH_SEC[2] * self.h_sec
        a_i, b_i = _GARCH_IDIO
        self.h_idio = st.idio_vol**2 * (1 - a_i - b_i) + a_i * e**2 + b_i * self.h_idio
        # Volume: persistent level plus abnormal volume on large moves.
        self.vol_ar = 0.8 * self.vol_ar + 0.6 * n[6]
        log_volume = st.log_volume + self.vol_ar + 0.3 * np.abs(z_i)

        alive = (st.list_day <= t) & (t < st.delist_day)
        obs = alive & ~halt
        sig = self.sig
        for j, key in enumerate(("x", "gate", "extreme", "linear", "sector_idio")):
            sig[key] = _ar1(sig[key], PHI[key], n[j])
        self.sector_common = _ar1(self.sector_common, PHI["sector_common"],
                                  np.sqrt(SECTOR_COMMON_VAR) * n_sec)
        daily = n[5]
        sector_rel = self.sector_common[st.sector] + sig["sector_idio"]
        self.daily_ring[(t + BURN_IN) % TEMPORAL_WINDOW] = np.where(obs, daily, np.nan)
        self.mu = ALPHA * self._score(sig, sector_rel, obs)
        self.macro = 0.995 * self.macro + 0.1 * n_macro

        for key, val in (("price", self.price), ("log_volume", log_volume), ("x", sig["x"]),
                         ("gate", sig["gate"]), ("extreme", sig["extreme"]), ("daily", daily),
                         ("sector_rel", sector_rel), ("linear", sig["linear"]), ("mu", self.mu)):
            out[key][i] = val
        out["macro"][i] = self.macro
        out["obs"][i] = obs
        self.day += 1

    def _score(self, sig: dict[str, np.ndarray], sector_rel: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """Unit-variance signal score from what is published up to today (see module docstring)."""
        w = self.w
        g_int = sig["x"] * np.sign(sig["gate"])
        # Extreme names underperform; centred and scaled to unit variance, no linear part.
        g_ext = (_P_EXTREME - (np.abs(sig["extreme"]) > EXTREME_THRESHOLD)) / np.sqrt(
            _P_EXTREME * (1 - _P_EXTREME))
        # Sum over the published days of the window, scaled so its variance is 1 however many.
        valid = ~np.isnan(self.daily_ring)
        n_valid = valid.sum(axis=0)
        g_tmp = np.where(valid, self.daily_ring, 0.0).sum(axis=0) / np.sqrt(np.maximum(n_valid, 1))
        # Sector mean over the names published today, which is what a model sees.
        sec = self.st.sector
        cnt = np.bincount(sec[obs], minlength=len(SECTOR33))
        tot = np.bincount(sec[obs], weights=sector_rel[obs], minlength=len(SECTOR33))
        g_sec = np.where(cnt[sec] > 1, sector_rel - tot[sec] / np.maximum(cnt[sec], 1), 0.0)
        return (w["interaction"] * g_int + w["extreme"] * g_ext + w["temporal"] * g_tmp
                + w["sector"] * g_sec + w["linear"] * sig["linear"])


def _ar1(x: np.ndarray, phi: float, noise: np.ndarray) -> np.ndarray:
    """Stationary AR(1) step that keeps the variance of `noise`."""
    return phi * x + np.sqrt(1.0 - phi * phi) * noise


def _garch(h: float, shock: float, vol: float, a: float, b: float) -> float:
    return vol * vol * (1 - a - b) + a * shock * shock + b * h


class _Buffer:
    """Simulated days [start, end) kept for the current chunk's lookback and forward targets."""

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}
        self.start = 0
        self.end = 0

    def append(self, block: dict[str, np.ndarray]) -> None:
        start = int(block.pop("start"))
        n = len(block["obs"])
        if not self.data:
            self.data, self.start = block, start
        else:
            self.data = {k: np.concatenate([v, block[k]]) for k, v in self.data.items()}
        self.end = start + n

    def drop_before(self, day: int) -> None:
        k = max(day - self.start, 0)
        if k:
            self.data = {key: v[k:] for key, v in self.data.items()}
            self.start += k

    def get(self, key: str, a: int, b: int) -> np.ndarray:
        return self.data[key][a - self.start:b - self.start]


# ----------------------------------------------------------------------------------------------
# Noise features (own random stream and state, generated chunk by chunk)


class _NoiseFeatures:
    """Columns that carry no signal: noisy price transforms, slow AR(1)s, i.i.d. and sector noise."""

    def __init__(self, cfg: DemoConfig, st: _Static):
        self.cfg, self.st = cfg, st
        n = cfg.features - N_FIXED_FEATURES
        self.kind = np.arange(n) % len(NOISE_KINDS)
        self.phi = np.select([self.kind == 1, self.kind == 2, self.kind == 3], [0.98, 0.0, 0.9], 0.3)
        self.phi = self.phi.astype(np.float32)[:, None]
        self.sq = np.sqrt(1 - self.phi**2)
        self.base = np.arange(n) % len(PRICE_FEATURES)  # price feature a tech_mix column distorts
        self.mix_noise = (0.5 + np.arange(n) % 3).astype(np.float32)  # noise-to-signal of tech_mix
        self.n_sector_cols = int((self.kind == 3).sum())
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_NOISE_INIT,)))
        self.state = rng.standard_normal((n, cfg.stocks), dtype=np.float32)
        self.sector_state = rng.standard_normal((self.n_sector_cols, len(SECTOR33)), dtype=np.float32)
        self.next_day = 0

    def chunk(self, a: int, b: int, price_feats: np.ndarray) -> np.ndarray:
        """Noise columns [n, b - a, S] for days [a, b); `price_feats` is [P, b - a, S]."""
        assert a == self.next_day, "noise features must be generated in day order"
        n, s = self.state.shape
        out = np.empty((n, b - a, s), dtype=np.float32)
        sec_cols = self.kind == 3
        for i, t in enumerate(range(a, b)):
            rng = _day_rng(self.cfg.seed, _NOISE_DAY, t)
            eps = rng.standard_normal((n, s), dtype=np.float32)
            self.state = self.phi * self.state + self.sq * eps
            if self.n_sector_cols:
                eps_sec = rng.standard_normal(self.sector_state.shape, dtype=np.float32)
                self.sector_state = np.float32(0.9) * self.sector_state + np.float32(0.436) * eps_sec
            out[:, i] = self.state
            if self.n_sector_cols:
                out[sec_cols, i] = self.sector_state[:, self.st.sector] + np.float32(0.3) * self.state[sec_cols]
        mix = self.kind == 0
        if mix.any():
            scale = np.asarray(PRICE_FEATURE_SCALE, dtype=np.float32)[self.base[mix]]
            noise_w = (self.mix_noise[mix] * scale)[:, None, None]
            out[mix] = price_feats[self.base[mix]] + noise_w * out[mix]
        self.next_day = b
        return out


# ----------------------------------------------------------------------------------------------
# Chunk assembly: features, targets, Arrow table


def _build_chunk(buf: _Buffer, a: int, b: int, st: _Static, noise: _NoiseFeatures,
                 horizons: tuple[int, ...]) -> dict[str, Any]:
    c, s = b - a, len(st.codes)
    price = buf.get("price", a - LOOKBACK, b)
    obs = buf.get("obs", a, b)
    age = np.arange(a, b)[:, None] - st.list_day[None, :]
    price_feats = _price_features(price, buf.get("log_volume", a - LOOKBACK, b), st, age)
    mkt_ret = _masked_mean(price_feats[0], obs)
    market = np.stack([np.broadcast_to(mkt_ret[:, None], (c, s)),
                       np.broadcast_to(buf.get("macro", a, b)[:, None], (c, s))])
    signal = np.stack([buf.get(k, a, b) for k in ("x", "gate", "extreme", "daily", "sector_rel", "linear")])
    noise_feats = noise.chunk(a, b, price_feats)
    feats = np.concatenate([price_feats, market.astype(np.float32), signal.astype(np.float32), noise_feats])
    return {"obs": obs, "mu": buf.get("mu", a, b), "features": feats,
            "targets": _targets(buf, a, b, horizons)}


def _price_features(price: np.ndarray, log_volume: np.ndarray, st: _Static, age: np.ndarray) -> np.ndarray:
    """Causal price/volume features for the last len(price) - LOOKBACK days: [P, C, S] float32.

    Window sums are explicit loops over lags (not cumsums) so a value does not depend on where the
    chunk starts: chunked and unchunked runs give bit-identical features.
    """
    L = LOOKBACK
    cur = price[L:]
    ret = price[1:] / price[:-1] - 1.0  # ret[k] is the return into day k + 1 of `price`
    ret_cur = ret[L - 1:]
    vol20 = _window_std(ret, 20)[L - 20:]
    ma5 = _window_sum(price, 5)[L - 4:] / 5.0
    ma20 = _window_sum(price, 20)[L - 19:] / 20.0
    lv_mean = _window_sum(log_volume, 20)[L - 19:] / 20.0
    lv_std = _window_std(log_volume, 20)[L - 19:]
    lv = log_volume[L:]
    feats = [
        (ret_cur, 1),
        (cur / price[L - 5:len(price) - 5] - 1.0, 5),
        (cur / price[L - 20:len(price) - 20] - 1.0, 20),
        (vol20, 20),
        (cur / ma5 - 1.0, 4),
        (cur / ma20 - 1.0, 19),
        ((lv - lv_mean) / np.maximum(lv_std, 1e-6), 19),
        (lv - st.log_shares[None, :], 0),
    ]
    out = np.empty((len(feats), *cur.shape), dtype=np.float32)
    for j, (val, need) in enumerate(feats):
        # A new listing has no price history before its first day: NaN until the window is full.
        out[j] = np.where(age >= need, val, np.nan)
    return out


def _window_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing sums over w rows: out[k] = x[k] + ... + x[k + w - 1] (len(x) - w + 1 rows)."""
    n = len(x) - w + 1
    total = x[w - 1:w - 1 + n].copy()
    for lag in range(1, w):
        total += x[w - 1 - lag:w - 1 - lag + n]
    return total


def _window_std(x: np.ndarray, w: int) -> np.ndarray:
    mean = _window_sum(x, w) / w
    n = len(mean)
    ss = np.zeros_like(mean)
    for lag in range(w):
        ss += (x[w - 1 - lag:w - 1 - lag + n] - mean) ** 2
    return np.sqrt(ss / (w - 1))


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-day mean of x over published, non-NaN cells (the market-level return)."""
    ok = mask & ~np.isnan(x)
    cnt = ok.sum(axis=1)
    tot = np.where(ok, x, 0.0).sum(axis=1, dtype=np.float64)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan).astype(np.float32)


def _targets(buf: _Buffer, a: int, b: int, horizons: tuple[int, ...]) -> np.ndarray:
    """target_h[t] = price[t+h] / price[t] - 1; NaN unless day t+h exists and is published."""
    price = buf.get("price", a, buf.end)
    obs = buf.get("obs", a, buf.end)
    c = b - a
    out = np.full((len(horizons), c, price.shape[1]), np.nan, dtype=np.float32)
    for k, h in enumerate(horizons):
        n = min(c, len(price) - h)  # days whose t+h is simulated (it is not past the data end)
        if n > 0:
            fwd = price[h:h + n] / price[:n] - 1.0
            out[k, :n] = np.where(obs[h:h + n], fwd, np.nan)
    return out


def _schema(names: list[str], horizons: tuple[int, ...]) -> pa.Schema:
    fields = [pa.field("Date", pa.date32()), pa.field("Code", pa.string()),
              pa.field("Section", pa.string()), pa.field("sector33_code", pa.string())]
    fields += [pa.field(n, pa.float32()) for n in names]
    fields += [pa.field(f"target_{h}d", pa.float32()) for h in horizons]
    return pa.schema(fields)


def _to_table(chunk: dict[str, Any], dates: np.ndarray, st: _Static, names: list[str],
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


def _oracle(cfg: DemoConfig, names: list[str], dates: np.ndarray, st: _Static, mu: np.ndarray,
            targets: np.ndarray, horizons: tuple[int, ...], n_rows: int) -> dict[str, Any]:
    from atft_core.evaluate.metrics import daily_ic  # the project's one IC definition

    min_stocks = min(20, max(3, cfg.stocks // 2))
    per_h: dict[str, dict[str, float]] = {}
    for k, h in enumerate(horizons):
        ic, ric = daily_ic(mu, targets[k].astype(np.float64), min_stocks)
        per_h[f"target_{h}d"] = {
            "ic": _nanmean(ic), "rankic": _nanmean(ric),
            "ic_ir": _ir(ic), "rankic_ir": _ir(ric), "days": int(np.isfinite(ric).sum()),
        }
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
