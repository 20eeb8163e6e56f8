"""The price market: prices, volumes, events, listings and halts first; the signal lives in them.

Unlike the planted market (`market.py`), nothing here is written next to a model: the expected
return mu_t of each stock is a sum of documented real-market effects of its own and other stocks'
past prices, volumes and earnings events (`effects.py`), and the features a model sees are
computed afterwards from the simulated history by an ordinary feature pipeline (`features.py`).

The simulation, one day per step, vectorised over stocks
    r[i, t+1] = mu[i, t] + beta_i (drift + m[t+1]) + gamma_i f[s(i), t+1] + e[i, t+1]
                + LINK_RHO e[link(i), t+1] + jump on an earnings day,
    clipped at +-30 % (a daily price limit). The market m, each sector f and each stock's e are
    GARCH(1,1) with Student-t shocks (volatility clustering, fat tails); each stock shares part of
    one linked stock's shock (supplier and customer move together), the link chosen in a sector
    that leads its own. Quarterly earnings announcements (a random phase per stock) bring a surprise
    (persistent across quarters), a price jump on its unexpected part and a volume spike on the day,
    and a drift after.
    Log volume = the stock's level + a persistent AR(1) + a response to the size of its move and to
    events. Open, high and low are drawn around the close-to-close path.

Listings and delistings come from the same stock statics as the planted market (codes, TSE sectors
and sections); halts are short episodes (the row is missing, the latent price keeps moving, as when
a vendor misses a day). Everything before the first date is a burn-in of `BURN_IN` days, so every
window up to a year is full on day 0 for stocks listed before it; a stock listed later has no
history before its listing (its features and the effects it lacks history for start empty).

Deterministic per seed: one random stream per purpose, drawn day by day in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atft_core.data.demo import effects
from atft_core.data.demo.config import DemoConfig
from atft_core.data.demo.market import SECTOR33, Static, make_static

BURN_IN = 260  # days simulated before the first date: a year of history for the 12-month windows
HISTORY = 253  # rows of log price the effects read (12 months + 1)
NEVER_LISTED_DAY = -(10**6)  # list_day of a stock listed long before the simulation starts

# Unit-variance Student-t: t_df * sqrt((df - 2) / df).
_T4, _T5 = np.sqrt(2.0 / 4.0), np.sqrt(3.0 / 5.0)
GARCH_MARKET = (0.011, 0.08, 0.90)  # long-run daily vol, ARCH, GARCH
GARCH_SECTOR = (0.008, 0.06, 0.92)
GARCH_IDIO = (0.07, 0.90)  # ARCH, GARCH; long-run vol per stock (Static.idio_vol)
MARKET_DRIFT = 0.0003
PRICE_LIMIT = 0.30
LINK_RHO = 0.35  # share of the linked stock's idiosyncratic shock a stock takes the same day
EARNINGS_CYCLE = 61  # trading days between a stock's quarterly announcements
SURPRISE_PHI = 0.4  # persistence of the earnings surprise from quarter to quarter
EARNINGS_JUMP = 2.0  # announcement-day move, in units of the stock's daily idiosyncratic vol
HALT_START = 0.0008  # daily chance a trading halt starts (then 1 + geometric(0.5) days)

_STATIC, _SHOCKS, _EVENTS, _STRENGTH = 10, 11, 12, 13  # random streams


@dataclass
class PriceHistory:
    """The simulated market over BURN_IN + days days (row k = day k - BURN_IN); S stocks.

    Latent values exist on every row; `published` says which (day, stock) has a row in the panel.
    """

    static: Static
    log_close: np.ndarray  # [T, S] float64
    log_open: np.ndarray  # [T, S] float64
    log_high: np.ndarray  # [T, S] float64
    log_low: np.ndarray  # [T, S] float64
    log_volume: np.ndarray  # [T, S] float64, shares traded
    surprise: np.ndarray  # [T, S] float32, last announced earnings surprise (NaN before the first)
    days_since_event: np.ndarray  # [T, S] float32, days since that announcement (NaN before the first)
    published: np.ndarray  # [T, S] bool
    age: np.ndarray  # [T, S] int32, days since listing (negative before it)
    mu: np.ndarray  # [T, S] float64, expected next-day return known at the close (0 in early burn-in)
    leaders: np.ndarray  # [K, 2] sectors that lead each sector
    link: np.ndarray  # [S] each stock's linked stock


def simulate(cfg: DemoConfig) -> PriceHistory:
    """Run the market for BURN_IN + cfg.days days."""
    st = make_static(cfg)
    st.list_day = np.where(st.list_day > 0, st.list_day, NEVER_LISTED_DAY)
    leaders, link = _links(cfg, st)
    return Simulator(cfg, st, leaders, link).run()


def _links(cfg: DemoConfig, st: Static) -> tuple[np.ndarray, np.ndarray]:
    """Two leading sectors per sector, and per stock one linked stock in a leading sector."""
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_STATIC,)))
    k = len(SECTOR33)
    leaders = np.stack([rng.choice(np.delete(np.arange(k), i), size=2, replace=False) for i in range(k)])
    present = np.unique(st.sector)
    link = np.empty(cfg.stocks, dtype=np.int64)
    for i in range(cfg.stocks):
        cands = [j for j in leaders[st.sector[i]] if j in present]
        pool = np.flatnonzero(np.isin(st.sector, cands)) if cands else np.flatnonzero(st.sector != st.sector[i])
        pool = pool if len(pool) else np.delete(np.arange(cfg.stocks), i)
        link[i] = rng.choice(pool)
    return leaders, link


class Simulator:
    def __init__(self, cfg: DemoConfig, st: Static, leaders: np.ndarray, link: np.ndarray):
        self.cfg, self.st, self.leaders, self.link = cfg, st, leaders, link
        t, s = BURN_IN + cfg.days, cfg.stocks
        self.shocks = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_SHOCKS,)))
        self.events = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_EVENTS,)))
        self.strength_rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(_STRENGTH,)))
        f64 = {k: np.empty((t, s)) for k in ("log_close", "log_open", "log_high", "log_low", "log_volume", "mu")}
        self.h = PriceHistory(
            static=st, **f64,
            surprise=np.full((t, s), np.nan, dtype=np.float32),
            days_since_event=np.full((t, s), np.nan, dtype=np.float32),
            published=np.zeros((t, s), dtype=bool),
            age=(np.arange(t)[:, None] - BURN_IN - st.list_day[None, :]).clip(-(2**30), 2**30).astype(np.int32),
            leaders=leaders, link=link)
        self.phase = self.events.integers(0, EARNINGS_CYCLE, size=s)
        self.sec_vol = GARCH_SECTOR[0] * np.exp(0.2 * self.events.standard_normal(len(SECTOR33)))
        self.h_mkt, self.h_sec, self.h_idio = GARCH_MARKET[0] ** 2, self.sec_vol**2, st.idio_vol**2
        self.vol_ar = np.zeros(s)
        self.lv_mean = st.log_volume.copy()  # 60-day EWMA of log volume
        self.abnormal = np.zeros(s)  # 5-day EWMA of log volume over lv_mean
        self.var60 = st.idio_vol**2 + GARCH_MARKET[0] ** 2  # 60-day EWMA of squared returns
        self.mkt_var = GARCH_MARKET[0] ** 2  # 20-day EWMA of the market's squared return
        self.mkt_lp = np.zeros(t)  # cumulative log return of the equal-weighted market
        self.last_surprise = np.zeros(s)
        self.since = np.full(s, 10**6)
        self.halt_left = np.zeros(s, dtype=np.int64)
        self.strength = {k: 0.0 for k in effects.SHARES}

    def run(self) -> PriceHistory:
        h, st = self.h, self.st
        h.log_close[0] = h.log_open[0] = h.log_high[0] = h.log_low[0] = np.log(st.price0)
        h.log_volume[0] = st.log_volume
        h.mu[0] = 0.0
        for k in range(1, len(h.mu)):
            self._step(k)
        return h

    def _step(self, k: int) -> None:
        h, st, s = self.h, self.st, self.cfg.stocks
        t = k - BURN_IN
        rng = self.shocks
        z_m = rng.standard_t(5) * _T5
        z_sec = rng.standard_t(5, len(SECTOR33)) * _T5
        z_i = rng.standard_t(4, s) * _T4
        n = rng.standard_normal((4, s))

        # Earnings: surprise, jump and volume spike on the day; the drift lives in mu from then on.
        event = (k - self.phase) % EARNINGS_CYCLE == 0
        fresh = self.events.standard_normal(s)
        news = np.sqrt(1 - SURPRISE_PHI**2) * fresh  # the part of the surprise nobody could expect
        self.last_surprise = np.where(event, SURPRISE_PHI * self.last_surprise + news, self.last_surprise)
        self.since = np.where(event, 0, self.since + 1)

        m = np.sqrt(self.h_mkt) * z_m
        f = np.sqrt(self.h_sec) * z_sec
        e = np.sqrt(self.h_idio) * z_i
        jump = np.where(event, EARNINGS_JUMP * st.idio_vol * news, 0.0)  # prices react to the news only
        r = (h.mu[k - 1] + st.beta * (MARKET_DRIFT + m) + st.gamma * f[st.sector]
             + e + LINK_RHO * e[self.link] + jump)
        r = np.clip(r, -PRICE_LIMIT, PRICE_LIMIT)
        lr = np.log1p(r)
        h.log_close[k] = h.log_close[k - 1] + lr
        sigma = np.sqrt(self.h_idio + st.beta**2 * self.h_mkt)
        h.log_open[k] = h.log_close[k - 1] + 0.4 * lr + 0.25 * sigma * n[0]
        top = np.maximum(h.log_open[k], h.log_close[k])
        bottom = np.minimum(h.log_open[k], h.log_close[k])
        h.log_high[k] = top + 0.5 * sigma * np.abs(n[1])
        h.log_low[k] = bottom - 0.5 * sigma * np.abs(n[2])
        self._update_vol(m, f, e)

        self.vol_ar = 0.9 * self.vol_ar + 0.35 * n[3]
        lv = st.log_volume + self.vol_ar + 0.3 * np.abs(z_i) + 0.2 * abs(z_m) + 1.0 * event
        h.log_volume[k] = lv
        self.abnormal += (lv - self.lv_mean - self.abnormal) / 3.0
        self.lv_mean += (lv - self.lv_mean) * (2.0 / 61.0)

        alive = (st.list_day <= t) & (t < st.delist_day)
        self._halts(alive, t)
        h.published[k] = alive & (self.halt_left == 0)
        pub = h.published[k]
        mkt_r = lr[pub].mean() if pub.any() else 0.0
        self.mkt_lp[k] = self.mkt_lp[k - 1] + mkt_r
        self.mkt_var += (mkt_r**2 - self.mkt_var) / 10.0
        self.var60 += ((lr - mkt_r) ** 2 - self.var60) / 30.0
        seen = np.isfinite(h.surprise[k - 1]) | event
        h.surprise[k] = np.where(seen, self.last_surprise, np.nan)
        h.days_since_event[k] = np.where(seen, self.since, np.nan)
        for key in self.strength:  # each effect's strength wanders slowly around 1
            self.strength[key] = effects.STRENGTH_PHI * self.strength[key] + np.sqrt(
                1 - effects.STRENGTH_PHI**2) * self.strength_rng.standard_normal()
        h.mu[k] = self._mu(k, pub) if k >= HISTORY else 0.0

    def _update_vol(self, m: float, f: np.ndarray, e: np.ndarray) -> None:
        vol, a, b = GARCH_MARKET
        self.h_mkt = vol * vol * (1 - a - b) + a * m * m + b * self.h_mkt
        _, a, b = GARCH_SECTOR
        self.h_sec = self.sec_vol**2 * (1 - a - b) + a * f**2 + b * self.h_sec
        a, b = GARCH_IDIO
        self.h_idio = self.st.idio_vol**2 * (1 - a - b) + a * e**2 + b * self.h_idio

    def _halts(self, alive: np.ndarray, t: int) -> None:
        """Halt episodes: a halted stock has no row for 1 + geometric(0.5) days (never on listing day)."""
        self.halt_left = np.maximum(self.halt_left - 1, 0)
        start = alive & (self.halt_left == 0) & (self.events.random(len(alive)) < HALT_START)
        start &= self.st.list_day != t
        self.halt_left[start] = self.events.geometric(0.5, size=int(start.sum()))

    def _mu(self, k: int, pub: np.ndarray) -> np.ndarray:
        h = self.h
        x = effects.EffectInputs(
            lp=h.log_close[k - HISTORY + 1:k + 1], sector=self.st.sector, published=pub, age=h.age[k],
            abnormal_volume=self.abnormal, vol60=np.sqrt(self.var60),
            surprise=self.last_surprise, days_since_event=self.since.astype(np.float64),
            leaders=self.leaders, link=self.link, market_vol=float(np.sqrt(self.mkt_var)),
            strength={key: float(np.clip(1 + effects.STRENGTH_SD * v, 0.2, 2.0)) for key, v in self.strength.items()})
        market_12m = self.mkt_lp[k] - self.mkt_lp[k - 252]
        return effects.expected_return(x, market_12m)
