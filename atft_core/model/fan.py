"""Frequency adaptive normalisation (FAN) of each stock's input window, and what it returns.

Shapes use the notation of `atft_core.model`. Under bf16 autocast the FFT runs in float32 (it has no bf16 kernel, and
the reconstruction identity ``residual + removed == x`` needs float32).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FANOutput", "FrequencyAdaptiveNorm"]


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
