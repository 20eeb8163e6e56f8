"""train.weight_average: the averaged copy follows the formula, and the trainer predicts with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atft_core.train.weight_average import WeightAverage


def test_average_follows_the_warmed_up_exponential_formula():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.9)
    expected = model.weight.detach().clone()
    for t in range(30):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        avg.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(avg.model.weight, expected)
    assert not avg.model.weight.requires_grad  # never trained directly
    assert not torch.equal(avg.model.weight, model.weight)


def test_reset_starts_from_the_given_weights_and_a_bad_decay_is_refused():
    model = nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.99)
    with torch.no_grad():
        model.weight.mul_(3)
    avg.reset(model)
    torch.testing.assert_close(avg.model.weight, model.weight)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, decay=1.0)
