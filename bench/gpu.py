"""The GPU benchmark, for a lent GPU machine: does the GPU wait for data?

    python -m bench.gpu                       # 4,000 stocks x 2,500 days x 64 features, CUDA
    python -m bench.gpu --device cpu --quick  # tiny, on CPU: checks the script end to end (CI)

1. Builds a synthetic cache of `--stocks` x `--days` x `--features` (default 4,000 x 2,500 x 64).
   Default `--source grid` (`bench.synthetic_cache`): a direct synthetic grid writer that fills the
   cache's arrays with numpy (random features, a planted signal on two of them, per-day standardised
   targets, 2 % missing cells) and publishes them with the cache module's own writer, in seconds.
   `--source demo` instead runs the demo market generator and `build_cache` on its parquet (the real build path;
   minutes at this size). Either way the cache is reused on the next run.
2. Runs three variants of the same training, each `--epochs` epochs of at most `--max-train-days`
   days (time-bounded) plus validation on `--val-days` days:
   - resident:   `run_dryrun` as is: the whole grid moved to the device once, a batch is a device-side
                 slice (no workers);
   - prefetch:   the grid stays a CPU memory map and `atft_core.train.prefetch.Prefetcher` gathers the next
                 batch on a thread (pinned memory, non_blocking copy) while the step runs: the path for
                 a cache that does not fit;
   - dataloader: the replaced system's path: a CPU `torch.utils.data.DataLoader` (one worker) over a
                 per-sample Dataset (`__getitem__` per stock-day) + default collate, copied to the device.
3. Reports per variant: GPU utilisation while training steps run (GpuMonitor summary; target >= 90 %
   for the resident path), train seconds per epoch, samples (stock-days) per second, peak memory
   (torch max allocated, NVML device peak), validation RankIC. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import bench_dir, fmt_num, machine_info, tiny_config
from bench.synthetic_cache import demo_source_cache, synthetic_grid_cache

log = logging.getLogger("bench.gpu")
VARIANTS = ("resident", "prefetch", "dataloader")
UTIL_TARGET = 0.90


# --------------------------------------------------------------------------------------------------
# alternative batch sources plugged into an unmodified Trainer


def _collate_day_batch(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """default_collate, plus the batch's day positions (a dict, so the DataLoader can pin it)."""
    from torch.utils.data import default_collate

    b = default_collate(samples)
    b["days"], b["day_id"] = torch.unique(b.pop("day"), return_inverse=True)  # batch days in sorted order
    return b


def _to_batch(b: dict[str, torch.Tensor], device: torch.device):
    from atft_core.train.batches import Batch

    b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
    return Batch(x=b["x"].float(), static=b["static"], y=b["y"], y_z=b["y_z"], y_mask=b["y_mask"],
                 day_id=b["day_id"], stock=b["stock"], days=b["days"])


def _worker_context():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "bench.data"])  # each worker then forks with torch imported
    return ctx


class _DaySamples:
    """batch_sampler for the per-sample Dataset: one list of (day, stock) sample ids per day batch."""

    def __init__(self, ds, day_batches: list[np.ndarray]):
        self.ds, self.day_batches = ds, day_batches

    def __iter__(self):
        for days in self.day_batches:
            yield np.concatenate([self.ds.samples_of_day(int(t)) for t in sorted(np.asarray(days).tolist())]).tolist()

    def __len__(self) -> int:
        return len(self.day_batches)


class FeedGrid:
    """Stands in for `Trainer.grid`: training batches come from a prefetch thread or a DataLoader.

    `FeedSampler.__iter__` announces each epoch's day batches; `gather(days)` then hands out the
    next fed batch when `days` is the next announced batch, and otherwise (validation, which calls
    `gather` directly) gathers synchronously from the host grid and copies to the device.
    """

    def __init__(self, cache, window: int, device: torch.device, kind: str, workers: int = 1):
        from atft_core.train.batches import GridTensors

        self.host = GridTensors(cache, window, "cpu")
        self.cache, self.window, self.device, self.kind, self.workers = cache, window, device, kind, workers
        self._expected: collections.deque = collections.deque()
        self._it = None

    def begin_epoch(self, day_batches: list[np.ndarray]) -> None:
        from atft_core.train.prefetch import Prefetcher

        self._expected = collections.deque(np.asarray(d) for d in day_batches)
        if self.kind == "prefetch":
            self._it = iter(Prefetcher(self.host.gather, day_batches, device=self.device, depth=2))
        elif self.kind == "dataloader":
            from torch.utils.data import DataLoader

            from bench.data import PerSampleDataset

            ds = PerSampleDataset(self.cache, self.window)
            # forkserver, not fork: forking a process that already runs threads (prefetchers, the cache
            # build's pool, BLAS) can leave the child holding a lock nobody will release; under pytest
            # that showed as "DataLoader worker exited unexpectedly" after other tests had run.
            loader = DataLoader(ds, batch_sampler=_DaySamples(ds, day_batches), num_workers=self.workers,
                                collate_fn=_collate_day_batch, pin_memory=self.device.type == "cuda",
                                multiprocessing_context=_worker_context() if self.workers else None)
            self._it = (_to_batch(b, self.device) for b in loader)
        else:
            raise ValueError(self.kind)

    def gather(self, days):
        from atft_core.train.prefetch import batch_to

        days = np.asarray(days)
        if self._expected and np.array_equal(self._expected[0], days):
            self._expected.popleft()
            batch = next(self._it)
            if not self._expected:  # run the source to its end: threads and workers stop now, not at gc
                for _ in self._it:
                    raise RuntimeError("the batch source yielded more batches than the sampler announced")
                self._it = None
            if self.kind == "dataloader" and not np.array_equal(np.sort(days), batch.days.cpu().numpy()):
                raise RuntimeError("DataLoader batch out of order")
            return batch
        return batch_to(self.host.gather(days), self.device)

    def __getattr__(self, name: str):
        # everything else (the grid's shapes, its host-side validity) is the host grid's
        return getattr(self.host, name)


