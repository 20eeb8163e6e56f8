"""Evaluation summaries of a prediction grid: IC / RankIC means and IRs, long-short mean and Sharpe.

The per-day numbers come from `atft_core.ic` (the one definition of IC, RankIC and long-short);
here they are summarised over days: means over the days where a metric is defined; IR = mean / std
(ddof=1, not annualised); long-short Sharpe = mean / std * sqrt(252).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from atft_core.ic import check_quantile, daily_metrics

TRADING_DAYS_PER_YEAR = 252


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _ratio(x: np.ndarray, scale: float = 1.0) -> float:
    """mean / std (ddof=1) over finite entries; NaN with fewer than 2 days or zero dispersion."""
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan")
    sd = float(x.std(ddof=1))
    if not sd > 0.0:
        return float("nan")
    return float(x.mean()) / sd * scale


@dataclass
class SignalMetrics:
    """Summary of a prediction grid against its targets (means over valid days)."""

    ic: float
    ic_ir: float
    rankic: float
    rankic_ir: float
    ls_mean: float
    ls_sharpe: float  # annualised: mean / std * sqrt(252)
    n_days: int  # days with a defined RankIC

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe dict: NaN becomes None (JSON has no NaN)."""
        out: dict[str, float | int | None] = {}
        for k, v in asdict(self).items():
            out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out


def summarize(
    pred: np.ndarray, target: np.ndarray, min_stocks: int = 20, quantile: float = 0.1
) -> SignalMetrics:
    """IC / RankIC means and IRs plus long-short mean and Sharpe of a [D, S] prediction grid."""
    check_quantile(quantile)
    ic, rankic, ls = daily_metrics(pred, target, min_stocks, quantile)
    return SignalMetrics(
        ic=_mean(ic),
        ic_ir=_ratio(ic),
        rankic=_mean(rankic),
        rankic_ir=_ratio(rankic),
        ls_mean=_mean(ls),
        ls_sharpe=_ratio(ls, math.sqrt(TRADING_DAYS_PER_YEAR)),
        n_days=int(np.isfinite(rankic).sum()),
    )


def summarize_horizons(
    pred: np.ndarray,
    target: np.ndarray,
    horizons: Sequence[int],
    min_stocks: int = 20,
    quantile: float = 0.1,
) -> dict[int, SignalMetrics]:
    """`summarize` per horizon. pred, target: [D, S, H] with H == len(horizons)."""
    p = np.asarray(pred)
    t = np.asarray(target)
    if p.ndim != 3 or p.shape != t.shape or p.shape[2] != len(horizons):
        raise ValueError(
            f"pred {p.shape} and target {t.shape} must both be [days, stocks, {len(horizons)}] "
            f"for horizons {tuple(horizons)}"
        )
    return {int(h): summarize(p[:, :, k], t[:, :, k], min_stocks, quantile) for k, h in enumerate(horizons)}
