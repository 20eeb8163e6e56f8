"""The price market's feature pipeline: statistics of each stock's own history, as a data vendor's
pipeline computes them (the Alpha158 / gogooku3 kind), plus three market-level series.

Every value for day t reads rows up to t only; a value whose window reaches before the stock's
listing is NaN (a new listing has no history). The latent prices of a halted day are used as they
are (a vendor fills them), so a window never skips a day.

Families (the default 40, in `CORE` order: a prefix of it is a smaller pipeline):
returns over 1-250 days and 12-1 month momentum; close over its moving averages; daily return
volatility, its short/long ratio, 60-day beta to the market and residual volatility; distance to the
52-week high and low; high-low range, close location in the day's range, overnight gap; turnover,
volume ratios and z-score; Amihud illiquidity; RSI; the largest daily return of the month and the
return skew; the last earnings surprise and the days since it (a statements feed); the market's
return over 1 and 20 days and its volatility (the same for every stock on a day). More than 40
features adds the same families over other windows (`EXTRA_WINDOWS`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from atft_core.data.demo.prices import PriceHistory

LOOKBACK = 252  # rows before a day that the longest window reads
MIN_FEATURES = 8

CORE = ("returns_1d", "returns_5d", "returns_20d", "mom_12_1", "volatility_20d", "ma_gap_20d",
        "volume_ratio_5_20", "log_turnover", "high_52w", "earn_surprise", "days_since_earn",
        "resid_vol_60d", "hl_range_20d", "returns_60d", "mkt_return_1d", "mkt_return_20d",
        "returns_2d", "returns_3d", "returns_10d", "returns_120d", "returns_250d",
        "ma_gap_5d", "ma_gap_10d", "ma_gap_60d", "ma_gap_120d",
        "volatility_5d", "volatility_60d", "vol_ratio_5_20", "beta_60d", "low_52w",
        "hl_range_1d", "close_loc_1d", "gap_1d", "volume_z_20d", "volume_ratio_1_60",
        "amihud_20d", "rsi_14d", "max_return_20d", "skew_20d", "mkt_vol_20d")
MARKET_FEATURES = ("mkt_return_1d", "mkt_return_20d", "mkt_vol_20d")
_FIRST_EXTRA = (3, 4, 7, 15, 30, 40, 90, 180, 25, 50, 80, 100, 150, 200)
EXTRA_WINDOWS = _FIRST_EXTRA + tuple(w for w in range(6, 251) if w not in _FIRST_EXTRA)
EXTRA_FAMILIES = ("returns_{w}d", "ma_gap_{w}d", "volatility_{w}d", "volume_ratio_1_{w}")


def feature_names(n: int) -> list[str]:
    """The first n features of the pipeline: `CORE`, then its families over `EXTRA_WINDOWS`."""
    if n < MIN_FEATURES:
        raise ValueError(f"features={n}: the price market needs at least {MIN_FEATURES}")
    names = list(CORE[:n])
    extra = (fam.format(w=w) for w in EXTRA_WINDOWS for fam in EXTRA_FAMILIES)
    for name in extra:
        if len(names) >= n:
            break
        if name not in names:
            names.append(name)
    if len(names) < n:
        raise ValueError(f"features={n}: the price market's pipeline has at most {len(names)}")
    return names


class _Rows:
    """The history rows [k0 - LOOKBACK, k1) of one chunk; `out` keeps the chunk's own rows."""

    def __init__(self, h: PriceHistory, k0: int, k1: int):
        lo = k0 - LOOKBACK
        self.c = k1 - k0
        self.lc = h.log_close[lo:k1]
        self.price = np.exp(self.lc)
        self.ret = np.vstack([np.full((1, self.lc.shape[1]), np.nan), self.price[1:] / self.price[:-1] - 1.0])
        self.lv = h.log_volume[lo:k1]
        self.pub = h.published[lo:k1]
        self.h, self.k0, self.k1, self.lo = h, k0, k1, lo
        self._mkt: np.ndarray | None = None

    def out(self, a: np.ndarray) -> np.ndarray:
        return a[-self.c:]

    def lag(self, a: np.ndarray, w: int) -> np.ndarray:
        return a[len(a) - self.c - w:len(a) - w]

    def mean(self, a: np.ndarray, w: int) -> np.ndarray:
        """Trailing w-row mean for the chunk's rows."""
        cs = np.cumsum(np.vstack([np.zeros((1, a.shape[1])), a]), axis=0)
        return (cs[-self.c:] - cs[len(cs) - self.c - w:len(cs) - w]) / w

    def std(self, a: np.ndarray, w: int) -> np.ndarray:
        m = self.mean(a, w)
        return np.sqrt(np.maximum(self.mean(a * a, w) - m * m, 0.0) * w / (w - 1))

    def window(self, a: np.ndarray, w: int) -> np.ndarray:
        """[c, S, w] views of the trailing w rows of each chunk row."""
        v = np.lib.stride_tricks.sliding_window_view(a, w, axis=0)
        return v[-self.c:]

    @property
    def market(self) -> np.ndarray:
        """[rows] equal-weighted mean daily return of the published names."""
        if self._mkt is None:
            ok = self.pub & np.isfinite(self.ret)
            cnt = ok.sum(axis=1)
            self._mkt = np.where(cnt > 0, np.where(ok, self.ret, 0.0).sum(axis=1) / np.maximum(cnt, 1), 0.0)
        return self._mkt


