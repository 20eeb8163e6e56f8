"""The objective: an Optuna `Trial` in, the best epoch's validation RankIC out (maximised).

    study.optimize(Objective(cache_path, base_cfg, SearchSpace.load(), max_epochs=2), n_trials=10)

works from a notebook on any study. Each call samples the search space, builds the trial's config,
and hands it to a score function (`train_score` by default: train, report every epoch to the pruner).

What ends a trial, and how it is recorded (user attributes `fail_kind` and `fail_reason` on FAIL):
- it finishes: COMPLETE with its value;
- the pruner stops it after an epoch (`report_epoch` raises `optuna.TrialPruned`): PRUNED;
- it diverges (non-finite loss), runs out of memory, returns a non-finite value or raises
  `TrialFailed`: FAIL, re-raised as `TrialFailed` so that `study.optimize(..., catch=(TrialFailed,))`
  goes on with the next trial. Never a made-up value: a failure must not look like a poor configuration;
- anything else is a bug: FAIL with kind `crashed`, and the exception propagates.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from atft_core.config import AtftConfig
from atft_core.errors import TrainingError
from atft_core.hpo.config import FAIL_KIND_ATTR, FAIL_REASON_ATTR, PROCESS_ATTR, WORKER_ATTR
from atft_core.hpo.liveness import this_process
from atft_core.hpo.space import SearchSpace, trial_config

# A score function: (trial, the trial's full config, cache path) -> value. Module-level, so that
# worker processes receive it by reference when the Objective is pickled.
Score = Callable[[optuna.Trial, AtftConfig, Path], float]


class TrialFailed(RuntimeError):
    """A trial that cannot be scored: recorded as FAIL with its reason; the study goes on."""


def report_epoch(trial: optuna.Trial, epoch: int, value: float | None, max_epochs: int) -> None:
    """Report one epoch's validation RankIC; raise TrialPruned when the pruner says stop."""
    if value is None or not math.isfinite(value):
        return  # no RankIC this epoch (too few stocks): nothing the pruner could compare
    trial.report(float(value), epoch)
    # After the last epoch there is nothing left to save: the trial is complete, not pruned.
    if epoch < max_epochs - 1 and trial.should_prune():
        raise optuna.TrialPruned(f"pruned after epoch {epoch}: validation RankIC {value:+.4f}")


def train_score(trial: optuna.Trial, cfg: AtftConfig, cache_path: Path) -> float:
    """Train on the cache with this trial's config; the best epoch's validation RankIC."""
    from atft_core.train.trainer import Trainer  # torch loads only where a trial really trains

    trainer = Trainer(_open_cache(str(cache_path)), cfg,
                      on_epoch=lambda rec: report_epoch(trial, rec["epoch"], rec["val_rankic"], cfg.train.max_epochs))
    result = trainer.fit()
    history = [{k: round6(r.get(k)) for k in ("epoch", "train_loss", "val_rankic", "val_ic", "seconds")}
               for r in result.history]
    trial.set_user_attr("history", history)
    trial.set_user_attr("best_epoch", int(result.best_epoch))
    if not math.isfinite(result.best_rankic):
        raise TrialFailed("no validation RankIC on any epoch: every validation day had fewer than "
                          f"data.min_stocks={cfg.data.min_stocks} names with a known target")
    return float(result.best_rankic)


@dataclass
class Objective:
    """`Trial -> float` for `study.optimize`: sample, build the config, score, record any failure."""

    cache_path: str | Path
    base_cfg: AtftConfig
    space: SearchSpace
    max_epochs: int = 2
    score: Score = train_score
    worker: str = ""  # when set, each trial records it and this process (`worker`, `worker_process`)
    timings: dict[int, dict[str, float]] = field(default_factory=dict)  # per trial number, this process

    def __call__(self, trial: optuna.Trial) -> float:
        if self.worker:
            # First thing after the claim: on a journal file this record is how a dead worker's trial is
            # told from a live one (hpo.liveness); until it is written the trial cannot be ended.
            trial.set_user_attr(WORKER_ATTR, self.worker)
            trial.set_user_attr(PROCESS_ATTR, this_process())
        t0 = time.perf_counter()
        timed, sampled = _TimedTrial(trial), None
        try:
            params = self.space.suggest(trial)
            sampled = time.perf_counter()
            cfg = trial_config(self.base_cfg, params, self.max_epochs)
            value = float(self.score(timed, cfg, Path(self.cache_path)))
            if not math.isfinite(value):  # optuna would fail it without a reason; it is no score either
                raise TrialFailed(f"the objective returned {value}")
            return value
        except optuna.TrialPruned:
            raise
        except BaseException as exc:  # KeyboardInterrupt too: the trial records why it ended
            known = failure(exc) if isinstance(exc, Exception) else None
            kind, reason = known or ("crashed", f"{type(exc).__name__}: {exc}")
            trial.set_user_attr(FAIL_KIND_ATTR, kind)
            trial.set_user_attr(FAIL_REASON_ATTR, reason[:2000])
            if known is None or isinstance(exc, TrialFailed):
                raise
            raise TrialFailed(reason) from exc
        finally:
            end = time.perf_counter()
            self.timings[trial.number] = {"objective_s": end - t0, "sample_s": (sampled or end) - t0,
                                          "report_s": timed.report_s}


class _TimedTrial:
    """The trial a score function sees: Optuna's, with the seconds spent in ``report`` and
    ``should_prune`` (storage calls made during training) counted in ``report_s``, so a trial's
    timings can tell storage time from training time (`Objective.timings`)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial
        self.report_s = 0.0

    def report(self, value: float, step: int) -> None:
        t0 = time.perf_counter()
        try:
            self._trial.report(value, step)
        finally:
            self.report_s += time.perf_counter() - t0

    def should_prune(self) -> bool:
        t0 = time.perf_counter()
        try:
            return self._trial.should_prune()
        finally:
            self.report_s += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


def failure(exc: BaseException) -> tuple[str, str] | None:
    """(kind, reason) for a failure that ends one trial but not the study; None for anything else (a bug)."""
    if isinstance(exc, TrainingError):
        return ("diverged" if "non-finite" in str(exc) else "training_error"), str(exc)
    if isinstance(exc, TrialFailed):
        return "failed", str(exc)
    torch = sys.modules.get("torch")  # never import torch just to classify an error
    if isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError)):
        return "out_of_memory", f"{type(exc).__name__}: {exc}".strip()
    return None


def free_memory() -> None:
    """After an out-of-memory trial (its exception and frames gone): give the next trial that memory."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@functools.lru_cache(maxsize=2)
def _open_cache(path: str):
    from atft_core.data.cache.store import open_cache

    return open_cache(path)  # memory-mapped: every trial of this worker shares the pages


def round6(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) and math.isfinite(v) else (None if isinstance(v, float) else v)
