"""ATFT-GAT-FAN behind the one predict contract, and `load_model` for a checkpoint written by training.

`ModelPredictor` satisfies `atft_core.evaluate.predictor.Predictor`: ``fit(cache, split)`` trains one
model with the `Trainer` (the best validation epoch's weights are kept), ``predict(cache, days)``
gives ``[D, S, H]`` through the trainer's own prediction path (`predict_days`: same windows, same
batching). `load_model(checkpoint)` rebuilds the model from the self-describing checkpoint (its
config and the data description of `atft_core.train.checkpoint`), so a run folder's
``checkpoint.pt`` is all it takes to rank stocks on any day of a panel with the same layout.
`predict_on_day` turns one day's grid into the table `atft predict` writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from atft_core.config import AtftConfig
from atft_core.data.cache.store import Cache
from atft_core.data.split import Split
from atft_core.model import build_model
from atft_core.train import checkpoint
from atft_core.train.batches import GridTensors
from atft_core.train.checkpoint import CheckpointMismatch
from atft_core.train.trainer import Trainer, predict_days, resolve_device, resolve_static_shapes

log = logging.getLogger("atft_core.train.predictor")


class ModelPredictor:
    """ATFT-GAT-FAN as a `Predictor`: weights, the config they were built with, and the data they assume.

    Args:
        cfg: the run's config (model sizes, window, amp and static-shape settings).
        model: trained weights, or None until `fit`.
        data: `checkpoint.describe_data` of the cache the weights were trained on (checked against
            every cache `predict` is given); None until `fit`.
        device: "auto" (a GPU when there is one), "cpu" or "cuda": where `predict` runs.
        source: how errors name these weights (the checkpoint path).
    """

    def __init__(self, cfg: AtftConfig, model: torch.nn.Module | None = None, data: dict[str, Any] | None = None,
                 *, device: str = "auto", source: str = "model"):
        self.cfg = cfg
        self.model = model
        self.data = data
        self.device = resolve_device(device)
        if self.device.type == "cpu" and cfg.train.cpu_threads > 0:
            torch.set_num_threads(cfg.train.cpu_threads)  # as the Trainer: process-wide, torch has no per-model one
        self.source = source
        self.epoch: int | None = None  # the checkpoint's epoch and validation RankIC (`load_model`)
        self.val_rankic: float | None = None

    @property
    def horizons(self) -> tuple[int, ...]:
        if self.data is None:
            raise ValueError(f"{self.source} is not fitted yet: call fit(cache, split) or use load_model(checkpoint)")
        return tuple(int(h) for h in self.data["horizons"])

    def fit(self, cache: Cache, split: Split) -> ModelPredictor:
        """Train one model on ``split.train`` (validation picks the epoch) and keep the best epoch's weights."""
        with tempfile.TemporaryDirectory(prefix="atft-fit-") as tmp:
            path = Path(tmp) / "checkpoint.pt"
            Trainer(cache, self.cfg, split=split).fit(checkpoint_path=path)  # writes the best epoch's weights
            fitted = load_model(path, device=self.device.type)
        self.model, self.data = fitted.model, fitted.data
        return self

    def predict(self, cache: Cache, days: np.ndarray, days_per_batch: int = 8) -> np.ndarray:
        """``[len(days), S, H]`` float32 scores (NaN where the stock had no row that day), H = ``cache.horizons``.

        Raises `CheckpointMismatch` when the cache's layout (features, kinds, vocabularies, horizons,
        normalisation) is not the one the weights were trained on, and ValueError for a day with
        fewer than ``data.window`` trading days of history in the cache.
        """
        if self.model is None or self.data is None:
            raise ValueError(f"{self.source} is not fitted yet: call fit(cache, split) or use load_model(checkpoint)")
        checkpoint.check_compatible({"data": self.data}, cache, source=self.source)
        days = np.asarray(days, dtype=np.int64).reshape(-1)
        window = self.cfg.data.window
        short = days[days < window - 1]
        if len(short):
            raise ValueError(f"{cache.dates[int(short[0])]} has {int(short[0]) + 1} trading day(s) of history in "
                             f"this panel, the model reads windows of {window}: pick a later date")
        model = self.model.to(self.device).eval()
        amp = (torch.autocast("cuda", dtype=torch.bfloat16)
               if self.device.type == "cuda" and self.cfg.train.amp else None)
        # the grid stays a CPU memory map: predicting a few days must not copy the whole panel to a GPU
        grid = GridTensors(cache, window, "cpu", long_blocks=self.cfg.model.long_blocks,
                           long_block_days=self.cfg.model.long_block_days)
        return predict_days(model, grid, days, len(self.horizons), device=self.device,
                            static_shapes=resolve_static_shapes(self.cfg.train.static_shapes, self.device),
                            amp=amp, days_per_batch=days_per_batch)


