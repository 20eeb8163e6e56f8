"""An exponential moving average of the model's weights, the copy that validation, test and checkpoints use.

Why: daily cross-sectional returns are mostly noise, so the weights after any one step carry that
step's noise; the validation curve of the plain weights peaks after 1-3 epochs and then falls. An
average over the last few hundred steps keeps what the steps agree on. The default decay is chosen
on demo seed 0's validation days (the only seed defaults are chosen on); `bench/signal.py` measures it.

Updating is in-place tensor arithmetic on the device with a decay computed on the host from the
step count, so it adds no host-device sync to a training step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``average = decay_t * average + (1 - decay_t) * weights`` after every optimiser step.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` (t = updates so far): early on the average follows
    the weights closely instead of dragging the random initialisation along.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) to average, got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        self.updates += 1
        for avg, w in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(w.detach(), 1.0 - d)
        for avg, b in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(b)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start again from `model`'s weights (after loading a checkpoint)."""
        self.model.load_state_dict(model.state_dict())
        self.updates = 0

    def state(self) -> dict:
        """A copy of the average and its update count (for `load`)."""
        return {"weights": {k: v.clone() for k, v in self.model.state_dict().items()}, "updates": self.updates}

    @torch.no_grad()
    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
