"""Self-describing checkpoints: the weights plus everything needed to trust them on another panel.

A checkpoint carries the model, optimiser and scheduler state, the config, the epoch, and a
description of the data it was trained on: the feature list and kinds (their order is the model's
input order), the section / sector vocabularies (embedding rows), the horizons (output heads), the
normalisation (cache build parameters) and the dataset fingerprint. Loading it against a cache
whose features, kinds, vocabularies, horizons or normalisation differ raises `CheckpointMismatch`
naming each difference: silently remapping embeddings or feature columns would train on garbage.
A different fingerprint alone (new days, same layout) is fine: that is what resuming is for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from atft_core.data.cache.store import Cache

log = logging.getLogger("atft_core.train.checkpoint")

CHECKPOINT_VERSION = 2
_NORMALISATION_KEYS = ("clip", "market_window", "min_valid_fraction")


class CheckpointMismatch(ValueError):
    """The checkpoint was trained on a differently shaped panel. The CLI prints it and exits 2."""


def describe_data(cache: Cache) -> dict[str, Any]:
    """What a model trained on this cache assumes about its input."""
    m = cache.manifest
    params = m.get("build_params", {})
    return {"features": list(m["features"]), "feature_kinds": dict(m.get("feature_kinds", {})),
            "section_vocab": list(m.get("section_vocab", [])), "sector_vocab": list(m.get("sector_vocab", [])),
            "horizons": list(m["horizons"]), "targets": list(m.get("targets", [])),
            "normalisation": {k: params.get(k) for k in _NORMALISATION_KEYS},
            "dataset_fingerprint": m["fingerprint"]}


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    config: dict[str, Any], cache: Cache, epoch: int, val_rankic: float | None) -> Path:
    """Write atomically (temp file + rename): a crash mid-save never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = describe_data(cache)
    payload = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict() if scheduler is not None else None, "config": config,
               "epoch": int(epoch), "val_rankic": None if val_rankic is None else float(val_rankic), "data": data,
               # flat copies kept for readers of version 1
               "dataset_fingerprint": data["dataset_fingerprint"], "features": data["features"],
               "horizons": data["horizons"]}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the checkpoint.pt of an earlier run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not a checkpoint
        raise CheckpointMismatch(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); pass a checkpoint.pt written by atft") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION or "data" not in ckpt:
        raise CheckpointMismatch(f"checkpoint {path} is not a version-{CHECKPOINT_VERSION} atft checkpoint (it does "
                                 "not describe its data); retrain to get one")
    return ckpt


def _list_diff(what: str, old: list[str], new: list[str]) -> str | None:
    if old == new:
        return None
    gone, added = [x for x in old if x not in new], [x for x in new if x not in old]
    parts = []
    if gone:
        parts.append(f"{len(gone)} missing from this panel ({_few(gone)})")
    if added:
        parts.append(f"{len(added)} not in the checkpoint ({_few(added)})")
    if not parts:
        parts.append("same names in another order")
    return f"{what}: " + ", ".join(parts)


def _few(xs: list[Any]) -> str:
    return ", ".join(repr(x) for x in xs[:6]) + (f" and {len(xs) - 6} more" if len(xs) > 6 else "")


def check_compatible(ckpt: dict[str, Any], cache: Cache, source: str = "checkpoint") -> None:
    """Raise CheckpointMismatch listing every difference between the checkpoint's data and the cache's."""
    old, new = ckpt["data"], describe_data(cache)
    diffs = [d for d in (_list_diff("features", old["features"], new["features"]),
                         _list_diff("section vocabulary", old["section_vocab"], new["section_vocab"]),
                         _list_diff("sector vocabulary", old["sector_vocab"], new["sector_vocab"]),
                         _list_diff("horizons", [str(h) for h in old["horizons"]], [str(h) for h in new["horizons"]]))
             if d]
    kinds = sorted(f for f in old["features"] if f in new["feature_kinds"]
                   and old["feature_kinds"].get(f) != new["feature_kinds"].get(f))
    if kinds:
        diffs.append(f"feature kinds (market-level vs cross-sectional) differ for {_few(kinds)}")
    if old["normalisation"] != new["normalisation"]:
        diffs.append(f"normalisation: checkpoint {old['normalisation']}, this cache {new['normalisation']}")
    if diffs:
        raise CheckpointMismatch(f"{source} was trained on a different panel layout than {cache.manifest.get('source')}"
                                 ": " + "; ".join(diffs) + ". Train from scratch on this panel, or build its cache "
                                 "with the checkpoint's columns and settings")
    if old["dataset_fingerprint"] != new["dataset_fingerprint"]:
        log.info("%s: same layout, different data (fingerprint %s -> %s)", source,
                 old["dataset_fingerprint"][:12], new["dataset_fingerprint"][:12])


def restore(path: str | Path, cache: Cache, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
            scheduler: Any = None) -> dict[str, Any]:
    """Load weights (and optimiser / scheduler state when given) after checking the layout; returns the payload."""
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, cache, source=f"checkpoint {path}")
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt
