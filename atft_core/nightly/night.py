"""One night of the product, after the gate and the study: decide the champion, rank tomorrow, score the past.

```
challenger run ──► decision (champion vs challenger, same unseen test days) ──► registry
                                    champion ──► tomorrow's ranks (panel's last day) ──► registry/ranks
                     earlier ranks + returns since ──► live record ──► health (healthy / degraded)
```

The night is the panel's last date: everything written is keyed by it, so a night re-run for the
same date replaces nothing it should not (one ranks file per date, one live row per (date, model,
horizon), at most one champion change per date). The LightGBM peer is fitted once per night on
tonight's split: it is the decision's third column and ranks the same last day for the live record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from atft_core.config import AtftConfig
from atft_core.data.cache.store import Cache
from atft_core.data.split import Split, make_split
from atft_core.evaluate.compare import daily_rankic
from atft_core.evaluate.peer import PeerModel
from atft_core.nightly import live
from atft_core.nightly.health import Health, assess
from atft_core.nightly.promotion import Decision, decide, unseen_days
from atft_core.nightly.ranks import rank_day
from atft_core.nightly.registry import ModelEntry, Registry
from atft_core.train.checkpoint import CheckpointMismatch
from atft_core.train.predictor import MemberMean, load_members

log = logging.getLogger("atft_core.nightly")


def night_of(cache: Cache) -> str:
    """The night a panel belongs to: its last trading day (YYYY-MM-DD)."""
    return cache.dates[-1]


def seen_until(cache: Cache, split: Split) -> str:
    """The last day whose label a model trained on `split` used: its last validation day (it picked the epoch)."""
    return cache.dates[int(np.max(split.val))]


def model_meta(cache: Cache, split: Split, cfg: AtftConfig, evidence: dict) -> dict:
    """model.json of a model trained on `split` of `cache` with `cfg`."""
    return {"config": cfg.to_dict(), "data_fingerprint": cache.fingerprint, "horizons": list(cache.horizons),
            "features": list(cache.feature_names), "seen_until": seen_until(cache, split), "embargo": split.embargo,
            "trained_on": [cache.dates[int(split.train[0])], cache.dates[int(split.train[-1])]],
            "evidence": evidence}


@dataclass
class Peer:
    """Tonight's fitted LightGBM peer (None when it could not be fitted: too few rows, no lightgbm)."""

    model: PeerModel | None
    why_not: str = ""

    @classmethod
    def fit(cls, cache: Cache, split: Split) -> Peer:
        try:
            return cls(PeerModel().fit(cache, split))
        except (ValueError, ImportError) as exc:
            log.warning("LightGBM peer not fitted tonight: %s", exc)
            return cls(None, str(exc))

    def predict(self, cache: Cache, days: np.ndarray) -> np.ndarray | None:
        return None if self.model is None else self.model.predict(cache, days)


def _daily(pred: np.ndarray, cache: Cache, days: np.ndarray, min_stocks: int) -> np.ndarray:
    """``[len(days)]`` daily RankIC of the first horizon."""
    target = np.where(cache.valid[days], cache.y[days, :, 0], np.nan)
    return daily_rankic(pred[:, :, 0], target, min_stocks=min_stocks)