class FeedSampler:
    """Wraps `Trainer.sampler`: same day batches, announced to a `FeedGrid` at the start of each epoch."""

    def __init__(self, inner, feed: FeedGrid):
        self._inner, self._feed = inner, feed

    def __iter__(self):
        batches = list(self._inner)
        self._feed.begin_epoch(batches)
        return iter(batches)

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


# --------------------------------------------------------------------------------------------------
# one variant


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(kind: str, cache_path: Path, cfg, out_dir: Path) -> dict[str, Any]:
    from atft_core.data.cache.store import open_cache
    from atft_core.train.gpu_monitor import monitor_for_device
    from atft_core.train.trainer import Trainer, resolve_device

    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cache = open_cache(cache_path)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"variant": kind, "device": str(device)}
    if kind == "resident":
        from atft_core.dryrun import run_dryrun

        result = run_dryrun(cache_path, cfg, out_dir / kind)
        history, gpu = result.history, result.gpu
        res["gate_passed"] = result.gate.passed
        res["val_rankic"] = result.metrics.get("val_rankic")
    else:
        monitor = monitor_for_device(device)
        monitor.start()
        # FeedGrid hands out eager batches only (this variant compares data feeding, not shapes)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, static_shapes="off"))
        try:
            trainer = Trainer(cache, cfg, monitor=monitor)
            feed = FeedGrid(cache, cfg.data.window, device, kind)
            trainer.grid = feed  # the device-resident grid built by __init__ is released here
            trainer.sampler = FeedSampler(trainer.sampler, feed)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            fit = trainer.fit()
        finally:
            monitor.stop()
        history, gpu = fit.history, monitor.summary()
        res["val_rankic"] = fit.val_metrics[min(fit.val_metrics)]["rankic"] if fit.val_metrics else None
    _sync(device)
    res["wall_s"] = time.perf_counter() - t0
    from atft_core.data.split import make_split

    split = make_split(cache, cfg.data)
    stocks_per_day = float(cache.valid[split.train].sum(axis=1).mean())
    train_s = [h["train_seconds"] for h in history]
    days_per_epoch = [h["train_days"] for h in history]
    res.update({
        "epochs": len(history), "train_days_per_epoch": days_per_epoch[0] if days_per_epoch else 0,
        "epoch_train_s": float(np.mean(train_s)) if train_s else None,
        "epoch_total_s": float(np.mean([h["seconds"] for h in history])) if history else None,
        "samples_per_s": (float(np.sum(days_per_epoch) * stocks_per_day / np.sum(train_s)) if train_s else None),
        "stocks_per_day": stocks_per_day,
        "gpu_available": gpu.get("available"), "gpu_reason": gpu.get("reason"),
        "gpu_util_mean": gpu.get("util_mean"), "gpu_util_median": gpu.get("util_median"),
        "gpu_samples": gpu.get("n_samples"), "gpu_mem_peak_mb": gpu.get("mem_peak_mb"),
        "torch_max_allocated_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                                   else None),
    })
    return res


# --------------------------------------------------------------------------------------------------
# report


