"""The planted market (`DemoConfig.market="planted"`): stock statics, GARCH returns, features, targets.

The stock statics (codes, sections, sectors, listings and delistings) are shared with the price
market (`prices.py`).

`atft_core.data.demo.generate` drives it (chunked writing, the oracle); this module holds the
market itself. Every day draws from its own (seed, stream, day) generator, which is what lets the
demo be written in chunks of days with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atft_core.data.demo.config import DemoConfig

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



def _day_rng(seed: int, stream: int, day: int) -> np.random.Generator:
    # `day` counts from the start of the burn-in, so it is never negative.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, day)))


# ----------------------------------------------------------------------------------------------
# Static stock attributes


@dataclass
class Static:
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


def make_static(cfg: DemoConfig) -> Static:
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
    return Static(codes, section, sector, list_day, delist_day, beta, gamma, vol_level,
                   log_shares, log_volume, price0)


# ----------------------------------------------------------------------------------------------
# Day-by-day market simulation (state carried across chunks)

# Unit-variance student-t: t_df * sqrt((df - 2) / df).
_T4, _T5 = np.sqrt(2.0 / 4.0), np.sqrt(3.0 / 5.0)
_GARCH_MKT = (0.011, 0.08, 0.90)  # long-run vol, ARCH, GARCH
_GARCH_SEC = (0.008, 0.06, 0.92)
_GARCH_IDIO = (0.07, 0.90)  # ARCH, GARCH; long-run vol per stock (Static.idio_vol)


class Simulator:
    """Latent market: prices, volumes, signal features and mu, one day per step."""

    RAW = ("price", "log_volume", "x", "gate", "extreme", "daily", "sector_rel", "linear", "mu", "macro")

    def __init__(self, cfg: DemoConfig, st: Static):
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


class Buffer:
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


class NoiseFeatures:
    """Columns that carry no signal: noisy price transforms, slow AR(1)s, i.i.d. and sector noise."""

    def __init__(self, cfg: DemoConfig, st: Static):
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


def build_chunk(buf: Buffer, a: int, b: int, st: Static, noise: NoiseFeatures,
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


def _price_features(price: np.ndarray, log_volume: np.ndarray, st: Static, age: np.ndarray) -> np.ndarray:
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


def _targets(buf: Buffer, a: int, b: int, horizons: tuple[int, ...]) -> np.ndarray:
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
