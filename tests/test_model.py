"""ATFT-GAT-FAN: block shapes and gradients, FAN reconstruction, the sparse day graph, the full model.

Everything runs on CPU at small sizes; the S = 4,000 memory check uses only the graph parts.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from atft_core.config import ModelConfig
from atft_core.model import ATFTGATFAN, ModelOutput, build_model
from atft_core.model.atft_gat_fan import resolve_return_feature
from atft_core.model.fan import FrequencyAdaptiveNorm
from atft_core.model.gated import GLU, AddNorm, GatedResidualNetwork
from atft_core.model.graph import GraphAttentionLayer, build_edges, scatter_softmax
from atft_core.model.static import StaticCovariateEncoder
from atft_core.model.temporal import InterpretableMultiHeadAttention, TemporalFusionBlock
from atft_core.model.variable_selection import PiecewiseLinearEncoding, VariableSelectionNetwork


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # One intra-op thread: on a small shared CPU, two threads on these small ops spend most of their
    # time waiting for each other (measured 20x slower under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def assert_all_grads(module: nn.Module) -> None:
    """Every parameter received a finite, non-None gradient."""
    missing = [n for n, p in module.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in module.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


# ------------------------------------------------------------------------------------------------
# blocks
# ------------------------------------------------------------------------------------------------


def test_glu_addnorm_grn_shapes_and_grads() -> None:
    glu = GLU(6, 5)
    out = glu(torch.randn(3, 4, 6))
    assert out.shape == (3, 4, 5)
    out.sum().backward()
    assert_all_grads(glu)

    norm = AddNorm(5)
    out = norm(torch.randn(3, 5), torch.randn(3, 5))
    assert out.shape == (3, 5)
    (out * torch.randn(3, 5)).sum().backward()
    assert_all_grads(norm)

    grn = GatedResidualNetwork(6, 16, 8, dropout=0.1, d_context=4)
    out = grn(torch.randn(3, 7, 6), torch.randn(3, 1, 4))  # per-stock context over 7 steps
    assert out.shape == (3, 7, 8)
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(grn)
    # Without a context the same GRN still runs (the context projection just gets no gradient).
    assert GatedResidualNetwork(6, 16, 6)(torch.randn(2, 6)).shape == (2, 6)


def test_variable_selection_network() -> None:
    s, length, n_vars, d_model = 5, 7, 11, 16
    vsn = VariableSelectionNetwork(n_vars, 3, 4, d_model, dropout=0.1, d_context=d_model)
    out, weights = vsn(torch.randn(s, length, n_vars, 3), torch.randn(s, 1, d_model))
    assert out.shape == (s, length, d_model)
    assert weights.shape == (s, length, n_vars)
    torch.testing.assert_close(weights.sum(-1), torch.ones(s, length))
    sig = VariableSelectionNetwork(n_vars, 3, 4, d_model, gate="sigmoid")
    _, independent = sig(torch.randn(s, length, n_vars, 3))
    assert ((independent > 0) & (independent < 2)).all() and not torch.allclose(independent.sum(-1), torch.ones(1))
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(vsn)
    # Per-variable GRNs are stacked weights with a leading F axis, not one module per variable.
    assert vsn.w_in.shape == (n_vars, 3, 8) and vsn.w_hidden.shape == (n_vars, 4, 4)
    assert len(list(vsn.modules())) < 20


def _fit_sign_flip(gate: str) -> float:
    """Correlation of a VSN + linear read-out, trained on y = x * sign(g) from (x, g), with y."""
    torch.manual_seed(0)
    vsn = VariableSelectionNetwork(2, 1, 4, 8, gate=gate)
    head = nn.Linear(8, 1)
    params = [*vsn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    x = torch.randn(2048, 2, 1)
    y = x[:, 0, 0] * torch.sign(x[:, 1, 0])
    for _ in range(300):
        pred = head(vsn(x)[0])[:, 0]
        loss = F.mse_loss(pred, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = head(vsn(x)[0])[:, 0]
    return float(torch.corrcoef(torch.stack((pred, y)))[0, 1])


def test_signed_gate_forms_a_sign_flip_that_a_positive_gate_cannot() -> None:
    """Signed gates start neutral (weight 1), may go negative, and so learn x * sign(g).

    The mechanism the default relies on: after the VSN the model mixes variables linearly, so the
    product must come from the gate. A positive gate tops out near 0.71 (x (1 + c sign(g))), a little
    more with the GRN's bends.
    """
    vsn = VariableSelectionNetwork(5, 3, 4, 8, gate="signed")
    with torch.no_grad():
        vsn.selector.norm.norm.weight.zero_()  # the selector's output (its last layer norm) at 0: neutral logits
        vsn.selector.norm.norm.bias.zero_()
    _, weights = vsn(torch.randn(7, 5, 3))
    torch.testing.assert_close(weights, torch.ones(7, 5))
    signed, positive = _fit_sign_flip("signed"), _fit_sign_flip("sigmoid")
    assert signed > 0.95, signed
    assert positive < 0.8, positive
    with pytest.raises(ValueError, match="signed"):
        VariableSelectionNetwork(2, 1, 4, 8, gate="relu")


def test_vsn_batched_equals_per_variable_loop() -> None:
    """The batched einsum form computes what a loop of one small GRN per variable would."""
    n_vars, d = 6, 4
    vsn = VariableSelectionNetwork(n_vars, 3, d, 8).eval()
    x = torch.randn(9, n_vars, 3)
    out, weights = vsn(x)
    embs = []
    for f in range(n_vars):
        v = x[:, f]
        skip, h = (v @ vsn.w_in[f] + vsn.b_in[f]).split(d, dim=-1)
        h = F.elu(h) @ vsn.w_hidden[f] + vsn.b_hidden[f]
        value, gate = (h @ vsn.w_glu[f] + vsn.b_glu[f]).split(d, dim=-1)
        gated = value * torch.sigmoid(gate)
        embs.append((skip + gated) * weights[:, f : f + 1])
    torch.testing.assert_close(out, vsn.out(torch.cat(embs, dim=1)), atol=1e-5, rtol=1e-5)


def test_static_covariate_encoder_folds_ids() -> None:
    enc = StaticCovariateEncoder(n_sections=3, n_sectors=5, static_dim=4, d_model=8)
    static = torch.tensor([[0, 0], [2, 4], [-1, -1], [7, 99], [2, 4]])
    ctx = enc(static)
    for t in ctx:
        assert t.shape == (5, 8)
    # -1 -> unknown row 0; ids past the table share the last row with the last id.
    assert enc.fold(torch.tensor([-1, 0, 2, 3, 50]), 3).tolist() == [0, 1, 3, 3, 3]
    torch.testing.assert_close(ctx.selection[3], ctx.selection[1])
    sum(t.sum() * (i + 1) for i, t in enumerate(ctx)).backward()
    assert_all_grads(enc)
    with pytest.raises(ValueError, match=r"\[S, 2\]"):
        enc(torch.zeros(5, dtype=torch.long))


def test_interpretable_attention_causal_and_shared_value() -> None:
    b, length, d, heads = 3, 6, 16, 4
    attn = InterpretableMultiHeadAttention(d, heads)
    x = torch.randn(b, length, d)
    out, weights = attn(x, x, x, causal=True)
    assert out.shape == (b, length, d)
    assert weights.shape == (b, heads, length, length)
    # No step attends to a later step; rows sum to 1.
    assert torch.all(weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, heads, length))
    # The last-step query alone gives the last row of the full computation.
    last, _ = attn(x[:, -1:], x, x, causal=True)
    torch.testing.assert_close(last, out[:, -1:], atol=1e-6, rtol=1e-5)
    # One value projection shared by every head.
    assert attn.v.out_features == attn.d_head
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(attn)


def test_temporal_fusion_block() -> None:
    s, length, d = 4, 8, 16
    block = TemporalFusionBlock(d, n_heads=4, lstm_layers=2, dropout=0.1)
    h0, c0, enr = torch.randn(3, s, d).unbind(0)
    out = block(torch.randn(s, length, d), h0, c0, enr)
    assert out.shape == (s, d)
    (out * torch.randn_like(out)).sum().backward()
    assert_all_grads(block)


def test_fan_removes_topk_and_reconstructs() -> None:
    s, length, n_feat, k = 6, 20, 5, 3
    fan = FrequencyAdaptiveNorm(n_feat, k, d_hidden=8)
    t = torch.arange(length, dtype=torch.float32)
    # A level, a slow cycle and noise: the dominant bins FAN is meant to take out.
    x = 2.0 + torch.sin(2 * torch.pi * t / length)[None, :, None] + 0.3 * torch.randn(s, length, n_feat)
    out = fan(x)
    for part in out:
        assert part.shape == (s, length, n_feat) and part.dtype == torch.float32
    torch.testing.assert_close(out.residual + out.removed, x, atol=1e-5, rtol=0)

    spec = torch.fft.rfft(x, dim=1)
    top = spec.abs().topk(k, dim=1).indices
    in_top = torch.zeros(spec.shape, dtype=torch.bool).scatter_(1, top, True)
    removed_spec = torch.fft.rfft(out.removed, dim=1)
    residual_spec = torch.fft.rfft(out.residual, dim=1)
    # The removed part is exactly the top-K bins; the residual has none of them left.
    torch.testing.assert_close(removed_spec[in_top], spec[in_top], atol=1e-4, rtol=1e-5)
    assert removed_spec[~in_top].abs().max() < 1e-4
    assert residual_spec[in_top].abs().max() < 1e-4
    assert in_top[:, 0].all()  # the level (DC bin) is among the removed here

    assert out.channels().shape == (s, length, n_feat, 3)
    out.aux_loss().backward()
    assert_all_grads(fan)
    # K = 0 removes nothing.
    res, rem = FrequencyAdaptiveNorm(n_feat, 0, 8).decompose(x)
    assert torch.equal(res, x) and torch.all(rem == 0)


# ------------------------------------------------------------------------------------------------
# graph
# ------------------------------------------------------------------------------------------------


def _edge_set(edge_index: Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.T.tolist()))


def test_build_edges_days_sectors_and_duplicates() -> None:
    s, length, topk, k_sec = 60, 20, 4, 3
    day = torch.tensor([0] * 25 + [1] * 35)
    sector = torch.randint(0, 4, (s,))
    sector[5] = -1  # unknown sector: correlation edges and a self loop only
    ret = torch.randn(s, length)
    ret[30] = ret[40] * 2 + 0.01 * torch.randn(length)  # planted near-perfect correlation, day 1
    ei = build_edges(ret, day, sector, topk, k_sec)
    src, dst = ei
    assert ei.dtype == torch.long and ei.shape[0] == 2
    assert torch.all(day[src] == day[dst]), "an edge crosses days"
    assert len(_edge_set(ei)) == ei.shape[1], "duplicate edges"
    assert ei.shape[1] <= s * (topk + k_sec + 1)
    edges = _edge_set(ei)
    assert all((i, i) in edges for i in range(s)), "missing self loop"
    assert (40, 30) in edges and (30, 40) in edges, "planted correlated pair is not a top-k neighbour"

    in_deg = torch.bincount(dst, minlength=s)
    assert torch.all(in_deg <= topk + k_sec + 1)
    for i in range(s):
        peers = ((day == day[i]) & (sector == sector[i])).sum().item() - 1
        same_sector_in = sum(1 for j in src[dst == i].tolist()
                             if j != i and sector[j] == sector[i] and sector[i] >= 0)
        if sector[i] >= 0:
            assert same_sector_in >= min(k_sec, peers), f"stock {i} lacks same-sector edges"
    # Top-k correlation neighbours: every stock receives from topk others of its day.
    corr_only = build_edges(ret, day, torch.full((s,), -1), topk, 0)
    assert torch.all(torch.bincount(corr_only[1], minlength=s) == topk + 1)


def test_sector_degree_is_bounded_in_big_sector() -> None:
    s = 500  # one 500-stock sector must not become 250k edges
    ei = build_edges(torch.randn(s, 20), torch.zeros(s, dtype=torch.long), torch.zeros(s, dtype=torch.long),
                     topk=0, sector_edges=4)
    assert ei.shape[1] == s * 5  # 4 sector neighbours + self loop each
    assert torch.all(torch.bincount(ei[1], minlength=s) == 5)
    # A tiny day with fewer stocks than k: everything that can be connected is, nothing crosses.
    ei = build_edges(torch.randn(3, 20), torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), topk=8,
                     sector_edges=8)
    assert _edge_set(ei) == {(0, 0), (1, 1), (2, 2), (0, 1), (1, 0)}


def test_scatter_softmax_sums_to_one_per_destination() -> None:
    n, e, h = 7, 40, 3
    dst = torch.cat([torch.arange(n), torch.randint(0, n, (e - n,))])
    scores = torch.randn(e, h) * 30  # large scores: the per-destination max shift keeps exp finite
    alpha = scatter_softmax(scores, dst, n)
    sums = torch.zeros(n, h).index_add_(0, dst, alpha)
    torch.testing.assert_close(sums, torch.ones(n, h))
    # Equals a per-group softmax computed the slow way.
    for i in range(n):
        torch.testing.assert_close(alpha[dst == i], torch.softmax(scores[dst == i], dim=0))


def _dense_gat_reference(layer: GraphAttentionLayer, x: Tensor, edge_index: Tensor) -> Tensor:
    """The same layer computed densely: N x N scores, -inf where there is no edge."""
    n, heads, dh = x.shape[0], layer.heads, layer.d_head
    xs = layer.lin_src(x).view(n, heads, dh)
    xd = layer.lin_dst(x).view(n, heads, dh)
    e = F.leaky_relu(xd[:, None] + xs[None, :], layer.negative_slope)  # [i, j, H, dh]
    scores = (e * layer.att).sum(-1)  # [i, j, H]
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edge_index[1], edge_index[0]] = True
    alpha = torch.softmax(scores.masked_fill(~adj[..., None], float("-inf")), dim=1)
    agg = torch.einsum("ijh,jhd->ihd", alpha, xs)
    return layer.norm(layer.skip(x) + layer.lin_out(F.elu(agg).reshape(n, -1)))


def test_gat_layer_matches_dense_reference() -> None:
    n = 12
    x = torch.randn(n, 10)
    ei = build_edges(torch.randn(n, 20), torch.tensor([0] * 7 + [1] * 5), torch.randint(0, 3, (n,)),
                     topk=3, sector_edges=2)
    layer = GraphAttentionLayer(10, 16, heads=4, dropout=0.2).eval()
    out, alpha = layer(x, ei, return_attention=True)
    assert out.shape == (n, 16) and alpha.shape == (ei.shape[1], 4)
    torch.testing.assert_close(out, _dense_gat_reference(layer, x, ei), atol=1e-5, rtol=1e-5)

    layer.train()
    (layer(x, ei) * torch.randn(n, 16)).sum().backward()
    assert_all_grads(layer)


class _AllocationTracker(TorchDispatchMode):
    """Counts bytes of CPU tensor storages created by torch ops while active, live and peak.

    Torch's CPU allocator keeps no statistics and RSS peaks are process-wide (an earlier test would
    mask a dense matrix here), so every op's new output storage is counted until its tensor dies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.largest = 0

    def _free(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and ptr not in self.live:
                    self.live[ptr] = nbytes
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
                    self.largest = max(self.largest, nbytes)
                    weakref.finalize(t, self._free, ptr)
        return out


def _graph_peak_bytes(s: int, topk: int, k_sec: int, heads: int) -> tuple[int, int, int]:
    ret = torch.randn(s, 20)
    day = torch.zeros(s, dtype=torch.long)
    sector = torch.randint(0, 33, (s,))
    x = torch.randn(s, 16)
    layer = GraphAttentionLayer(16, 16, heads=heads).eval()
    with torch.no_grad(), _AllocationTracker() as tracker:
        ei = build_edges(ret, day, sector, topk, k_sec)
        out = layer(x, ei)
    assert out.shape == (s, 16) and torch.isfinite(out).all()
    return ei.shape[1], tracker.peak, tracker.largest


def test_graph_memory_grows_with_edges_not_n_squared() -> None:
    s, topk, k_sec, heads = 4000, 16, 8, 4
    n_edges, peak, largest = _graph_peak_bytes(s, topk, k_sec, heads)
    assert n_edges <= s * (topk + k_sec + 1)
    dense_attention = s * s * 4 * heads  # one float32 N x N score matrix per head: 256 MB
    dense_corr = s * s * 4  # even one dense correlation matrix: 64 MB
    assert largest < dense_corr / 4, f"a {largest / 2**20:.0f} MB buffer suggests an N x N matrix"
    assert peak < dense_corr, f"peak {peak / 2**20:.0f} MB is not O(E) (dense attention {dense_attention >> 20} MB)"
    # Doubling S roughly doubles the peak (a dense build would quadruple it).
    _, peak_half, _ = _graph_peak_bytes(s // 2, topk, k_sec, heads)
    assert peak / peak_half < 3.0


# ------------------------------------------------------------------------------------------------
# full model
# ------------------------------------------------------------------------------------------------


def _day_batch(days: int, stocks: int, length: int, n_feat: int) -> tuple[Tensor, Tensor, Tensor]:
    s = days * stocks
    x = torch.randn(s, length, n_feat)
    x[0, 3, 1] = float("nan")  # missing cells must not poison the batch
    static = torch.stack((torch.randint(-1, 4, (s,)), torch.randint(-1, 45, (s,))), dim=1)
    day_id = torch.arange(days).repeat_interleave(stocks)
    return x, static, day_id


def test_model_forward_backward_two_days() -> None:
    cfg = ModelConfig()  # demo sizes
    n_feat, horizons = 40, (1, 5, 10, 20)
    model = ATFTGATFAN(n_feat, horizons, cfg)
    x, static, day_id = _day_batch(2, 150, 20, n_feat)
    out = model(x, static, day_id)
    assert isinstance(out, ModelOutput)  # named outputs, not a dict
    assert out.pred.shape == (300, 4) and out.pred.dtype == torch.float32
    assert out.quantiles is None
    assert torch.isfinite(out.pred).all() and out.aux_loss.dim() == 0
    (out.pred.pow(2).mean() + out.aux_loss).backward()
    assert_all_grads(model)
    assert model.n_parameters == sum(p.numel() for p in model.parameters())


def test_current_day_path_starts_neutral_and_reads_only_the_forecast_day() -> None:
    x, static, day_id = _day_batch(2, 25, 10, 6)
    model = ATFTGATFAN(6, (1, 5), ModelConfig(current_day_width=16, dropout=0.0, piecewise_edges=())).eval()
    assert model.current_day is not None
    with_path = model(x, static, day_id).pred
    path, model.current_day = model.current_day, None
    assert torch.equal(with_path, model(x, static, day_id).pred)  # zero-initialised output: no change yet
    model.current_day = path
    nn.init.normal_(path.out.weight)
    seen: list[Tensor] = []
    path.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    model(x, static, day_id)
    assert seen[-1].shape == (50, 12)  # the forecast day's 6 values and their 6 sector deviations
    assert torch.equal(seen[-1][:, :6], torch.nan_to_num(x[:, -1], nan=0.0))
    earlier = x.clone()
    earlier[:, :-1] += 5.0  # past days move: the path's input does not
    model(earlier, static, day_id)
    assert torch.equal(seen[-1], seen[-2])
    out = model(x, static, day_id).pred
    out.sum().backward()
    assert path.body[0].weight.grad is not None and path.body[0].weight.grad.abs().sum() > 0


def test_piecewise_linear_code_fills_bins_and_spans_piecewise_linear_functions() -> None:
    enc = PiecewiseLinearEncoding((1.0, -1.0, 0.0))  # sorted on the way in
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 4.0])
    expected = [[0, 0], [0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [1, 1]]
    assert enc.n_bins == 2 and torch.equal(enc(x), torch.tensor(expected))
    # |x|, a sign-like step (a steep ramp between knots) and a hinge at 1 are exact linear maps of the
    # code: what the VSN's per-variable GRN must otherwise bend out of a few ELUs
    edges = (-2.0, -1.0, -0.25, 0.0, 0.25, 1.0, 2.0)
    enc, knots = PiecewiseLinearEncoding(edges), torch.tensor(edges)
    x = torch.linspace(-2, 2, 401)
    for f in (torch.abs, lambda v: torch.clamp(v / 0.25, -1, 1), lambda v: torch.relu(v.abs() - 1)):
        approx = f(knots[:1]) + enc(x) @ (f(knots[1:]) - f(knots[:-1]))
        torch.testing.assert_close(approx, f(x))
    with pytest.raises(ValueError, match="two distinct edges"):
        PiecewiseLinearEncoding((0.0, 0.0))


def test_model_with_piecewise_code_feeds_it_to_the_vsn_and_learns_through_it() -> None:
    x, static, day_id = _day_batch(2, 25, 10, 6)
    model = ATFTGATFAN(6, (1, 5), ModelConfig(piecewise_edges=(-1.0, 0.0, 1.0), current_day_width=8))
    assert model.vsn.d_in == 3 + 1 + 2  # FAN's streams, the sector deviation, two bins
    assert model.current_day is not None and model.current_day.body[0].in_features == 6 * (1 + 1 + 2)
    out = model(x, static, day_id)
    (out.pred.pow(2).mean() + out.aux_loss).backward()
    assert_all_grads(model)


def test_model_quantile_mode() -> None:
    cfg = ModelConfig(quantiles=(0.9, 0.1, 0.5))
    model = ATFTGATFAN(12, (1, 5), cfg)
    x, static, day_id = _day_batch(2, 20, 10, 12)
    out = model(x, static, day_id)
    assert out.pred.shape == (40, 2)
    assert out.quantiles.shape == (40, 2, 3)
    # Columns follow the configured levels (0.9, 0.1, 0.5), as the loss pairs them; no crossing.
    q90, q10, q50 = out.quantiles.unbind(-1)
    assert torch.all(q10 <= q50) and torch.all(q50 <= q90), "quantiles cross"
    (out.pred.sum() + out.quantiles.sum()).backward()
    assert_all_grads(model)


def test_model_deterministic_given_seed() -> None:
    x, static, day_id = _day_batch(2, 30, 20, 8)

    def run() -> Tensor:
        torch.manual_seed(123)
        model = ATFTGATFAN(8, (1, 5), ModelConfig(dropout=0.2))
        return model(x, static, day_id).pred  # train mode: dropout draws from the seeded RNG

    assert torch.equal(run(), run())


def test_model_odd_sizes_and_no_gat() -> None:
    # Sizes an HPO study may sample: hidden not divisible by the heads, fewer head entries than
    # layers, no GAT at all.
    cfg = ModelConfig(hidden=20, attn_heads=3, gat_layers=3, gat_heads=(3,), fan_k=50)
    x, static, day_id = _day_batch(2, 10, 8, 5)
    assert ATFTGATFAN(5, (1,), cfg)(x, static, day_id).pred.shape == (20, 1)
    out = ATFTGATFAN(5, (1, 5), ModelConfig(gat_layers=0))(x, static, day_id)
    assert out.pred.shape == (20, 2) and torch.isfinite(out.pred).all()


def test_model_runs_under_bf16_autocast() -> None:
    # CUDA is where bf16 runs in production; CPU autocast exercises the same casts.
    model = ATFTGATFAN(8, (1, 5), ModelConfig(quantiles=(0.25, 0.5, 0.75)))
    x, static, day_id = _day_batch(2, 20, 12, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, static, day_id)
    assert out.pred.dtype == torch.float32 and torch.isfinite(out.pred).all()
    out.pred.sum().backward()
    assert_all_grads(model)


def test_build_model_resolves_return_feature(caplog: pytest.LogCaptureFixture) -> None:
    names = ["volume_z", "ret_1d", "returns_1d", "vol_20d"]
    assert resolve_return_feature(names) == 2  # "returns_1d" wins over "ret_1d"
    assert resolve_return_feature(["a", "ret_1d"]) == 1
    assert resolve_return_feature(["a", "b"]) == 0
    assert resolve_return_feature(names, "vol_20d") == 3
    with pytest.raises(ValueError, match="not among"):
        resolve_return_feature(names, "nope")
    with caplog.at_level("INFO", logger="atft_core.model"):
        model = build_model(4, [1, 5], ModelConfig(graph_return_feature="vol_20d"), names)
    assert model.return_feature_idx == 3 and model.horizons == (1, 5)
    assert any("parameters" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        build_model(5, [1], ModelConfig(), names)
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(3, 20, 7), torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_reference_sizes_build() -> None:
    model = ATFTGATFAN(400, (1, 5, 10, 20), ModelConfig.reference())
    assert 3_000_000 < model.n_parameters < 40_000_000
    assert len(model.gat) == 2 and [g.heads for g in model.gat] == [8, 4]


def test_tiny_overfit_planted_target() -> None:
    cfg = ModelConfig(dropout=0.0)
    model = ATFTGATFAN(6, (1,), cfg)
    x, static, day_id = _day_batch(1, 64, 20, 6)
    x = torch.nan_to_num(x)
    y = torch.tanh(x[:, -1, 0]).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def mse() -> Tensor:
        return F.mse_loss(model(x, static, day_id).pred, y)

    with torch.no_grad():
        start = mse().item()
    for _ in range(100):
        opt.zero_grad()
        loss = mse()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = mse().item()
    print(f"overfit MSE {start:.4f} -> {end:.4f}")
    assert end < 0.5 * start, f"MSE {start:.4f} -> {end:.4f}"
