"""The price market's expected returns: a documented set of real-market effects, known at day t.

Each effect is a cross-sectional score of the stocks on day t, computed from the simulated history
up to t only (`EffectInputs`), standardised over the published names (unit variance, mean 0; a name
whose history is too short for an effect gets 0, the cross-sectional mean). The expected next-day
return is ``mu_t = ALPHA * z(sum_k sqrt(share_k) * strength_k(t) * g_k)``: the shares say how much
of the signal each effect carries, the strengths let some effects change over time, and the outer
z keeps mu's cross-sectional standard deviation at ALPHA (calibrated so the oracle's 1-day RankIC
is about 0.09, inside the 0.06-0.12 of real daily equity signals).

Each effect (the input's horizon; a real-market reference):
- short-term reversal: the last 5 days' return against its sector, weaker on high volume
  (1-5 days; Jegadeesh 1990, Lehmann 1990; volume: Campbell, Grossman & Wang 1993);
- momentum: the return from 12 months to 1 month ago (1-12 months; Jegadeesh & Titman 1993);
- sector momentum: the sector's last 6 months (6 months; Moskowitz & Grinblatt 1999);
- sector lead-lag: the 5-day return of the two sectors that lead it, as supplier and customer
  industries do (1 week; Hou 2007, Menzly & Ozbas 2010);
- linked-firm momentum: the 20-day return of one economically linked stock in a leading sector
  (1 month; Cohen & Frazzini 2008);
- abnormal volume: the last 5 days' volume against its 60-day norm, positively
  (days to weeks; Gervais, Kaniel & Mingelgrin 2001);
- post-earnings drift: the last quarterly surprise, fading over ~2 months (event, 60 days;
  Bernard & Thomas 1989);
- low volatility: 60-day volatility, negatively (3 months; Ang, Hodrick, Xing & Zhang 2006,
  Frazzini & Pedersen 2014);
- 52-week-high proximity: the close against its 52-week high (1 year; George & Hwang 2004).

Time variation: every effect's strength wanders slowly (an AR(1) around 1, as anomalies wax and
wane: McLean & Pontiff 2016); momentum reverses sign after a bear market (momentum crashes: Daniel
& Moskowitz 2016); reversal is stronger when the market is volatile (Nagel 2012).

What a per-day model of each stock's own history cannot see: sector lead-lag and linked-firm
momentum use other sectors' and other stocks' returns; the features (`features.py`) are statistics
of each stock's own history and the market's, so these parts need the day's cross-section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHA = 0.0017  # cross-sectional std of mu (daily return units): oracle 1-day RankIC ~0.09

# Share of the signal variance carried by each effect (they sum to 1), and the history each needs.
SHARES: dict[str, float] = {
    "reversal": 0.40, "momentum": 0.04, "sector_momentum": 0.03, "sector_lead_lag": 0.16,
    "linked_momentum": 0.12, "abnormal_volume": 0.10, "earnings_drift": 0.07, "low_volatility": 0.04,
    "high_52w": 0.04,
}
NEED: dict[str, int] = {
    "reversal": 5, "momentum": 252, "sector_momentum": 0, "sector_lead_lag": 0, "linked_momentum": 0,
    "abnormal_volume": 20, "earnings_drift": 0, "low_volatility": 20, "high_52w": 60,
}
STRENGTH_PHI = 0.997  # persistence of each effect's strength (half-life ~ 230 days)
STRENGTH_SD = 0.35  # spread of the strength around 1
DRIFT_DAYS = 30.0  # decay of post-earnings drift (e-folding days); 0 after DRIFT_WINDOW
DRIFT_WINDOW = 60
BEAR_MARKET = -0.05  # market's 12-month log return below which momentum turns (crash regime)
NORMAL_MARKET_VOL = 0.011


@dataclass
class EffectInputs:
    """What is known at the close of day t, as the simulator holds it (S = stocks, K = sectors)."""

    lp: np.ndarray  # [W, S] log close of the last W days (row -1 = day t), W >= 253
    sector: np.ndarray  # [S] sector index
    published: np.ndarray  # [S] bool: the stock has a row on day t
    age: np.ndarray  # [S] days since listing (history available)
    abnormal_volume: np.ndarray  # [S] mean of (log volume - its 60-day EWMA) over 5 days
    vol60: np.ndarray  # [S] EWMA daily volatility, ~60-day memory
    surprise: np.ndarray  # [S] last earnings surprise (0 before the first)
    days_since_event: np.ndarray  # [S] trading days since that announcement (large before the first)
    leaders: np.ndarray  # [K, 2] sector indices that lead each sector
    link: np.ndarray  # [S] the linked stock of each stock
    market_vol: float  # the market's recent daily volatility
    strength: dict[str, float]  # each effect's slowly wandering strength


def effect_scores(x: EffectInputs) -> dict[str, np.ndarray]:
    """Every effect's standardised cross-sectional score on day t: name -> [S]."""
    lp, pub, sec = x.lp, x.published, x.sector
    n_sec = len(x.leaders)
    ret5 = lp[-1] - lp[-6]
    sec5 = _sector_mean(ret5, sec, pub, n_sec)
    sec126 = _sector_mean(lp[-1] - lp[-127], sec, pub, n_sec)
    raw = {
        # Low-volume moves reverse more than high-volume ones.
        "reversal": -(ret5 - sec5[sec]) * (1.0 - 0.5 * np.tanh(x.abnormal_volume)),
        "momentum": lp[-22] - lp[-253],
        "sector_momentum": sec126[sec],
        "sector_lead_lag": sec5[x.leaders].mean(axis=1)[sec],
        "linked_momentum": (lp[-1] - lp[-21])[x.link],
        "abnormal_volume": x.abnormal_volume,
        "earnings_drift": np.where(x.days_since_event < DRIFT_WINDOW,
                                   x.surprise * np.exp(-x.days_since_event / DRIFT_DAYS), 0.0),
        "low_volatility": -np.log(np.maximum(x.vol60, 1e-4)),
        "high_52w": lp[-1] - lp[-252:].max(axis=0),
    }
    return {k: _zscore(np.where(x.age >= NEED[k], v, np.nan), pub) for k, v in raw.items()}


def expected_return(x: EffectInputs, market_12m: float) -> np.ndarray:
    """mu_t [S]: ALPHA times the standardised, strength-weighted sum of the effects."""
    g = effect_scores(x)
    regime = {"momentum": -0.5 if market_12m < BEAR_MARKET else 1.0,
              "reversal": float(np.clip(x.market_vol / NORMAL_MARKET_VOL, 0.5, 2.0))}
    score = sum(np.sqrt(SHARES[k]) * x.strength[k] * regime.get(k, 1.0) * g[k] for k in SHARES)
    return ALPHA * _zscore(score, x.published)


def _sector_mean(v: np.ndarray, sector: np.ndarray, published: np.ndarray, n_sec: int) -> np.ndarray:
    """[K] mean of v over each sector's published names (0 for a sector with none today)."""
    cnt = np.bincount(sector[published], minlength=n_sec)
    tot = np.bincount(sector[published], weights=v[published], minlength=n_sec)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)


def _zscore(v: np.ndarray, published: np.ndarray) -> np.ndarray:
    """Standardised over the published finite names, clipped at +-4; everything else 0."""
    ok = published & np.isfinite(v)
    if ok.sum() < 2:
        return np.zeros_like(v)
    m, s = v[ok].mean(), v[ok].std()
    z = np.clip((v - m) / (s if s > 0 else 1.0), -4.0, 4.0)
    return np.where(ok, z, 0.0)