def _ret(w: int) -> Callable[[_Rows], np.ndarray]:
    return lambda r: r.out(r.price) / r.lag(r.price, w) - 1.0


def _ma_gap(w: int) -> Callable[[_Rows], np.ndarray]:
    return lambda r: r.out(r.price) / r.mean(r.price, w) - 1.0


def _vol(w: int) -> Callable[[_Rows], np.ndarray]:
    return lambda r: r.std(np.nan_to_num(r.ret), w)


def _volume_ratio(short: int, long: int) -> Callable[[_Rows], np.ndarray]:
    return lambda r: r.mean(r.lv, short) - r.mean(r.lv, long)


def _beta_resid(r: _Rows, want_beta: bool) -> np.ndarray:
    x = np.nan_to_num(r.ret)
    m = np.broadcast_to(r.market[:, None], x.shape)
    mx, mm = r.mean(x, 60), r.mean(m, 60)
    cov = r.mean(x * m, 60) - mx * mm
    var_m = np.maximum(r.mean(m * m, 60) - mm * mm, 1e-12)
    beta = cov / var_m
    if want_beta:
        return beta
    var_x = np.maximum(r.mean(x * x, 60) - mx * mx, 0.0)
    return np.sqrt(np.maximum(var_x - beta * beta * var_m, 0.0))


def _range(r: _Rows) -> np.ndarray:
    h = r.h
    return np.exp(h.log_high[r.lo:r.k1] - h.log_low[r.lo:r.k1]) - 1.0


def _close_loc(r: _Rows) -> np.ndarray:
    h, k0, k1 = r.h, r.k0, r.k1
    hi, lo, cl = h.log_high[k0:k1], h.log_low[k0:k1], h.log_close[k0:k1]
    return (cl - lo) / np.maximum(hi - lo, 1e-9)


def _rsi(r: _Rows) -> np.ndarray:
    x = np.nan_to_num(r.ret)
    up, down = r.mean(np.maximum(x, 0.0), 14), r.mean(np.maximum(-x, 0.0), 14)
    return up / np.maximum(up + down, 1e-12)


def _skew(r: _Rows) -> np.ndarray:
    win = r.window(np.nan_to_num(r.ret), 20)
    d = win - win.mean(axis=-1, keepdims=True)
    return (d**3).mean(axis=-1) / np.maximum((d**2).mean(axis=-1), 1e-12) ** 1.5


def _amihud(r: _Rows) -> np.ndarray:
    dollar = np.exp(r.lv) * r.price
    return np.log(r.mean(np.abs(np.nan_to_num(r.ret)) / dollar, 20) * 1e9 + 1e-6)


