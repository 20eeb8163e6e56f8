"""The general-by-construction blocks: long-history block means (no look-ahead), FAN that normalises,
graph edges over the long history; their shapes, gradients and what each may read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atft_core.config import ModelConfig
from atft_core.model import ATFTGATFAN
from atft_core.model.fan import FrequencyAdaptiveNorm, RemovedForecaster
from atft_core.train.long_history import BlockHistory


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _grid(days: int = 70, stocks: int = 5, feats: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(days, stocks, feats)).astype(np.float32)
    valid = rng.random((days, stocks)) > 0.1
    valid[:30, 4] = False  # stock 4 lists on day 30
    x[~valid] = np.nan
    x[10, 1, 2] = np.nan  # a valid row with a missing value
    return x, valid


def _naive(x: np.ndarray, valid: np.ndarray, t: int, s: int, blocks: int, b: int) -> np.ndarray:
    out = np.zeros((blocks, x.shape[2] + 1))
    for j in range(blocks):
        lo, hi = max(0, t - (j + 1) * b + 1), t - j * b
        rows = [u for u in range(lo, hi + 1) if u >= 0 and valid[u, s]]
        if rows:
            vals = np.where(np.isfinite(x[rows, s]), x[rows, s], 0.0)
            out[j, :-1] = vals.sum(0) / len(rows)
        out[j, -1] = len(rows) / b
    return out


def test_block_history_equals_the_plain_means_and_reads_no_later_day() -> None:
    x, valid = _grid()
    hist = BlockHistory(x, valid, blocks=4, block_days=10)
    rows = torch.tensor([69, 45, 12, 35, 5])
    stock = torch.tensor([0, 1, 2, 4, 3])
    got = hist.gather(rows, stock)
    assert got.shape == (5, 4, 4) and got.dtype == torch.float32
    for i in range(5):
        want = _naive(x, valid, int(rows[i]), int(stock[i]), 4, 10)
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-5)
    # young listing: blocks before its first day are empty (count 0, mean 0)
    assert got[3, 1:, -1].eq(0).all() and got[3, 1:, :-1].eq(0).all() and got[3, 0, -1] > 0
    # no look-ahead: rewriting every day after t changes nothing at t
    later = x.copy()
    later[46:] = 99.0
    v2 = valid.copy()
    v2[46:] = True
    again = BlockHistory(later, v2, blocks=4, block_days=10).gather(torch.tensor([45]), torch.tensor([1]))
    assert torch.equal(again, got[1:2])


def _batch(days: int, stocks: int, length: int, feats: int):
    x = torch.randn(days * stocks, length, feats)
    static = torch.stack((torch.randint(0, 3, (days * stocks,)), torch.randint(0, 4, (days * stocks,))), dim=1)
    day_id = torch.arange(days).repeat_interleave(stocks)
    return x, static, day_id


def test_long_history_enters_the_encoding_and_learns() -> None:
    cfg = ModelConfig(long_blocks=3, long_block_days=5, piecewise_edges=(), dropout=0.0)
    model = ATFTGATFAN(6, (1, 5), cfg)
    x, static, day_id = _batch(2, 12, 8, 6)
    x_long = torch.randn(24, 3, 7)
    out = model(x, static, day_id, x_long)
    assert out.pred.shape == (24, 2)
    out.pred.pow(2).mean().backward()
    assert model.long_history is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.long_history.parameters())
    model.eval()
    moved = x_long.clone()
    moved[:, 2] += 3.0  # the oldest block changes the forecast
    assert not torch.allclose(model(x, static, day_id, x_long).pred, model(x, static, day_id, moved).pred)
    with pytest.raises(ValueError, match="x_long"):
        model(x, static, day_id)


def test_fan_normalise_reads_the_residual_and_a_forecast_of_what_it_removed() -> None:
    cfg = ModelConfig(fan_mode="normalise", piecewise_edges=(), dropout=0.0)
    model = ATFTGATFAN(5, (1,), cfg)
    x, static, day_id = _batch(2, 10, 12, 5)
    out = model(x, static, day_id)
    assert out.pred.shape == (20, 1) and out.aux_loss.dim() == 0 and out.aux_loss > 0
    (out.pred.pow(2).mean() + out.aux_loss).backward()
    assert model.forecaster is not None
    assert all(p.grad is not None for p in model.forecaster.parameters())
    # the VSN's streams are the residual and its sector deviation: the removed part is not among them
    model.eval()
    residual, _ = FrequencyAdaptiveNorm(5, cfg.fan_k, 4).decompose(x)
    seen: list[torch.Tensor] = []
    model.vsn.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    model(x, static, day_id)
    assert seen[-1].shape == (20, 12, 5, 2)
    torch.testing.assert_close(seen[-1][..., 0], residual)


def test_removed_forecaster_reads_the_past_only() -> None:
    fc = RemovedForecaster(3, 8, context=4)
    removed = torch.randn(6, 10, 3)
    forecast, inside = fc(removed)
    assert forecast.shape == (6, 3) and inside.shape == (6, 3)
    changed = removed.clone()
    changed[:, -1] += 10.0  # the last day: the in-window prediction of it must not read it
    _, inside2 = fc(changed)
    assert torch.equal(inside, inside2)
    forecast2, _ = fc(changed)
    assert not torch.allclose(forecast, forecast2)
    short = fc(torch.randn(2, 2, 3))  # shorter than the context: padded, still the right shape
    assert short[0].shape == (2, 3)


def test_graph_over_the_long_history_links_stocks_by_months_of_co_movement() -> None:
    cfg = ModelConfig(long_blocks=6, long_block_days=20, graph_history="long", graph_topk=1,
                      graph_sector_edges=0, piecewise_edges=())
    model = ATFTGATFAN(2, (1,), cfg)
    x, static, day_id = _batch(1, 4, 5, 2)
    x[:, :, 0] = torch.randn(4, 5) * 1e-3  # the short window says nothing
    x_long = torch.zeros(4, 6, 3)
    trend = torch.randn(6)
    x_long[0, :, 0], x_long[3, :, 0] = trend, trend  # stocks 0 and 3 moved together for months
    x_long[1, :, 0], x_long[2, :, 0] = torch.randn(6), torch.randn(6)
    edge_index, keep = model.edges(x, static, day_id, x_long)
    pairs = {(int(s), int(d)) for s, d in edge_index[:, keep].T if s != d}
    assert (3, 0) in pairs and (0, 3) in pairs
    with pytest.raises(ValueError, match="long_blocks"):
        ATFTGATFAN(2, (1,), ModelConfig(graph_history="long"))
