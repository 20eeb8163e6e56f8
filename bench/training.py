"""Training-loop benchmarks on CPU: batch delivery vs train step, validation vs the replaced
system's anti-patterns, memory growth across 10 epochs."""

from __future__ import annotations

import gc
import os
import warnings

import numpy as np
import torch

from bench.common import Row, best_of, built_cache, demo_panel, rss_now_mb, synthetic_panel, timed, tiny_config, verdict


def _demo_setup(quick: bool):
    """(cache, cfg, label): the default demo data and model on CPU; a small demo + tiny model in quick mode."""
    from atft_core.config import AtftConfig
    from atft_core.data.cache.store import open_cache

    if quick:
        cache = open_cache(built_cache(demo_panel(stocks=80, days=160, features=16), "demo"))
        cfg = tiny_config(val_days=10, window=20)
        return cache, cfg, "quick: demo 80 stocks x 160 days x 16 features, tiny model (hidden 8)"
    cache = open_cache(built_cache(demo_panel(), "demo"))
    cfg = AtftConfig()
    cfg.train.device = "cpu"
    cfg.train.progress = False
    return cache, cfg, "default demo data (300 stocks x 750 days x 40 features) and default demo model"


# --------------------------------------------------------------------------------------------------
# delivery vs step


def bench_delivery(quick: bool, trainer=None, label: str = "") -> list[Row]:
    from atft_core.train.batches import DayBatchSampler
    from atft_core.train.prefetch import Prefetcher
    from atft_core.train.trainer import Trainer

    if trainer is None:
        cache, cfg, label = _demo_setup(quick)
        trainer = Trainer(cache, cfg)
    cfg = trainer.cfg
    n_steps = 5 if quick else 3
    trainer.sampler.max_days = cfg.data.days_per_batch  # one batch per "epoch": one step per call
    trainer.train_epoch(0)  # warm-up step (allocator, first-call costs)
    step_times = [timed(lambda e=e: trainer.train_epoch(e))[0] for e in range(1, n_steps + 1)]
    t_step = min(step_times)  # best of: the step least disturbed by the other processes on the machine
    step_rate = 1.0 / t_step

    sampler = DayBatchSampler(trainer.split.train, cfg.data.days_per_batch, seed=1, max_days=60 if quick else 200)
    day_batches = list(sampler)

    def direct():
        for days in day_batches:
            trainer.grid.gather(days)

    def prefetched():
        for _ in Prefetcher(trainer.grid.gather, day_batches, device=trainer.device, depth=2):
            pass

    t_direct = best_of(direct, repeat=2)
    t_pref = best_of(prefetched, repeat=2)
    threads = torch.get_num_threads()  # as the Trainer left it (TrainConfig.cpu_threads)
    per_threads = {}
    try:  # the same gather with 1 and with one intra-op thread per core: small copies split badly
        for n in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(n)
            per_threads[n] = best_of(direct, repeat=2) / len(day_batches)
    finally:
        torch.set_num_threads(threads)
    r_direct, r_pref = len(day_batches) / t_direct, len(day_batches) / t_pref
    stocks = float(np.mean([trainer.cache.valid[d].sum() for d in trainer.split.train]))
    common = (f"{label}; {cfg.data.days_per_batch} day/batch, ~{stocks:.0f} stocks x window {cfg.data.window} x "
              f"{trainer.cache.x.shape[2]} features per batch. Train step = forward + loss + backward + "
              f"AdamW step via Trainer.train_epoch, best of {n_steps} single steps after 1 warm-up step "
              f"({t_step:.3f} s/step; median {np.median(step_times):.3f} s). Delivery over {len(day_batches)} "
              "batches, best of 2.")
    return [
        Row("delivery", "batch delivery vs train step (CPU)", r_direct, "batches/s", step_rate, "steps/s",
            r_direct / step_rate, "delivery rate / step rate", ">= 10x", verdict(r_direct / step_rate >= 10),
            note="GridTensors.gather over the memory map. " + common),
        Row("delivery_prefetch", "batch delivery via Prefetcher vs train step", r_pref, "batches/s", step_rate,
            "steps/s", r_pref / step_rate, "delivery rate / step rate", ">= 10x", verdict(r_pref / step_rate >= 10),
            note=f"atft_core.train.prefetch.Prefetcher (background thread, depth 2) over the same gather: "
                 f"{r_pref / r_direct:.2f}x the direct gather rate when nothing else runs. Direct gather on the "
                 "main thread: " + ", ".join(f"{t * 1e3:.2f} ms/batch with {n} intra-op thread{'s' if n > 1 else ''}"
                                             for n, t in per_threads.items())
                 + f" (the rows use {threads}, as the Trainer set it). " + common),
    ]


# --------------------------------------------------------------------------------------------------
# validation vs anti-patterns