def format_table(results: list[dict[str, Any]]) -> str:
    head = ["variant", "GPU util (mean)", "train s/epoch", "samples/s", "vs resident", "peak alloc MB",
            "NVML peak MB", "val RankIC", "verdict"]
    ref = next((r for r in results if r["variant"] == "resident" and r.get("samples_per_s")), None)
    rows = [head]
    for r in results:
        util = r.get("gpu_util_mean")
        if r["variant"] == "resident":
            verdict = ("n/a (no GPU)" if util is None else ("PASS" if util >= UTIL_TARGET else "FAIL")) + \
                f" (util >= {UTIL_TARGET:.0%})"
        else:
            verdict = "comparison"
        rel = (r["samples_per_s"] / ref["samples_per_s"]) if ref and r.get("samples_per_s") else None
        rk = r.get("val_rankic")
        rows.append([r["variant"], "n/a" if util is None else f"{util:.0%}", fmt_num(r.get("epoch_train_s"), "s"),
                     fmt_num(r.get("samples_per_s")), "n/a" if rel is None else f"{rel:.2f}x",
                     fmt_num(r.get("torch_max_allocated_mb")), fmt_num(r.get("gpu_mem_peak_mb")),
                     "n/a" if rk is None else f"{rk:+.4f}", verdict])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cpu | auto (cpu only checks the script)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: 60 stocks x 120 days x 16 features, tiny model, "
                   "1 epoch of 3 days")
    p.add_argument("--stocks", type=int, default=None)
    p.add_argument("--days", type=int, default=None)
    p.add_argument("--features", type=int, default=None)
    p.add_argument("--source", choices=["grid", "demo"], default="grid",
                   help="grid: direct synthetic grid writer (default, seconds); demo: demo generator + build_cache")
    p.add_argument("--model", choices=["tiny", "demo", "reference"], default=None,
                   help="model sizes (default: demo; tiny with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per variant (default 2; 1 with --quick)")
    p.add_argument("--max-train-days", type=int, default=None, help="cap per epoch (default 300; 4 with --quick)")
    p.add_argument("--val-days", type=int, default=None, help="validation days (default 60; 5 with --quick)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--compile", action="store_true", help="TrainConfig.compile for every variant")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/gpu_results.json)")
    p.add_argument("--work-dir", type=Path, default=None, help="caches and run folders (default .atft/bench/gpu)")
    return p


def _config(a: argparse.Namespace, model: str, epochs: int):
    """The training config every variant runs: model size, epochs, day caps and device from the arguments."""
    from atft_core.config import AtftConfig, ModelConfig

    if model == "tiny":
        cfg = tiny_config(a.device, max_epochs=epochs, window=20)
    else:
        cfg = AtftConfig()
        if model == "reference":
            cfg.model = ModelConfig.reference()
    cfg.train.device = a.device
    cfg.train.max_epochs = epochs
    cfg.train.progress = False
    cfg.train.patience = 10**6
    cfg.train.compile = a.compile
    cfg.train.max_train_days = a.max_train_days or (3 if a.quick else 300)
    cfg.data.split.val_days = a.val_days or (5 if a.quick else 60)
    cfg.data.split.test_days = 0
    return cfg


def _run_variants(variants: list[str], cache_path: Path, cfg, work: Path) -> list[dict[str, Any]]:
    runs_dir = work / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    results = []
    for kind in variants:
        log.info("variant %s ...", kind)
        r = run_variant(kind, cache_path, cfg, runs_dir)
        log.info("variant %s: %s", kind, {k: v for k, v in r.items() if k not in ("gpu_reason",)})
        results.append(r)
    shutil.rmtree(runs_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("atft_core.train.trainer", "atft_core.model", "atft_core.model.atft_gat_fan"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    stocks = a.stocks or (60 if a.quick else 4000)
    days = a.days or (120 if a.quick else 2500)
    features = a.features or (16 if a.quick else 64)
    model = a.model or ("tiny" if a.quick else "demo")
    epochs = a.epochs or (1 if a.quick else 2)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; known: {VARIANTS}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU visible: use --device cpu --quick to check the script on CPU")
    work = a.work_dir or bench_dir() / "gpu"
    out = a.out or Path(__file__).resolve().parent / "gpu_results.json"

    t0 = time.perf_counter()
    if a.source == "grid":
        cache_path = synthetic_grid_cache(stocks, days, features, root=work)
    else:
        cache_path = demo_source_cache(stocks, days, features)
    t_cache = time.perf_counter() - t0
    log.info("cache %s ready in %.1f s", cache_path, t_cache)

    cfg = _config(a, model, epochs)
    results = _run_variants(variants, cache_path, cfg, work)
    table = format_table(results)
    machine = machine_info()
    report = {"machine": machine, "cache": {"path": str(cache_path), "stocks": stocks, "days": days,
                                            "features": features, "source": a.source, "seconds": round(t_cache, 1)},
              "config": {"model": model, "epochs": epochs, "max_train_days": cfg.train.max_train_days,
                         "val_days": cfg.data.split.val_days, "window": cfg.data.window,
                         "days_per_batch": cfg.data.days_per_batch, "compile": a.compile, "device": a.device},
              "util_target": UTIL_TARGET, "results": results, "table": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\n{stocks} stocks x {days} days x {features} features ({a.source} source, cache ready in {t_cache:.1f} s), "
          f"model {model}, {epochs} epochs of <= {cfg.train.max_train_days} training days, device {a.device}, "
          f"{machine.get('gpu', machine['cpu'])}")
    print(table)
    if any(r.get("gpu_available") is False for r in results) and a.device != "cpu":
        print(f"GPU monitor: {results[0].get('gpu_reason')}")
    print(f"wrote {out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
