"""A training step makes no host sync: counted op by op; static-shape batches equal the eager ones.

On a CUDA host the same tests run on the GPU, and the epoch also runs under
``torch.cuda.set_sync_debug_mode("error")`` (any sync outside the trainer's one read per log
interval raises there).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from atft_core.config import AtftConfig
from atft_core.data.cache.build import build_cache
from atft_core.data.cache.store import open_cache
from atft_core.model import build_model
from atft_core.model.graph import build_edges_fixed
from atft_core.train.batches import GridTensors
from atft_core.train.loss import compute_loss
from atft_core.train.syncs import SyncCounter
from atft_core.train.trainer import Trainer, resolve_device
from tests.panels import make_panel, write

DEVICE = resolve_device("auto")  # the GPU on a CUDA host, else the CPU
# CPU: the padded batch computes the same numbers up to summation order. CUDA: TF32 in cuDNN's LSTM
# and atomic index_add_ make different batch shapes differ by more rounding.
TOL = {"rtol": 1e-4, "atol": 1e-6} if DEVICE.type == "cpu" else {"rtol": 2e-3, "atol": 2e-4}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("syncfree")
    # drop=0.15: day sizes differ, so the eager path really has a data-dependent batch size
    path = write(make_panel(days=90, stocks=25, features=3, drop=0.15, horizons=(1, 5, 10)), d / "p.parquet")
    return open_cache(build_cache(path, d / "cache", progress=False).path)


def config(static: str, log_every: int, dropout: float = 0.1, amp: bool = True) -> AtftConfig:
    return AtftConfig.from_dict({
        "data": {"window": 10, "min_stocks": 5, "days_per_batch": 2, "split": {"val_days": 15, "test_days": 0}},
        "model": {"hidden": 16, "attn_heads": 2, "gat_heads": [2], "graph_topk": 4, "graph_sector_edges": 3,
                  "quantiles": [0.1, 0.5, 0.9], "dropout": dropout},
        "train": {"max_epochs": 1, "progress": False, "static_shapes": static, "log_every": log_every,
                  "device": str(DEVICE), "amp": amp},
    })


def _sync_debug_error():
    """On CUDA: any sync not explicitly allowed raises (the trainer allows its one read)."""
    if DEVICE.type != "cuda":
        return nullcontext()

    class _Mode:
        def __enter__(self):
            self.before = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")

        def __exit__(self, *exc):
            torch.cuda.set_sync_debug_mode(self.before)

    return _Mode()


@pytest.mark.parametrize("static", ["off", "on"])
def test_training_epoch_reads_the_host_once_per_log_interval(cache, static):
    log_every = 4
    tr = Trainer(cache, config(static, log_every))
    tr.prefetch = False  # gather in this thread, so its ops are counted too
    tr.train_epoch(0)  # creates the optimiser state (and, on CUDA, warms the allocator)
    steps = [s for st in tr.opt.state.values() for s in (st.get("step"),) if s is not None and s.device.type == "cpu"]
    n_batches = len(tr.sampler)
    with SyncCounter(ignore=steps) as counter, _sync_debug_error():
        stats = tr.train_epoch(1)
    allowed = math.ceil(n_batches / log_every)
    print(f"static={static}: {counter.total} host reads over {n_batches} steps ({dict(counter.counts)})")
    assert n_batches >= 8 and stats["train_days"] == len(tr.split.train)
    assert counter.total <= allowed, f"{counter.total} syncs in {n_batches} steps: {dict(counter.counts)}"
    assert set(counter.counts) <= {"Tensor.tolist", "aten::_to_copy(to host)"}  # only the interval reads
    assert math.isfinite(stats["train_loss"]) and stats["train_huber"] > 0


def test_gather_and_loss_make_no_sync(cache):
    grid = GridTensors(cache, 10, DEVICE)
    model = build_model(3, cache.horizons, config("off", 1).model, cache.feature_names).to(DEVICE)
    cfg = config("off", 1)
    for gather in (lambda d: grid.gather(d), lambda d: grid.gather_static(d, n_days=3)):
        with SyncCounter() as counter, _sync_debug_error():
            b = gather(np.array([40, 12]))
            out = model(b.x, b.static, b.day_id)
            loss, _ = compute_loss(out, b.y_z, b.y_mask, b.day_id, cfg.loss, cache.horizons,
                                   quantile_levels=(0.1, 0.5, 0.9), layout=b.layout, sync=False)
            loss.backward()
        assert counter.total == 0, dict(counter.counts)
    # without the host-made layout the loss derives it from day_id: the syncs this removes
    with SyncCounter() as counter:
        compute_loss(out, b.y_z, b.y_mask, b.day_id, cfg.loss, cache.horizons, quantile_levels=(0.1, 0.5, 0.9))
    assert counter.total >= 2


def test_static_batch_gives_the_same_loss_and_gradients(cache):
    cfg = config("off", 1, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(3, cache.horizons, cfg.model, cache.feature_names).to(DEVICE)
    grid = GridTensors(cache, 10, DEVICE)
    days = np.array([40, 12])
    results = []
    for b in (grid.gather(days), grid.gather_static(days, n_days=3)):  # static: + one all-padding day
        model.zero_grad()
        out = model(b.x, b.static, b.day_id)
        loss, parts = compute_loss(out, b.y_z, b.y_mask, b.day_id, cfg.loss, cache.horizons,
                                   quantile_levels=(0.1, 0.5, 0.9), layout=b.layout)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()], parts))
    (l0, g0, p0), (l1, g1, p1) = results
    static = grid.gather_static(days, n_days=3)
    assert static.x.shape[0] == 3 * cache.x.shape[1] and static.y_mask[2 * cache.x.shape[1]:].sum() == 0
    assert p0["n_days"] == 2 and p1["n_days"] == 3  # the padding day is in the layout but never counts
    torch.testing.assert_close(l1, l0, **TOL)
    for a, b_ in zip(g0, g1, strict=True):
        torch.testing.assert_close(b_, a, **TOL)
    for k in p0:
        assert math.isclose(p0[k], p1[k], rel_tol=TOL["rtol"], abs_tol=TOL["atol"]) or k == "n_days", k


def test_static_and_eager_trainers_predict_the_same(cache):
    preds = []
    for static in ("off", "on"):
        tr = Trainer(cache, config(static, 4, dropout=0.0, amp=False))  # same seed: same weights
        preds.append(tr.predict(tr.split.val, days_per_batch=4))
    np.testing.assert_array_equal(np.isnan(preds[0]), np.isnan(preds[1]))
    np.testing.assert_allclose(preds[1], preds[0], rtol=TOL["rtol"], atol=10 * TOL["atol"])


def test_nan_is_still_named_with_epoch_batch_and_days(cache):
    tr = Trainer(cache, config("off", 50))
    calls = {"n": 0}

    def poison(module, inputs, output):  # the 3rd step on emits NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output

    tr.model.heads[0].out.register_forward_hook(poison)
    from atft_core.errors import TrainingError
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 0, batch 2 \(days \['\d{4}-"):
        tr.train_epoch(0)


def _reference_edges(ret_window, day_id, sector, topk, sector_edges, chunk=512):
    """The previous build_edges (boolean masks, unique: host syncs), kept as the reference."""
    device = ret_window.device
    s = ret_window.shape[0]
    nodes = torch.arange(s, device=device)
    srcs, dsts = [nodes], [nodes]
    k = min(int(topk), s - 1)
    if k > 0:
        r = torch.nan_to_num(ret_window.float(), nan=0.0)
        r = r - r.mean(dim=1, keepdim=True)
        z = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
        for start in range(0, s, chunk):
            stop = min(start + chunk, s)
            rows = nodes[start:stop]
            corr = z[start:stop] @ z.T
            corr.masked_fill_(day_id[start:stop, None] != day_id[None, :], float("-inf"))
            corr[rows - start, rows] = float("-inf")
            vals, idx = corr.topk(k, dim=1)
            ok = torch.isfinite(vals)
            srcs.append(idx[ok])
            dsts.append(rows[:, None].expand(-1, k)[ok])
    if sector_edges > 0:
        known = torch.nonzero(sector >= 0).squeeze(1)
        if known.numel() > 1:
            d_known, s_known = day_id[known], sector[known]
            d_known = d_known - d_known.min()
            _, group = torch.unique(d_known * (int(s_known.max()) + 1) + s_known, return_inverse=True)
            order = torch.argsort(group, stable=True)
            g = group[order]
            sizes = torch.bincount(g)
            starts = torch.cumsum(sizes, 0) - sizes
            rank = torch.arange(g.numel(), device=device) - starts[g]
            n = sizes[g]
            offsets = torch.arange(1, int(sector_edges) + 1, device=device)
            partner = (rank[:, None] + offsets[None, :]) % n[:, None]
            ok = offsets[None, :] < n[:, None]
            members = known[order]
            srcs.append(members[(starts[g][:, None] + partner)[ok]])
            dsts.append(members[:, None].expand(-1, offsets.numel())[ok])
    key = torch.unique(torch.cat(dsts) * s + torch.cat(srcs))
    return torch.stack((key % s, key // s))


@pytest.mark.parametrize("seed,topk,k_sec", [(0, 4, 3), (1, 0, 5), (2, 8, 0), (3, 30, 30)])
def test_fixed_shape_edges_equal_the_previous_edge_list(seed, topk, k_sec):
    g = torch.Generator().manual_seed(seed)
    s = 90
    day = torch.sort(torch.randint(0, 3, (s,), generator=g)).values
    sector = torch.randint(-1, 5, (s,), generator=g)
    ret = torch.randn(s, 12, generator=g)
    ret[7] = ret[8]  # a tie in correlation
    ei, keep = build_edges_fixed(ret.to(DEVICE), day.to(DEVICE), sector.to(DEVICE), topk, k_sec, chunk=32)
    assert ei.shape == (2, s * (1 + min(topk, s - 1) + k_sec)) and keep.shape == (ei.shape[1],)
    # the same device for both: top-k ties then break identically
    ref = _reference_edges(ret.to(DEVICE), day.to(DEVICE), sector.to(DEVICE), topk, k_sec, chunk=32)
    assert torch.equal(ei[:, keep], ref)