def load_model(checkpoint_path: str | Path, *, device: str = "auto") -> ModelPredictor:
    """Rebuild ATFT-GAT-FAN from a checkpoint written by training (`Trainer.save_checkpoint`).

    The checkpoint holds the config (model sizes, window) and the data description (features in
    input order, horizons): enough to build the model without the cache, whose layout `predict`
    checks. A seed ensemble's ``checkpoint.pt`` is its member 0 (the others are
    ``checkpoint.member{k}.pt``). Raises FileNotFoundError for a missing file and
    `CheckpointMismatch` for a file that is not a readable atft checkpoint of this version.
    """
    path = Path(checkpoint_path)
    ckpt = checkpoint.load_checkpoint(path)
    try:
        cfg = AtftConfig.from_dict(ckpt["config"])
        data = ckpt["data"]
        model = build_model(len(data["features"]), data["horizons"], cfg.model, list(data["features"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise CheckpointMismatch(f"checkpoint {path} cannot be rebuilt by this version of atft ({first}); "
                                 "retrain, or predict with the version that wrote it") from None
    # The trainer predicts with its weight average, whose weights do not require grad (its plain weights,
    # used when train.ema_decay = 0, do). PyTorch's matmul picks its kernel by that flag, so mirror it:
    # the predictions are then the trainer's bit for bit.
    model.requires_grad_(cfg.train.ema_decay <= 0)
    rankic = ckpt.get("val_rankic")
    log.info("loaded %s: epoch %s, validation RankIC %s, %d features, horizons %s", path, ckpt.get("epoch"),
             "n/a" if rankic is None else f"{rankic:+.4f}", len(data["features"]), data["horizons"])
    predictor = ModelPredictor(cfg, model, data, device=device, source=f"checkpoint {path}")
    predictor.epoch, predictor.val_rankic = ckpt.get("epoch"), ckpt.get("val_rankic")
    return predictor


class MemberMean:
    """A trained seed ensemble's `predict`: the members' mean, the prediction training scored (no `fit`:
    a new model is a new run, `atft train`).

    ``checkpoint.pt`` alone is member 0; `load_members` finds ``checkpoint.member{k}.pt`` beside it.
    """

    def __init__(self, members: list[ModelPredictor]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = members
        self.cfg, self.data, self.source = members[0].cfg, members[0].data, members[0].source

    @property
    def horizons(self) -> tuple[int, ...]:
        return self.members[0].horizons

    def predict(self, cache: Cache, days: np.ndarray, days_per_batch: int = 8) -> np.ndarray:
        preds = [m.predict(cache, days, days_per_batch) for m in self.members]
        # as training combined them (atft_core.train.ensemble): every member predicts the same cells
        return np.mean(np.stack(preds), axis=0, dtype=np.float64).astype(np.float32)


def member_paths(checkpoint_path: str | Path) -> list[Path]:
    """``checkpoint.pt`` and its ``checkpoint.member{k}.pt`` siblings (k = 1, 2, ... while they exist)."""
    path = Path(checkpoint_path)
    out = [path]
    while (nxt := path.with_name(f"{path.stem}.member{len(out)}{path.suffix}")).is_file():
        out.append(nxt)
    return out


def load_members(checkpoint_path: str | Path, *, device: str = "auto") -> MemberMean:
    """Every member of the run that wrote `checkpoint_path` (one for a single model), as their mean."""
    return MemberMean([load_model(p, device=device) for p in member_paths(checkpoint_path)])


def find_day(cache: Cache, date: str | None) -> int:
    """The cache day of `date` (YYYY-MM-DD); None: the panel's last day (where no target is known yet)."""
    if date is None:
        return len(cache.dates) - 1
    try:
        wanted = dt.date.fromisoformat(str(date).strip()).isoformat()
    except ValueError:
        raise ValueError(f"--date {date!r} is not a date: write it as YYYY-MM-DD") from None
    try:
        return cache.dates.index(wanted)
    except ValueError:
        raise ValueError(f"{wanted} is not a trading day of {cache.manifest.get('source')} (it has "
                         f"{len(cache.dates)} days, {cache.dates[0]} .. {cache.dates[-1]}): pick one of "
                         "its dates") from None


def predict_on_day(predictor: ModelPredictor, cache: Cache, day: int) -> pl.DataFrame:
    """Every stock with a row on cache day `day`: Date, Code, then ``score_{h}d`` and ``rank_{h}d`` per horizon.

    ``rank_{h}d`` is 1 for the highest score of the day, N for the lowest (ties: the cache's stock
    order). Rows are sorted by the first horizon's rank.
    """
    pred = predictor.predict(cache, np.array([day]))[0]  # [S, H]
    stocks = np.flatnonzero(cache.valid[day])
    cols: dict[str, Any] = {"Date": pl.Series([cache.dates[day]] * len(stocks)).str.to_date(),
                            "Code": np.asarray(cache.codes)[stocks]}
    for k, h in enumerate(cache.horizons):
        cols[f"score_{h}d"] = pred[stocks, k].astype(np.float64)
    df = pl.DataFrame(cols).with_columns(pl.col(f"score_{h}d").fill_nan(None) for h in cache.horizons)
    df = df.with_columns(pl.col(f"score_{h}d").rank(method="ordinal", descending=True).alias(f"rank_{h}d")
                         for h in cache.horizons)
    h0 = cache.horizons[0]
    return df.select("Date", "Code", *(c for h in cache.horizons for c in (f"score_{h}d", f"rank_{h}d"))
                     ).sort(f"rank_{h0}d", nulls_last=True)


def prediction_table(df: pl.DataFrame, horizons: tuple[int, ...], top: int = 10, bottom: int = 5) -> str:
    """The `top` and `bottom` stocks by the first horizon's score, as aligned text (codes, scores, ranks)."""
    h0 = horizons[0]
    head = f"{'rank':>5}  {'code':<8}" + "".join(f"  {f'{h}d score':>10} {'(rank)':>7}" for h in horizons)

    def rows(part: pl.DataFrame) -> list[str]:
        out = []
        for r in part.iter_rows(named=True):
            cells = "".join(f"  {_score(r[f'score_{h}d']):>10} {_rank(r[f'rank_{h}d']):>7}" for h in horizons)
            out.append(f"{_rank(r[f'rank_{h0}d'], bare=True):>5}  {str(r['Code']):<8}{cells}")
        return out

    ranked = df.filter(pl.col(f"rank_{h0}d").is_not_null())
    lines = [f"top {min(top, len(ranked))} by the {h0}d score", head, *rows(ranked.head(top))]
    if len(ranked) > top:
        lines += ["", f"bottom {min(bottom, len(ranked) - top)}", head,
                  *rows(ranked.tail(min(bottom, len(ranked) - top)))]
    return "\n".join(lines)


def _score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.4f}"


def _rank(v: int | None, bare: bool = False) -> str:
    if v is None:
        return "n/a"
    return str(v) if bare else f"({v})"