def champion_decision(registry: Registry, cache: Cache, split: Split, challenger_run: Path, cfg: AtftConfig,
                      peer: Peer, *, challenger_failed: str = "") -> Decision:
    """Tonight's decision; the registry is changed (promotion, or a logged "kept") before it returns.

    challenger_failed: the challenger run's failed gate criteria ("" when it passed): such a run is
    not a candidate.
    """
    night = night_of(cache)
    champion = registry.champion()

    def kept(reason: str, peer_rankic: float | None = None) -> Decision:
        d = Decision(night=night, challenger=challenger_run.name, champion=champion.model_id if champion else None,
                     promoted=False, reason=reason, peer_rankic=peer_rankic, level=cfg.nightly.level)
        return _record(registry, d)

    if challenger_failed:
        return kept(f"the challenger run failed its own gate ({challenger_failed}): not a candidate, the champion "
                    "stays")
    if len(split.test) == 0:
        return kept("the split holds no test days (data.split.test_days = 0): a champion is only replaced on "
                    "held-out days, so nothing changes")
    if registry.changed_on(night):
        return kept(f"the champion already changed for the night of {night} (a re-run): it changes at most once "
                    "per night")
    challenger = load_members(challenger_run / "checkpoint.pt", device="cpu")
    challenger_split = make_split(cache, challenger.cfg.data)
    seen = [seen_until(cache, challenger_split)] + ([champion.seen_until] if champion else [])
    days = unseen_days(cache.dates, split.test, seen, max(split.embargo, challenger_split.embargo))
    min_stocks = cfg.data.min_stocks
    peer_pred = peer.predict(cache, days) if len(days) else None
    peer_ic = None if peer_pred is None else float(np.nanmean(_daily(peer_pred, cache, days, min_stocks)))
    champ_daily = None
    if champion is not None and len(days):
        try:
            champ_daily = _daily(load_members(champion.checkpoint, device="cpu").predict(cache, days), cache, days,
                                 min_stocks)
        except CheckpointMismatch as exc:
            return kept(f"the champion cannot read tonight's panel ({exc}); no automatic change: look at the "
                        f"challenger and promote it by hand (`atft champion promote {challenger_run}`)", peer_ic)
    chall_daily = _daily(challenger.predict(cache, days), cache, days, min_stocks) if len(days) else np.array([])
    decision = decide(night=night, challenger=challenger_run.name, champion=champion.model_id if champion else None,
                      dates=cache.dates, days=days, challenger_daily=chall_daily, champion_daily=champ_daily,
                      peer_rankic=peer_ic, level=cfg.nightly.level, min_gain=cfg.nightly.min_gain)
    if not decision.promoted:
        return _record(registry, decision)
    registry.add_model(challenger_run, model_meta(cache, challenger_split, challenger.cfg,
                                                  {"decision": decision.to_dict()}))
    registry.promote(challenger_run.name, how="nightly", night=night, decision=decision.to_dict())
    log.info("champion decision %s: promoted %s (%s)", night, challenger_run.name, decision.reason)
    return decision


def _record(registry: Registry, decision: Decision) -> Decision:
    """Log a decision that kept the champion."""
    registry.record_decision({**decision.to_dict(), "how": "nightly"})
    log.info("champion decision %s: kept (%s)", decision.night, decision.reason)
    return decision


@dataclass
class Ranks:
    table: pl.DataFrame
    features: list[str]  # the features the model weighted most, in the table as x_<name>
    path: Path  # registry/ranks/ranks-DATE.parquet
    champion: str


def tomorrows_ranks(registry: Registry, cache: Cache, peer: Peer, cfg: AtftConfig) -> Ranks | None:
    """The champion's ranks of the panel's last day, written to the registry; None with no champion."""
    champion: ModelEntry | None = registry.champion()
    if champion is None:
        return None
    day = len(cache.dates) - 1
    predictor: MemberMean = load_members(champion.checkpoint, device="cpu")
    peer_pred = peer.predict(cache, np.array([day]))
    table, shown = rank_day(predictor, cache, day, peer=None if peer_pred is None else peer_pred[0],
                            top_features=cfg.nightly.top_features)
    table = table.with_columns(pl.lit(champion.model_id).alias("model_id"))
    path = registry.root / "ranks" / f"ranks-{night_of(cache)}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.write_parquet(tmp)
    tmp.replace(path)  # a re-run of the night replaces its own file, never another night's
    return Ranks(table, shown, path, champion.model_id)


def live_record(registry: Registry, cache: Cache, cfg: AtftConfig) -> tuple[pl.DataFrame, Health]:
    """Score every earlier ranks file whose returns have arrived; the whole history and tonight's health."""
    history = live.update_history(registry.root / "live" / "history.csv", registry.root / "ranks", cache,
                                  scored_on=night_of(cache), min_stocks=cfg.data.min_stocks)
    health = assess(history, cache.horizons[0], recent=cfg.nightly.recent_nights, n_se=cfg.nightly.health_se)
    return history, health
