"""Frequency adaptive normalisation (FAN) of each stock's input window, and what it returns.

Shapes use the notation of `atft_core.model`. Under bf16 autocast the FFT runs in float32 (it has no bf16 kernel, and
the reconstruction identity ``residual + removed == x`` needs float32).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FAN_MODES", "FANOutput", "FrequencyAdaptiveNorm", "RemovedForecaster"]

FAN_MODES = ("streams", "normalise")


class FANOutput(NamedTuple):
    """What `FrequencyAdaptiveNorm` returns; every tensor is float32 ``[S, L, F]``."""

    residual: Tensor  # x minus its top-K rFFT components: the stationary part the encoder reads
    removed: Tensor  # the top-K components themselves (residual + removed == x)
    removed_hat: Tensor  # the predictor's estimate of `removed` from `residual`

    def channels(self) -> Tensor:
        """Per-feature input streams for the VSN: ``[S, L, F, 3]`` = (residual, removed, removed_hat)."""
        return torch.stack((self.residual, self.removed, self.removed_hat), dim=-1)

    def aux_loss(self) -> Tensor:
        """Scalar MSE of the predicted against the actual removed part (trainer may add it)."""
        return F.mse_loss(self.removed_hat, self.removed)


class FrequencyAdaptiveNorm(nn.Module):
    """Frequency adaptive normalisation (FAN, Ye et al. 2024) of each stock's input window.

    Per stock and per feature, the window is taken to the frequency domain (rFFT over the L axis), the
    K bins with the largest magnitude are removed (the dominant, non-stationary part: level, trend,
    slow cycles) and transformed back, giving ``x = residual + removed`` exactly.

    Choice (documented because FAN was designed for forecasting, where the removed part's *future* is
    predicted and added to the output): here the model's output is not a time series, so nothing is
    added back to it. Instead the encoder reads three streams per feature (see `FANOutput.channels`):
    the residual, the removed part, and ``removed_hat`` = a small MLP's prediction of the removed
    part from the residual. Keeping the exact removed part as a stream means no information is lost
    (on cross-sectionally z-scored features the window level, often the top bin, carries most of
    the signal); the predicted stream lets the VSN weigh "how much of the slow component the fast
    component explains". `FANOutput.aux_loss` is the reconstruction loss that trains the predictor to
    put the removed part back; the model returns it as ``aux_loss`` and the predictor also learns
    through the main loss via its stream.

    The predictor is an MLP across features at each time step (F -> d_hidden -> F), so the block does
    not need to know the window length when it is built and costs O(S*L*F*d_hidden).

    Input ``x [S, L, F]``; output `FANOutput` of three float32 ``[S, L, F]`` tensors.

    ``fan_mode = "normalise"`` (`RemovedForecaster`) is the paper's way instead: the encoder reads
    the residual only, and the removed part reaches the model only through a forecast of it.
    """

    def __init__(self, n_features: int, k: int, d_hidden: int) -> None:
        super().__init__()
        self.k = int(k)
        self.predictor = nn.Sequential(
            nn.Linear(n_features, d_hidden), nn.GELU(), nn.Linear(d_hidden, n_features)
        )

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [S, L, F]`` -> (residual, removed), both float32 ``[S, L, F]``, residual + removed == x."""
        x = x.float()
        length = x.shape[1]
        n_bins = length // 2 + 1
        k = min(self.k, n_bins)
        if k <= 0:
            return x, torch.zeros_like(x)
        # FFT has no bf16 kernel and the reconstruction identity needs float32 anyway.
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.fft.rfft(x, dim=1)  # [S, n_bins, F] complex
            top = spec.abs().topk(k, dim=1).indices
            keep = torch.zeros(spec.shape, dtype=torch.bool, device=x.device).scatter_(1, top, True)
            removed = torch.fft.irfft(spec * keep, n=length, dim=1)
        # Subtracting (rather than a second irfft of the complement) makes the identity exact.
        return x - removed, removed

    def forward(self, x: Tensor) -> FANOutput:
        residual, removed = self.decompose(x)
        removed_hat = self.predictor(residual).float()
        return FANOutput(residual, removed, removed_hat)


class RemovedForecaster(nn.Module):
    """FAN's forecast of the removed (non-stationary) part, adapted to a ranking target.

    In the paper, the removed top-K frequency components are forecast over the output horizon by an
    MLP and added back to the forecast of the stationary residual. A ranking model has no output
    series to add them to, so here the forecast is of the removed part's *next* value per feature
    (where the stock's slow component is heading), and it enters the stock's encoding as one
    per-stock vector (a linear map ``[S, F] -> [S, D]`` that the model adds to the encoder's output).
    The encoder itself reads the residual only, so its input is stationary within the window, which
    is what FAN exists for: a level or trend that differs from stock to stock does not have to be
    learned away by the LSTM.

    The forecaster is one small MLP shared by every feature, over the last ``m`` values of that
    feature's removed part (``m = context``). It learns two ways: end to end through the ranking loss
    (via the forecast's vector), and by an auxiliary one-step-ahead loss *inside* the window: predict
    ``removed[L-1]`` from ``removed[L-1-m : L-1]``; at use it maps ``removed[L-m : L]`` to the next
    value. Both read days up to t only (the decomposition of day t's window uses days <= t). The
    in-window target is not a clean hold-out (the decomposition saw the whole window), so the
    auxiliary loss only shapes the forecaster; the ranking loss decides what it is worth.

    ``forward(removed [S, L, F])`` -> ``(forecast [S, F], aux [S, F])``: the next-value forecast and
    the in-window one-step prediction of ``removed[:, L-1]`` (for `aux_loss`). Needs L >= m + 1;
    shorter windows use what there is (left-padded with the first value).
    """

    def __init__(self, n_features: int, d_model: int, context: int = 4, d_hidden: int = 16) -> None:
        super().__init__()
        self.context = int(context)
        self.step = nn.Sequential(nn.Linear(self.context, d_hidden), nn.GELU(), nn.Linear(d_hidden, 1))
        self.embed = nn.Linear(n_features, d_model)

    def _next(self, past: Tensor) -> Tensor:
        """``past [S, m, F]`` -> ``[S, F]``: the next value of each feature; the last value is the skip."""
        return past[:, -1] + self.step(past.transpose(1, 2)).squeeze(-1)

    def _last(self, removed: Tensor, stop: int) -> Tensor:
        """The ``m`` values of ``removed [S, L, F]`` before index `stop`, left-padded: ``[S, m, F]``."""
        past = removed[:, max(0, stop - self.context):stop]
        if past.shape[1] < self.context:
            pad = past[:, :1].expand(-1, self.context - past.shape[1], -1)
            past = torch.cat((pad, past), dim=1)
        return past

    def forward(self, removed: Tensor) -> tuple[Tensor, Tensor]:
        length = removed.shape[1]
        forecast = self._next(self._last(removed, length))
        inside = self._next(self._last(removed, max(1, length - 1)))
        return forecast, inside

    def aux_loss(self, removed: Tensor, inside: Tensor) -> Tensor:
        """Scalar MSE of the in-window one-step prediction against ``removed[:, L-1]``."""
        return F.mse_loss(inside, removed[:, -1])