def antipattern_evaluate(trainer, days: np.ndarray, days_per_batch: int = 8, keep: list | None = None):
    """Validation as the replaced system did it (for comparison only; never use this).

    - no `torch.no_grad()` and no `.detach()`: every forward records an autograd graph, and the
      predictions (with their graphs) are all kept until the end of validation;
    - the prediction is converted to numpy three times, once per metric;
    - the metrics are computed per day in a Python loop with scipy.
    Returns {horizon: {"ic", "rankic", "ls_mean"}}.
    """
    from scipy import stats

    trainer.model.eval()
    n_stocks, horizons = trainer.cache.x.shape[1], trainer.horizons
    outs = []
    for i in range(0, len(days), days_per_batch):
        batch = trainer.grid.gather(days[i:i + days_per_batch])
        pred = trainer.forward(batch.x, batch.static, batch.day_id).pred  # graph kept alive
        outs.append((pred, batch.day_id + i, batch.stock))
    if keep is not None:
        keep.append(outs)
    target = np.where(trainer.cache.valid[days][:, :, None], trainer.cache.y[days], np.nan)

    def to_numpy_grid():  # called once per metric, as in the replaced code
        grid = np.full((len(days), n_stocks, len(horizons)), np.nan, dtype=np.float32)
        for pred, day_id, stock in outs:
            grid[day_id.numpy(), stock.numpy()] = pred.detach().cpu().numpy()
        return grid

    result = {}
    ic_grid, rank_grid, ls_grid = to_numpy_grid(), to_numpy_grid(), to_numpy_grid()
    min_stocks = trainer.cfg.data.min_stocks
    with warnings.catch_warnings():  # horizons with no known target yet: empty means
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, h in enumerate(horizons):
            ics, rics, lss = [], [], []
            for d in range(len(days)):
                p, t = ic_grid[d, :, k], target[d, :, k]
                m = np.isfinite(p) & np.isfinite(t)
                if m.sum() < min_stocks:
                    continue
                ics.append(stats.pearsonr(p[m], t[m])[0])
                rics.append(stats.spearmanr(rank_grid[d, m, k], t[m])[0])
                order = np.argsort(ls_grid[d, m, k])
                n_q = max(1, int(m.sum() * 0.1))
                lss.append(t[m][order[-n_q:]].mean() - t[m][order[:n_q]].mean())
            result[h] = {"ic": float(np.nanmean(ics)), "rankic": float(np.nanmean(rics)),
                         "ls_mean": float(np.mean(lss))}
    return result


def bench_validation(quick: bool, trainer, label: str) -> list[Row]:
    val = trainer.split.val[: (8 if quick else 16)]
    reps = 2 if quick else 3
    t_eval, t_anti = float("inf"), float("inf")
    for _ in range(reps):  # interleaved, best of each: both see the same background load
        t_eval = min(t_eval, best_of(lambda: trainer.evaluate(val), repeat=1))
        t_anti = min(t_anti, best_of(lambda: antipattern_evaluate(trainer, val), repeat=1))
    _, ours = trainer.evaluate(val)
    theirs = antipattern_evaluate(trainer, val)
    h0 = trainer.horizons[0]
    diff = abs((ours[h0]["rankic"] or 0.0) - theirs[h0]["rankic"])
    return [Row("validation", "validation: Trainer.evaluate vs anti-patterns", t_eval, "s", t_anti, "s",
                t_anti / t_eval, "anti-pattern time / evaluate time", "> 1x",
                "INFO" if quick else verdict(t_anti / t_eval > 1.0),
                note=f"{len(val)} validation days, {label}. Baseline (bench.training.antipattern_evaluate): "
                     "forward without torch.no_grad, predictions kept attached to their graphs, converted to numpy "
                     "three times, IC / RankIC / long-short in a per-day scipy loop. Same RankIC "
                     f"(|diff| {diff:.1e} for {h0}d). Interleaved, best of {reps} each. The model's forward "
                     "dominates both, so the ratio mostly shows what autograd recording costs at this size."
                     + (" Quick mode: tiny model, not judged." if quick else ""))]


# --------------------------------------------------------------------------------------------------
# memory growth


def _epochs_rss(trainer, epochs: int, leaky: bool) -> list[float]:
    val = trainer.split.val
    rss, kept = [], []
    for e in range(epochs):
        rec = trainer.train_epoch(e)
        if leaky:  # the replaced loop: attached predictions and loss tensors kept in the history
            antipattern_evaluate(trainer, val, keep=kept)
        else:
            trainer.evaluate(val)
        del rec
        gc.collect()
        rss.append(rss_now_mb())
    return rss


def bench_memory(quick: bool) -> list[Row]:
    from atft_core.data.cache.store import open_cache
    from atft_core.train.trainer import Trainer

    cache = open_cache(built_cache(synthetic_panel(120, 60, 8, horizons=(1, 5)), "tiny"))
    cfg = tiny_config(val_days=4 if quick else 10, window=10, max_train_days=2 if quick else 8)
    torch.manual_seed(0)
    rss = _epochs_rss(Trainer(cache, cfg), 10, leaky=False)
    growth = (rss[-1] - rss[0]) / rss[0]
    base_growth = None
    if not quick:
        base = _epochs_rss(Trainer(cache, cfg), 10, leaky=True)
        base_growth = (base[-1] - base[0]) / base[0]
    base_pct = None if base_growth is None else base_growth * 100
    return [Row("memory", "memory growth, epoch 1 -> 10", growth * 100, "%", base_pct, "%", rss[-1] / rss[0],
                "RSS after epoch 10 / after epoch 1", "< 2 % (ratio < 1.02)",
                verdict(growth < 0.02),
                note=f"current RSS (/proc/self/statm, after gc) of 10 epochs of {cfg.train.max_train_days} training "
                     f"days + validation of {cfg.data.split.val_days} days, tiny model on a 60-stock synthetic panel; "
                     f"RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB."
                     + ("" if quick else " Baseline: the same loop with the anti-pattern validation that keeps "
                                         "attached predictions across epochs.")
                     + (" Quick mode: no baseline run." if quick else ""))]


def run(quick: bool) -> list[Row]:
    from atft_core.train.trainer import Trainer

    cache, cfg, label = _demo_setup(quick)
    trainer = Trainer(cache, cfg)
    rows = bench_delivery(quick, trainer, label)
    rows += bench_validation(quick, trainer, label)
    del trainer
    gc.collect()
    rows += bench_memory(quick)
    return rows
