"""The learning-rate schedule: linear warmup, cosine decay over the planned steps, times a scale.

The scale is what a plateau rewind lowers (`TrainConfig.plateau_lr_factor`). It is an attribute of
a callable object rather than a closure so that `LambdaLR.state_dict()` saves it with the
checkpoint and a resumed run continues at the rate it had reached.
"""

from __future__ import annotations

import math


class WarmupCosine:
    """``step -> multiplier of the base learning rate`` for `torch.optim.lr_scheduler.LambdaLR`."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup = max(1, int(warmup_steps))
        self.total = max(1, int(total_steps))
        self.scale = 1.0

    def __call__(self, step: int) -> float:
        ramp = min(1.0, (step + 1) / self.warmup)
        return self.scale * ramp * 0.5 * (1 + math.cos(math.pi * min(1.0, step / self.total)))
