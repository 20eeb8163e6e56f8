"""atft_core.train.loss: per-day multi-horizon loss."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from atft_core.config import LossConfig
from atft_core.evaluate.metrics import summarize
from atft_core.model import ModelOutput
from atft_core.train.loss import compute_loss

H2 = (1, 5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: on a shared 2-core machine intra-op threads only spin against other processes
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batch(days: int = 3, per_day: int = 100, H: int = 2, noise: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(days * per_day, H, generator=g)
    pred = y + noise * torch.randn(y.shape, generator=g)
    day_id = torch.arange(days).repeat_interleave(per_day) + 100  # any ids, not 0..G-1
    mask = torch.rand(y.shape, generator=g) > 0.1
    return pred, y, mask, day_id


def _loss(pred, y, mask, day_id, cfg=None, horizons=H2, **kw):
    out = ModelOutput(pred=pred, quantiles=kw.pop("quantiles", None), aux_loss=torch.zeros(()))
    return compute_loss(out, y, mask, day_id, cfg or LossConfig(), horizons, **kw)


def test_gradients_flow_and_are_finite_with_awkward_days():
    pred, y, mask, day_id = _batch()
    pred[day_id == 101] = 0.7  # a constant-prediction day
    mask[day_id == 102] = False
    mask[torch.nonzero(day_id == 102)[0, 0]] = True  # a day with a single valid name
    y[~mask] = float("nan")  # missing targets arrive as NaN
    pred.requires_grad_()
    q = torch.randn(pred.shape[0], 2, 3, requires_grad=True)
    loss, parts = _loss(pred, y, mask, day_id, quantiles=q, quantile_levels=(0.1, 0.5, 0.9))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert set(parts) == {"huber", "pinball", "ic", "rankic_sur", "sharpe", "total", "n_days"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
    assert parts["total"] == pytest.approx(loss.item())


def test_perfect_predictor_beats_reversed():
    _, y, mask, day_id = _batch()
    good, pg = _loss(y.clone(), y, mask, day_id)
    bad, pb = _loss(-y, y, mask, day_id)
    assert good < bad
    assert pg["ic"] == pytest.approx(1.0, abs=1e-4) and pb["ic"] == pytest.approx(-1.0, abs=1e-4)
    assert pg["rankic_sur"] > 0.95 and pb["rankic_sur"] < -0.95
    assert pg["sharpe"] > 0 > pb["sharpe"]


def test_zero_weights_give_pure_per_day_huber():
    pred, y, mask, day_id = _batch(days=2)
    cfg = LossConfig(rankic_weight=0.0, cs_ic_weight=0.0, sharpe_weight=0.0, huber_delta=0.3,
                     shortest_horizon_weight=1.0)
    loss, _ = _loss(pred, y, mask, day_id, cfg)
    per_h = []
    for h in range(2):
        per_day = [F.huber_loss(pred[(day_id == d) & mask[:, h], h], y[(day_id == d) & mask[:, h], h],
                                delta=0.3) for d in (100, 101)]
        per_h.append(sum(per_day) / 2)
    assert loss.item() == pytest.approx(float(sum(per_h) / 2), rel=1e-6)


def test_two_day_batch_is_mean_of_one_day_batches():
    pred, y, mask, day_id = _batch(days=2, per_day=150)
    q = torch.randn(pred.shape[0], 2, 2)
    kw = {"quantiles": q, "quantile_levels": (0.25, 0.75)}
    perm = torch.randperm(pred.shape[0], generator=torch.Generator().manual_seed(1))  # days interleaved
    both, parts2 = _loss(pred[perm], y[perm], mask[perm], day_id[perm], quantiles=q[perm],
                         quantile_levels=(0.25, 0.75))
    ones = [_loss(pred[day_id == d], y[day_id == d], mask[day_id == d], day_id[day_id == d],
                  quantiles=q[day_id == d], quantile_levels=kw["quantile_levels"]) for d in (100, 101)]
    assert both.item() == pytest.approx((ones[0][0].item() + ones[1][0].item()) / 2, rel=1e-5)
    for k in ("huber", "pinball", "ic", "rankic_sur", "sharpe"):
        assert parts2[k] == pytest.approx((ones[0][1][k] + ones[1][1][k]) / 2, rel=1e-5, abs=1e-6)


def test_day_with_too_few_names_is_skipped():
    pred, y, mask, day_id = _batch(days=2)
    base, _ = _loss(pred, y, mask, day_id)
    extra = torch.tensor([[0.3, -0.2]])
    with_tiny_day, parts = _loss(torch.cat([pred, extra]), torch.cat([y, extra]),
                                 torch.cat([mask, torch.ones(1, 2, dtype=torch.bool)]),
                                 torch.cat([day_id, torch.tensor([7])]))
    assert with_tiny_day.item() == pytest.approx(base.item(), rel=1e-6)
    assert parts["n_days"] == 3.0


def test_correlation_terms_are_scale_free():
    pred, y, mask, day_id = _batch()
    _, a = _loss(pred, y, mask, day_id)
    _, b = _loss(pred * 40.0 + 3.0, y, mask, day_id)
    for k in ("ic", "rankic_sur", "sharpe"):
        assert a[k] == pytest.approx(b[k], abs=1e-4)


def _surrogate(pred: torch.Tensor, y: torch.Tensor) -> float:
    S = pred.shape[0]
    return _loss(pred[:, None], y[:, None], torch.ones(S, 1, dtype=torch.bool), torch.zeros(S, dtype=torch.long),
                 horizons=(1,))[1]["rankic_sur"]


def test_rankic_surrogate_tracks_spearman():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(400, generator=g)
    noise = torch.randn(400, generator=g)
    rho, sur = [], []
    for a in (-1.0, -0.5, 0.0, 0.3, 0.6, 1.0, 2.0, 5.0):
        pred = a * y + noise
        rho.append(stats.spearmanr(pred.numpy(), y.numpy())[0])
        sur.append(_surrogate(pred, y))
    assert np.all(np.diff(rho) > 0)
    assert np.all(np.diff(sur) > 0), (rho, sur)
    assert np.max(np.abs(np.array(sur) - np.array(rho))) < 0.05
    # rank-based on the prediction side: a monotone, outlier-making transform changes nothing much,
    # where a Pearson IC would collapse
    pred = 2.0 * y + noise
    skewed = torch.exp(3.0 * pred)
    assert _surrogate(skewed, y) == pytest.approx(_surrogate(pred, y), abs=0.03)
    assert stats.pearsonr(skewed.numpy(), y.numpy())[0] < 0.5 * _surrogate(skewed, y)


def test_full_cross_section_runs_on_cpu():
    pred, y, mask, day_id = _batch(days=2, per_day=4000, H=4, noise=3.0)
    pred.requires_grad_()
    loss, parts = _loss(pred, y, mask, day_id, horizons=(1, 5, 10, 20),
                        quantiles=torch.randn(8000, 4, 5), quantile_levels=(0.1, 0.25, 0.5, 0.75, 0.9))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert 0.1 < parts["rankic_sur"] < 0.5


def test_horizon_weights():
    pred, y, mask, day_id = _batch()
    only_first, _ = _loss(pred, y, mask, day_id, LossConfig(horizon_weights={1: 1.0, 5: 0.0}))
    single, _ = _loss(pred[:, :1], y[:, :1], mask[:, :1], day_id, horizons=(1,))
    assert only_first.item() == pytest.approx(single.item(), rel=1e-6)
    with pytest.raises(ValueError, match="horizon"):
        _loss(pred, y, mask, day_id, LossConfig(horizon_weights={10: 1.0}))


def test_non_finite_prediction_is_not_hidden():
    pred, y, mask, day_id = _batch()
    pred[0, 0] = float("nan")
    loss, _ = _loss(pred, y, mask, day_id)
    assert not torch.isfinite(loss)


def test_shape_errors_are_explicit():
    pred, y, mask, day_id = _batch()
    with pytest.raises(ValueError, match="shape"):
        _loss(pred, y[:, :1], mask, day_id)
    with pytest.raises(ValueError, match="quantile"):
        _loss(pred, y, mask, day_id, quantiles=torch.zeros(pred.shape[0], 2, 3))


def test_loss_falls_when_training_a_linear_model():
    torch.manual_seed(0)
    days, per_day, n_feat = 5, 200, 8
    x = torch.randn(days * per_day, n_feat)
    w_true = torch.randn(n_feat, 2)
    y = x @ w_true + 1.0 * torch.randn(days * per_day, 2)
    day_id = torch.arange(days).repeat_interleave(per_day)
    y = y.view(days, per_day, 2)
    y = ((y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True)).view(-1, 2)  # cross-sectional z-score
    mask = torch.ones_like(y, dtype=torch.bool)
    model = torch.nn.Linear(n_feat, 2)
    with torch.no_grad():
        model.weight.mul_(0.01)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    cfg = dataclasses.replace(LossConfig())
    losses = []
    for _ in range(200):
        loss, _ = _loss(model(x), y, mask, day_id, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    with torch.no_grad():
        pred = model(x).view(days, per_day, 2)
    s = summarize(pred[:, :, 0].numpy(), y.view(days, per_day, 2)[:, :, 0].numpy(), min_stocks=20)
    assert s.rankic > 0.5
