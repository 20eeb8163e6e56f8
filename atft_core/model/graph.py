"""Sparse graph over the day's stocks and graph attention on it, in plain torch.

The graph is rebuilt for every batch from the batch itself (no stored universe graph, so it always
matches the names trading that day). Edges are ``edge_index [2, E]``: row 0 the source j (message
sender), row 1 the destination i (the stock being updated). A batch may hold several days; edges never
cross days.

Memory: nothing here is O(S^2) at once. The correlation top-k is computed in row chunks (``chunk`` rows
x S columns, keeping only k per row), so the peak is O(chunk * S + E); attention is computed per edge
and normalised with a scatter softmax, so it is O(E * heads * head_dim). For one 4,000-stock day with
k = 16 and 8 sector edges that is ~8 MB for a 512-row chunk instead of 64 MB for the dense correlation
and 512 MB for a dense 8-head attention matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GraphAttentionLayer", "build_edges", "build_edges_fixed", "scatter_softmax"]


@torch.no_grad()
def build_edges(
    ret_window: Tensor,
    day_id: Tensor,
    sector: Tensor,
    topk: int,
    sector_edges: int,
    chunk: int = 512,
) -> Tensor:
    """Edges for graph attention across the stocks of each day in the batch, as a compact list.

    Args:
        ret_window: ``[S, L]`` each stock's return window (NaN counts as 0).
        day_id: ``[S]`` day of each row; edges only join rows of the same day.
        sector: ``[S]`` sector id; negative = unknown (no sector edges for that stock).
        topk: correlation neighbours per stock (highest Pearson correlation of the window, same day).
        sector_edges: same-sector neighbours per stock. Within each (day, sector) group, stocks in
            index order form a ring and each stock receives from the next ``sector_edges`` members,
            so in-degree is bounded by ``min(sector_edges, group size - 1)`` however big the sector
            (a 500-stock sector gives 500 * k edges, not 250k) and the choice is deterministic.
        chunk: rows of the correlation matrix held at once (peak memory O(chunk * S)).

    Returns:
        ``edge_index [2, E]`` long on ``ret_window``'s device: the union of correlation, sector and
        self-loop edges, without duplicates, sorted by destination then source.
        ``E <= S * (topk + sector_edges + 1)``. Its size is data dependent (one host sync); the
        model uses `build_edges_fixed` instead.
    """
    edge_index, keep = build_edges_fixed(ret_window, day_id, sector, topk, sector_edges, chunk)
    return edge_index[:, keep]


@torch.no_grad()
def build_edges_fixed(
    ret_window: Tensor,
    day_id: Tensor,
    sector: Tensor,
    topk: int,
    sector_edges: int,
    chunk: int = 512,
) -> tuple[Tensor, Tensor]:
    """`build_edges` with a fixed shape and no host sync: every stock gets C = 1 + k + sector_edges slots.

    Arguments as `build_edges` (k = min(topk, S - 1)). Returns ``(edge_index [2, S * C], keep [S * C]
    bool)``: slot j of destination i holds a source; ``keep`` is False for an unused or duplicate slot
    (its source is then i itself, harmless, and `GraphAttentionLayer` gives it no weight).
    ``edge_index[:, keep]`` is exactly `build_edges`' list (sorted by destination, then source). Shapes
    depend only on S, so the step can be compiled with static shapes or captured as a CUDA graph.
    Rows with ``day_id`` -1 (static-shape padding) only ever connect to each other.
    """
    device = ret_window.device
    s = ret_window.shape[0]
    day_id = day_id.to(device=device, dtype=torch.long)
    sector = sector.to(device=device, dtype=torch.long)
    nodes = torch.arange(s, device=device)
    cands: list[Tensor] = [nodes[:, None]]  # [S, c] source candidates per destination; s = none

    k = min(int(topk), s - 1)
    if k > 0:
        # Pearson correlation = dot product of centred, unit-norm rows; float32 even under autocast.
        with torch.autocast(device_type=device.type, enabled=False):
            r = torch.nan_to_num(ret_window.float(), nan=0.0, posinf=0.0, neginf=0.0)
            r = r - r.mean(dim=1, keepdim=True)
            z = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
            for start in range(0, s, chunk):
                stop = min(start + chunk, s)
                rows = nodes[start:stop]
                corr = z[start:stop] @ z.T  # [chunk, S]: the only S-wide buffer
                corr.masked_fill_(day_id[start:stop, None] != day_id[None, :], float("-inf"))
                corr[rows - start, rows] = float("-inf")
                vals, idx = corr.topk(k, dim=1)
                # a small day may have fewer than k other stocks: those slots stay empty
                cands.append(torch.where(torch.isfinite(vals), idx, s))
                del corr
        if len(cands) > 2:
            cands = [cands[0], torch.cat(cands[1:], 0)]

    n_sec = int(sector_edges)
    if n_sec > 0:
        # one integer key per (day, sector); an unknown sector gets a key of its own (no partners)
        known = sector >= 0
        key = torch.where(known, day_id * (1 << 32) + sector, (1 << 62) + nodes)
        order = torch.argsort(key, stable=True)  # groups contiguous, members in index order
        ks = key[order]
        is_new = torch.ones(s, dtype=torch.bool, device=device)
        is_new[1:] = ks[1:] != ks[:-1]
        start = torch.cummax(torch.where(is_new, nodes, 0), dim=0).values
        is_end = torch.ones_like(is_new)
        is_end[:-1] = is_new[1:]
        end = torch.cummin(torch.where(is_end, nodes + 1, s).flip(0), dim=0).values.flip(0)
        size = end - start
        offsets = torch.arange(1, n_sec + 1, device=device)
        partner = start[:, None] + (nodes - start)[:, None].add(offsets[None, :]) % size[:, None]
        ok = offsets[None, :] < size[:, None]  # offset = size would be the stock itself
        sec = torch.empty((s, n_sec), dtype=torch.long, device=device)
        sec[order] = torch.where(ok, order[partner], s)
        cands.append(sec)

    src = torch.sort(torch.cat(cands, 1), dim=1).values  # [S, C]: sources ascending, empties last
    keep = src < s
    keep[:, 1:] &= src[:, 1:] != src[:, :-1]  # a neighbour found twice (correlation and sector) counts once
    src = torch.where(keep, src, nodes[:, None])
    dst = nodes[:, None].expand_as(src)
    return torch.stack((src.reshape(-1), dst.reshape(-1))), keep.reshape(-1)


def scatter_softmax(scores: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """Softmax of ``scores [E, H]`` over the edges that share a destination ``index [E]``.

    Returns float32 ``[E, H]``; for every node with at least one incoming edge, the weights of its
    incoming edges sum to 1 per head. The per-destination max is subtracted first (a constant per
    group, so it is detached) to keep ``exp`` finite.
    """
    s = scores.float()
    idx = index.unsqueeze(1).expand_as(s)
    peak = torch.full((num_nodes, s.shape[1]), float("-inf"), device=s.device, dtype=s.dtype)
    peak = peak.scatter_reduce(0, idx, s, reduce="amax", include_self=True).detach()
    ex = torch.exp(s - peak[index])
    denom = torch.zeros_like(peak).index_add_(0, index, ex)
    return ex / denom[index].clamp_min(1e-30)


class GraphAttentionLayer(nn.Module):
    """GATv2 attention over a sparse graph, with residual connection and layer norm.

    ``score_ij = a_h . LeakyReLU(W_src x_j + W_dst x_i)`` per head h over the incoming edges of i,
    normalised by `scatter_softmax`; ``m_i = ELU(sum_j alpha_ij W_src x_j)`` (heads concatenated),
    ``out_i = LayerNorm(skip(x_i) + dropout(W_out m_i))``.

    Input ``x [N, in_dim]``, ``edge_index [2, E]`` (every node should have a self loop, as
    `build_edges` adds, so none is left without messages). Output ``[N, out_dim]``; with
    ``return_attention=True`` also ``alpha [E, heads]``.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, dropout: float = 0.0,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        self.heads = int(heads)
        # Rounded up so any (hidden, heads) pair works; W_out maps back to out_dim.
        self.d_head = max(1, math.ceil(out_dim / heads))
        width = self.heads * self.d_head
        self.negative_slope = negative_slope
        self.lin_src = nn.Linear(in_dim, width)
        self.lin_dst = nn.Linear(in_dim, width, bias=False)
        self.att = nn.Parameter(torch.empty(self.heads, self.d_head))
        nn.init.xavier_uniform_(self.att)
        self.lin_out = nn.Linear(width, out_dim)
        self.skip = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor, edge_index: Tensor, return_attention: bool = False,
                edge_mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """``edge_mask [E]`` bool (from `build_edges_fixed`): False edges get no weight and no message."""
        n = x.shape[0]
        src, dst = edge_index[0], edge_index[1]
        xs = self.lin_src(x).view(n, self.heads, self.d_head)
        xd = self.lin_dst(x).view(n, self.heads, self.d_head)
        # Per-edge work in float32: E x heads x d_head, the only edge-sized buffers.
        xs_e = xs.float()[src]  # [E, H, dh]
        e = F.leaky_relu(xs_e + xd.float()[dst], self.negative_slope)
        scores = (e * self.att.float()).sum(-1)  # [E, H]
        if edge_mask is not None:
            scores = scores.masked_fill(~edge_mask[:, None], float("-inf"))
        alpha = scatter_softmax(scores, dst, n)  # [E, H]
        msg = xs_e * self.attn_dropout(alpha).unsqueeze(-1)
        agg = torch.zeros(n, self.heads, self.d_head, device=x.device, dtype=msg.dtype)
        agg = agg.index_add_(0, dst, msg)
        out = self.lin_out(F.elu(agg).reshape(n, -1))
        out = self.norm(self.skip(x) + self.dropout(out))
        return (out, alpha) if return_attention else out
