"""Training loop: every training day every epoch, validation without a graph, early stopping.

Guards against the ways a training loop fails silently:
- every training day is seen each epoch (a cap exists only as `TrainConfig.max_train_days`);
- days are reshuffled each epoch from (seed, epoch), whole days per batch;
- validation runs under `torch.no_grad()`, predictions are detached and copied into one
  preallocated grid, metrics are computed once, vectorised, from `atft_core.evaluate.metrics`;
- a non-finite loss stops training with an error naming the epoch and batch (no silent skip).

No host sync inside a training step: batches are gathered from host-made indices, the loss parts
and the finite check are summed on the device and read once every `TrainConfig.log_every` steps
(and at the epoch's end). With static shapes (`TrainConfig.static_shapes`) every batch is padded to
all stocks of the cache, so the step has one shape and can be compiled with ``reduce-overhead``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import resource
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atft_core.config import AtftConfig
from atft_core.data.cache.store import Cache
from atft_core.data.split import Split, make_split
from atft_core.errors import TrainingError
from atft_core.evaluate.predictor import score_predictions
from atft_core.model import ModelOutput, build_model
from atft_core.train import checkpoint
from atft_core.train.batches import DayBatchSampler, GridTensors
from atft_core.train.loss import compute_loss
from atft_core.train.prefetch import Prefetcher, batch_to, fits_on_device
from atft_core.train.schedule import WarmupCosine
from atft_core.train.syncs import allowed_sync
from atft_core.train.targets import training_targets
from atft_core.train.weight_average import WeightAverage

log = logging.getLogger("atft_core.train.trainer")

EpochCallback = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible; use --device auto or cpu")
    return torch.device(name)


def resolve_static_shapes(setting: str, device: torch.device) -> bool:
    """`TrainConfig.static_shapes`: "on", "off", or "auto" (on for CUDA, off elsewhere)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"train.static_shapes must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def score_days(cache: Cache, days: np.ndarray, pred: np.ndarray, min_stocks: int) -> dict[int, dict[str, Any]]:
    """Signal metrics per horizon of a [len(days), S, H] prediction grid (`score_predictions`)."""
    return score_predictions(cache, days, pred, min_stocks=min_stocks)


@torch.no_grad()
def predict_days(forward: Callable[..., ModelOutput], grid: GridTensors, days: np.ndarray, n_horizons: int, *,
                 device: torch.device, static_shapes: bool = False, graphs: bool = False,
                 amp: AbstractContextManager[Any] | None = None, days_per_batch: int = 8) -> np.ndarray:
    """Dense [len(days), S, H] float32 grid of ``forward(...).pred`` (NaN where the stock had no row that day).

    The one prediction path: `Trainer.predict` and a loaded checkpoint (`atft_core.train.predictor`)
    both run it. Days go `days_per_batch` at a time; with `static_shapes` every chunk is padded to
    that many days x all S stocks (one compiled shape). A grid kept off `device` (a CPU memory map
    feeding a GPU) is copied batch by batch. `forward` must already be in eval mode.
    """
    amp = amp if amp is not None else nullcontext()
    n_stocks = grid.x.shape[1]
    out = np.full((len(days), n_stocks, n_horizons), np.nan, dtype=np.float32)
    for i in range(0, len(days), days_per_batch):
        chunk = days[i:i + days_per_batch]
        batch = grid.gather_static(chunk, n_days=days_per_batch) if static_shapes else grid.gather(chunk)
        if grid.device != device:
            batch = batch_to(batch, device, non_blocking=True)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with amp:
            pred = forward(batch.x, batch.static, batch.day_id, batch.x_long).pred
        # one device->host copy per batch, already detached (no_grad) and in float32
        pred_np = pred.float().cpu().numpy()
        if static_shapes:
            dense = pred_np.reshape(days_per_batch, n_stocks, -1)[:len(chunk)]
            out[i:i + len(chunk)] = np.where(grid.valid_host[chunk][:, :, None], dense, np.nan)
        else:
            out[i + batch.day_id.cpu().numpy(), batch.stock.cpu().numpy()] = pred_np
    return out


def rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_rankic: float
    val_pred: np.ndarray  # [n_val_days, S, H] predictions of the best model, NaN where no row
    val_days: np.ndarray
    train_days_per_epoch: int
    loss_finite: bool = True
    checkpoint: Path | None = None
    val_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    # held-out test days, predicted once by the best epoch's weights (empty when the split has none)
    test_pred: np.ndarray | None = None  # [n_test_days, S, H]
    test_days: np.ndarray | None = None
    test_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    # set by atft_core.train.ensemble (also for one member): each member's seed, best epoch and scores,
    # and the checkpoints written
    members: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


