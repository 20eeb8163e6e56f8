"""The one predict contract for everything that ranks stocks: the model, the ridge, the peer, the oracle.

Like qlib's ``Model.fit(dataset)`` / ``predict(dataset, segment)``: settings go to the constructor,
data only to `fit` and `predict`, and every predictor answers the same question on the same data
object. Shapes use the letters of `atft_core.model`: D days asked for, S stocks of the cache,
H horizons of the cache (``cache.horizons``, in that order).

Who satisfies it:
    `atft_core.train.predictor.ModelPredictor`  ATFT-GAT-FAN (trained by `fit`, or `load_model(checkpoint)`)
    `atft_core.evaluate.baselines.RidgeModel`   ridge on the last day's features, every horizon
    `atft_core.evaluate.peer.PeerModel`         LightGBM on Alpha158-style features (1st horizon by default)
    `atft_core.evaluate.baselines.DemoOracle`   the demo's planted expected return (demo panels only)
and `score_predictions` scores any of their grids with the one metric definition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from atft_core.evaluate.metrics import summarize_horizons

if TYPE_CHECKING:
    from atft_core.data.cache.store import Cache
    from atft_core.data.split import Split


@runtime_checkable
class Predictor(Protocol):
    """Fit on a walk-forward split of a cache, then score (day, stock) cells for every horizon."""

    def fit(self, cache: Cache, split: Split) -> Predictor:
        """Learn from ``split.train`` (``split.val`` may pick an epoch or stop early); returns self."""
        ...

    def predict(self, cache: Cache, days: np.ndarray) -> np.ndarray:
        """``[len(days), S, H]`` scores of each stock on each of `days` (cache day indices), per horizon.

        Higher means a higher expected return. NaN where the stock had no row that day (``cache.valid``
        is False), and in every cell of a horizon the predictor does not model (its docstring says which).
        Only day t's data and earlier days' enter the score of day t.
        """
        ...


def score_predictions(cache: Cache, days: np.ndarray, pred: np.ndarray, min_stocks: int = 20,
                      quantile: float = 0.1) -> dict[int, dict[str, Any]]:
    """Signal metrics per horizon of a ``[len(days), S, H]`` grid against the cache's raw forward returns.

    ``{horizon: metrics.summarize(...).to_dict()}``: a horizon that is all NaN scores None throughout.
    """
    days = np.asarray(days, dtype=np.int64)
    target = np.where(cache.valid[days][:, :, None], cache.y[days], np.nan)
    per_h = summarize_horizons(pred, target, cache.horizons, min_stocks=min_stocks, quantile=quantile)
    return {h: m.to_dict() for h, m in per_h.items()}