def _market(r: _Rows, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.broadcast_to(f(r.market)[:, None], (r.c, r.lc.shape[1]))


def _mkt_mean(r: _Rows, w: int) -> np.ndarray:
    return r.mean(r.market[:, None], w)[:, 0]


# name -> (history days needed, function of the chunk's rows returning [c, S])
SPECS: dict[str, tuple[int, Callable[[_Rows], np.ndarray]]] = {
    "returns_1d": (1, _ret(1)), "returns_2d": (2, _ret(2)), "returns_3d": (3, _ret(3)),
    "returns_5d": (5, _ret(5)), "returns_10d": (10, _ret(10)), "returns_20d": (20, _ret(20)),
    "returns_60d": (60, _ret(60)), "returns_120d": (120, _ret(120)), "returns_250d": (250, _ret(250)),
    "mom_12_1": (250, lambda r: r.lag(r.price, 20) / r.lag(r.price, 250) - 1.0),
    "ma_gap_5d": (4, _ma_gap(5)), "ma_gap_10d": (9, _ma_gap(10)), "ma_gap_20d": (19, _ma_gap(20)),
    "ma_gap_60d": (59, _ma_gap(60)), "ma_gap_120d": (119, _ma_gap(120)),
    "volatility_5d": (5, _vol(5)), "volatility_20d": (20, _vol(20)), "volatility_60d": (60, _vol(60)),
    "vol_ratio_5_20": (20, lambda r: _vol(5)(r) / np.maximum(_vol(20)(r), 1e-6)),
    "beta_60d": (60, lambda r: _beta_resid(r, True)), "resid_vol_60d": (60, lambda r: _beta_resid(r, False)),
    "high_52w": (251, lambda r: r.out(r.price) / r.window(r.price, 252).max(axis=-1) - 1.0),
    "low_52w": (251, lambda r: r.out(r.price) / r.window(r.price, 252).min(axis=-1) - 1.0),
    "hl_range_1d": (0, lambda r: r.out(_range(r))), "hl_range_20d": (19, lambda r: r.mean(_range(r), 20)),
    "close_loc_1d": (0, _close_loc),
    "gap_1d": (1, lambda r: np.exp(r.h.log_open[r.k0:r.k1] - r.lag(r.lc, 1)) - 1.0),
    "log_turnover": (0, lambda r: r.out(r.lv) - r.h.static.log_shares[None, :]),
    "volume_ratio_5_20": (19, _volume_ratio(5, 20)), "volume_ratio_1_60": (59, _volume_ratio(1, 60)),
    "volume_z_20d": (19, lambda r: (r.out(r.lv) - r.mean(r.lv, 20)) / np.maximum(r.std(r.lv, 20), 1e-6)),
    "amihud_20d": (20, _amihud), "rsi_14d": (14, _rsi),
    "max_return_20d": (20, lambda r: np.nan_to_num(r.window(r.ret, 20), nan=-1.0).max(axis=-1)),
    "skew_20d": (20, _skew),
    "earn_surprise": (0, lambda r: r.h.surprise[r.k0:r.k1]),
    "days_since_earn": (0, lambda r: r.h.days_since_event[r.k0:r.k1]),
    "mkt_return_1d": (0, lambda r: _market(r, lambda m: m[-r.c:])),
    "mkt_return_20d": (0, lambda r: _market(r, lambda m: _mkt_mean(r, 20) * 20)),
    "mkt_vol_20d": (0, lambda r: _market(r, lambda m: r.std(m[:, None], 20)[:, 0])),
}
for _w in EXTRA_WINDOWS:
    SPECS.setdefault(f"returns_{_w}d", (_w, _ret(_w)))
    SPECS.setdefault(f"ma_gap_{_w}d", (_w - 1, _ma_gap(_w)))
    SPECS.setdefault(f"volatility_{_w}d", (_w, _vol(_w)))
    SPECS.setdefault(f"volume_ratio_1_{_w}", (_w - 1, _volume_ratio(1, _w)))


def compute_features(h: PriceHistory, k0: int, k1: int, names: list[str]) -> np.ndarray:
    """Features [F, k1 - k0, S] float32 of history rows [k0, k1) (k0 >= LOOKBACK); NaN = not yet known."""
    if k0 < LOOKBACK:
        raise ValueError(f"features need {LOOKBACK} rows of history before row {k0}")
    rows = _Rows(h, k0, k1)
    age = h.age[k0:k1]
    out = np.empty((len(names), k1 - k0, h.log_close.shape[1]), dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, name in enumerate(names):
            need, fn = SPECS[name]
            val = fn(rows)
            # A window reaching before the listing has no data; market series are the market's.
            out[j] = val if name in MARKET_FEATURES else np.where(age >= need, val, np.nan)
    return out