class Trainer:
    """Fits ATFT-GAT-FAN on one cache with one `AtftConfig`.

    `on_epoch` receives each epoch's record (HPO uses it to report and prune; an exception raised
    there, such as optuna's TrialPruned, ends `fit` unchanged).
    """

    def __init__(self, cache: Cache, cfg: AtftConfig, *, split: Split | None = None,
                 monitor: Any = None, on_epoch: EpochCallback | None = None, model: torch.nn.Module | None = None):
        self.cache = cache
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cpu" and cfg.train.cpu_threads > 0:
            torch.set_num_threads(cfg.train.cpu_threads)  # process-wide: torch has no per-model setting
        seed_everything(cfg.train.seed)
        self.split = split or make_split(cache, cfg.data)
        # the whole grid on the device when it fits (a batch is then a device-side slice); otherwise it
        # stays a CPU memory map and a prefetch thread feeds pinned, non_blocking copies. On CPU the same
        # thread gathers the next batch over the memory map while the current step runs.
        self.resident = fits_on_device(cache, self.device)
        self.grid = GridTensors(cache, cfg.data.window, self.device if self.resident else "cpu",
                                long_blocks=cfg.model.long_blocks, long_block_days=cfg.model.long_block_days)
        if cfg.loss.target_transform != "zscore":  # the loss reads grid.y_z; metrics always use the raw y
            self.grid.y_z = torch.from_numpy(training_targets(cache.y, cache.y_z, cache.valid,
                                                              cfg.loss.target_transform)).to(self.grid.y_z.device)
        self.prefetch = self.device.type == "cpu" or not self.resident
        self.horizons = cache.horizons
        model = model or build_model(cache.x.shape[2], self.horizons, cfg.model, cache.feature_names)
        self.model = model.to(self.device)
        self.static_shapes = resolve_static_shapes(cfg.train.static_shapes, self.device)
        self.graphs = cfg.train.compile and self.static_shapes and self.device.type == "cuda"
        self.forward = (torch.compile(self.model, mode="reduce-overhead" if self.graphs else None,
                                      dynamic=False if self.static_shapes else None)
                        if cfg.train.compile else self.model)
        # validation, test and checkpoints use the averaged weights when train.ema_decay > 0
        self.average = WeightAverage(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.monitor = monitor
        self.on_epoch = on_epoch
        self.sampler = DayBatchSampler(self.split.train, cfg.data.days_per_batch, shuffle=True,
                                       seed=cfg.train.seed, max_days=cfg.train.max_train_days)
        # fused on CUDA: one kernel, and its step counters live on the device (no host read per step)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                     fused=True if self.device.type == "cuda" else None)
        total = max(1, len(self.sampler) * cfg.train.max_epochs)
        warmup = max(1, int(total * cfg.train.warmup_fraction))
        self.schedule = WarmupCosine(warmup, total)  # its scale is lowered by each plateau rewind
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.schedule)
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16)
                    if self.device.type == "cuda" and cfg.train.amp else nullcontext())

    # -- one step -----------------------------------------------------------------------------
    def gather(self, days: np.ndarray):
        """The training batch of `days`: padded to `days_per_batch` x all stocks with static shapes."""
        if self.static_shapes:
            return self.grid.gather_static(days, n_days=self.cfg.data.days_per_batch)
        return self.grid.gather(days)

    def _loss(self, batch) -> tuple[torch.Tensor, dict[str, Any]]:
        """Loss with gradient and its parts as 0-dim device tensors (nothing is read on the host)."""
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
        with self.amp:
            out = self.forward(batch.x, batch.static, batch.day_id, batch.x_long)
        out = ModelOutput(*(v.float() if torch.is_tensor(v) else v for v in out))  # bf16 autocast -> float32
        loss, parts = compute_loss(out, batch.y_z, batch.y_mask, batch.day_id, self.cfg.loss, self.horizons,
                                   quantile_levels=tuple(self.cfg.model.quantiles), layout=batch.layout, sync=False)
        if out.aux_loss is not None:  # FAN learns to predict back the frequency components it removed
            loss = loss + out.aux_loss
            parts["fan_aux"] = out.aux_loss.detach()
        return loss, parts

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        self.model.train()
        self.sampler.set_epoch(epoch)
        day_batches = list(self.sampler)  # host arrays: named in a NaN error without a device read
        log_every = max(1, int(self.cfg.train.log_every))
        names: list[str] = []
        sums: dict[str, float] = {}
        n_days = 0
        acc: torch.Tensor | None = None  # device: [loss, *parts] summed since the last read
        bad = torch.full((), -1.0, device=self.device)  # device: first batch with a non-finite loss
        bad_loss = torch.zeros((), device=self.device)
        source = Prefetcher(self.gather, day_batches, device=self.device) if self.prefetch else None
        batches = source if source is not None else (self.gather(days) for days in day_batches)
        if self.cfg.train.progress:
            from tqdm import tqdm
            # disable=None: a bar on a terminal, nothing in log files (the epoch log line says it all)
            batches = tqdm(batches, total=len(day_batches), desc=f"epoch {epoch}", leave=False, mininterval=1.0,
                           disable=None)
        active = self.monitor.active() if self.monitor is not None else nullcontext()
        with active, (source if source is not None else nullcontext()):  # the thread stops on any exit
            for b, batch in enumerate(batches):
                loss, parts = self._loss(batch)
                n_days += len(day_batches[b])
                names = names or [k for k, v in parts.items() if torch.is_tensor(v)]
                first_bad = torch.isfinite(loss).logical_not() & (bad < 0)
                bad = torch.where(first_bad, float(b), bad)
                bad_loss = torch.where(first_bad, loss.detach().float(), bad_loss)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                self.opt.step()
                self.sched.step()
                if self.average is not None:
                    self.average.update(self.model)
                vec = torch.stack([loss.detach().float(), *(parts[k].float() for k in names)])
                acc = vec if acc is None else acc + vec
                if (b + 1) % log_every == 0 or b + 1 == len(day_batches):
                    self._read(acc, bad, bad_loss, names, sums, epoch, day_batches)  # the one sync
                    acc = None
        n_batches = max(1, len(day_batches))
        return {"train_loss": sums.get("loss", 0.0) / n_batches, "train_days": n_days,
                **{f"train_{k}": v / n_batches for k, v in sums.items() if k not in ("loss", "total")},
                "train_n_days": n_days / n_batches}

    def _read(self, acc: torch.Tensor, bad: torch.Tensor, bad_loss: torch.Tensor, names: list[str],
              sums: dict[str, float], epoch: int, day_batches: list[np.ndarray]) -> None:
        """Read the summed parts and the finite check in one transfer; raise on a non-finite loss."""
        with allowed_sync():
            host = torch.cat([acc, bad.view(1).to(acc.dtype), bad_loss.view(1).to(acc.dtype)]).cpu().tolist()
        b_bad, loss_bad = int(host[-2]), host[-1]
        if b_bad >= 0:
            dates = [self.cache.dates[int(d)] for d in day_batches[b_bad]]
            raise TrainingError(f"non-finite loss ({loss_bad}) at epoch {epoch}, batch {b_bad} (days {dates}). "
                                "Lower the learning rate or check the input features for extreme values")
        for k, v in zip(["loss", *names], host[:-2], strict=True):
            sums[k] = sums.get(k, 0.0) + v
        log.debug("epoch %d: running train loss sum %.4f", epoch, sums["loss"])

    # -- validation ---------------------------------------------------------------------------
    def predict(self, days: np.ndarray, days_per_batch: int = 8) -> np.ndarray:
        """Dense [len(days), S, H] prediction grid of `eval_model` (NaN where the stock had no row that day)."""
        model = self.eval_model
        model.eval()
        forward = self.forward if self.average is None else model
        return predict_days(forward, self.grid, days, len(self.horizons), device=self.device,
                            static_shapes=self.static_shapes, graphs=self.graphs, amp=self.amp,
                            days_per_batch=days_per_batch)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that predict: the running average when enabled, else the trained weights."""
        return self.model if self.average is None else self.average.model

    def evaluate(self, days: np.ndarray) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        pred = self.predict(days)
        return pred, score_days(self.cache, days, pred, self.cfg.data.min_stocks)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, checkpoint_path: Path | None = None) -> TrainResult:
        cfg = self.cfg
        history: list[dict[str, Any]] = []
        best = (-math.inf, -1)
        best_pred: np.ndarray | None = None
        best_metrics: dict[int, dict[str, Any]] = {}
        best_state: dict[str, torch.Tensor] | None = None
        rewind: dict[str, Any] | None = None
        stale = 0
        h0 = self.horizons[0]
        start = self.resume(cfg.train.resume_from) if cfg.train.resume_from else 0
        if start >= cfg.train.max_epochs:
            raise TrainingError(f"checkpoint {cfg.train.resume_from} already reached epoch {start - 1}; raise "
                                f"train.max_epochs (now {cfg.train.max_epochs}) to train further")
        log.info("training on %d days/epoch (%d validation days, embargo %d), %d parameters, device %s",
                 len(self.sampler.epoch_days()), len(self.split.val), self.split.embargo,
                 sum(p.numel() for p in self.model.parameters()), self.device)
        for epoch in range(start, cfg.train.max_epochs):
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"epoch": epoch, **self.train_epoch(epoch)}
            rec["train_seconds"] = time.perf_counter() - t0
            pred, metrics = self.evaluate(self.split.val)
            m = metrics[h0]
            rec.update({"val_ic": m["ic"], "val_rankic": m["rankic"], "val_rankic_ir": m["rankic_ir"],
                        "val_sharpe": m["ls_sharpe"], "val_ls_mean": m["ls_mean"],
                        **{f"val_rankic_{h}d": metrics[h]["rankic"] for h in self.horizons},
                        "lr": self.sched.get_last_lr()[0], "seconds": time.perf_counter() - t0,
                        "rss_mb": rss_mb()})
            history.append(rec)
            log.info("epoch %d: loss %.4f | val IC %s RankIC %s | %d days | %.1fs", epoch, rec["train_loss"],
                     _fmt(m["ic"]), _fmt(m["rankic"]), rec["train_days"], rec["seconds"])
            score = m["rankic"] if m["rankic"] is not None else -math.inf
            if score > best[0] or best_pred is None:
                best, best_pred, best_metrics, stale = (score, epoch), pred, metrics, 0
                if len(self.split.test):  # kept to score the test days once, with the epoch validation chose
                    best_state = {k: v.detach().clone() for k, v in self.eval_model.state_dict().items()}
                if checkpoint_path is not None:
                    self.save_checkpoint(checkpoint_path, epoch, m["rankic"])
                if cfg.train.plateau_lr_factor > 0:
                    rewind = self.snapshot()
            else:
                stale += 1
                if rewind is not None and stale < cfg.train.patience:
                    self.rewind(rewind, cfg.train.plateau_lr_factor)
                    rec["rewound_to"] = best[1]
                    log.info("epoch %d did not improve: back to epoch %d's weights, learning rate x%g",
                             epoch, best[1], self.schedule.scale)
            if self.on_epoch is not None:
                self.on_epoch(rec)
            if stale >= cfg.train.patience:
                log.info("early stop: validation RankIC has not improved for %d epochs", stale)
                break
        assert best_pred is not None
        test_pred, test_metrics = None, {}
        if best_state is not None:
            self.eval_model.load_state_dict(best_state)
            test_pred, test_metrics = self.evaluate(self.split.test)
            log.info("test (%d days, epoch %d): RankIC %s", len(self.split.test), best[1],
                     _fmt(test_metrics[h0]["rankic"]))
        return TrainResult(history=history, best_epoch=best[1], best_rankic=best[0], val_pred=best_pred,
                           val_days=self.split.val, train_days_per_epoch=history[0]["train_days"] if history else 0,
                           checkpoint=checkpoint_path, val_metrics=best_metrics, test_pred=test_pred,
                           test_days=self.split.test if test_pred is not None else None, test_metrics=test_metrics)

    def snapshot(self) -> dict[str, Any]:
        """Copies of what training has learnt so far (weights, average, optimiser moments), for `rewind`."""
        clone = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {"model": clone, "opt": copy.deepcopy(self.opt.state_dict()),
                "average": None if self.average is None else self.average.state()}

    def rewind(self, snap: dict[str, Any], lr_factor: float) -> None:
        """Back to a `snapshot` and a lower learning rate: the next epoch refines the best weights
        instead of moving further from them (the schedule's step count runs on)."""
        self.model.load_state_dict(snap["model"])
        self.opt.load_state_dict(snap["opt"])  # also brings back the snapshot's learning rate: set below
        if self.average is not None:
            self.average.load(snap["average"])
        self.schedule.scale *= lr_factor
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs, strict=True):
            group["lr"] = base * self.schedule(self.sched.last_epoch)  # the next step already runs at the lower rate

    def save_checkpoint(self, path: Path, epoch: int, val_rankic: float | None) -> None:
        """Weights, optimiser and scheduler state, config, and a description of the data (see checkpoint.py)."""
        checkpoint.save_checkpoint(path, model=self.eval_model, optimizer=self.opt, scheduler=self.sched,
                                   config=self.cfg.to_dict(), cache=self.cache, epoch=epoch, val_rankic=val_rankic)

    def resume(self, path: str | Path) -> int:
        """Continue from a checkpoint of the same panel layout; returns the first epoch still to run."""
        ckpt = checkpoint.restore(path, self.cache, self.model, self.opt, self.sched)
        if self.average is not None:  # the checkpoint holds the averaged weights: both continue from them
            self.average.reset(self.model)
        log.info("resumed from %s (epoch %d, val RankIC %s)", path, ckpt["epoch"], _fmt(ckpt["val_rankic"]))
        return int(ckpt["epoch"]) + 1


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"
