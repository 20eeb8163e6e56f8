"""`atft champion show | promote RUN | rollback`: the registry for people (the nightly run decides by itself).

A bad RUN, an empty registry or nothing to roll back to is one error line and exit 2 (the registry is
a `ValueError` family), and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from atft_core.workroot import WorkRoot, absolute


def cmd_champion(args: argparse.Namespace) -> int:
    from atft_core.nightly.registry import Registry

    root = WorkRoot.from_env()
    registry = Registry(root.registry)
    if args.action == "promote":
        _promote(registry, _run_folder(args.run, root))
        return _mirror(registry)
    if args.action == "rollback":
        back = registry.rollback()
        print(f"champion rolled back to {back['model_id']} (champion since {back['since']}, reign {back['reign']})")
        return _mirror(registry)
    return _show(registry)


def _mirror(registry) -> int:
    """With ATFT_ARTIFACT_URI set, the S3 copy of the registry follows a change made by hand (as after a night)."""
    from atft_core.s3.client import S3Options
    from atft_core.s3.folders import share_folder

    target = S3Options.artifacts_from_env()
    if target is None:
        return 0
    try:
        n = share_folder(registry.root, target, "/".join(p for p in (target.prefix, "registry") if p))
    except Exception as exc:  # the local registry (the one the nights read) has changed: say the copy is stale
        print(f"error: the registry changed here ({registry.root}) but its S3 copy at {target.where} did not: "
              f"{str(exc).splitlines()[0]}; the next nightly uploads the whole registry (do not repeat a rollback: it "
              "would roll back once more)", file=sys.stderr)
        return 1
    print(f"registry mirrored to {target.uri}/registry ({n} file(s))")
    return 0


def _run_folder(run: str, root: WorkRoot) -> Path:
    """RUN as typed (relative to where it was typed), else a run folder's name under the work root's runs/."""
    typed = Path(absolute(run) or run)
    for candidate in (typed, root.runs / run):
        if (candidate / "checkpoint.pt").is_file():
            return candidate
    raise ValueError(f"{run!r} is not a run folder with a checkpoint.pt (looked at {typed} and {root.runs / run}): "
                     "give the folder `atft train` or a nightly challenger printed")


def _promote(registry, run: Path) -> None:
    from atft_core.config import AtftConfig
    from atft_core.data.cache.store import open_cache
    from atft_core.data.split import make_split
    from atft_core.nightly.night import model_meta
    from atft_core.stage_result import StageResult

    current = registry.champion_entry()
    if current and current["model_id"] == run.name:
        raise ValueError(f"{run.name} is already the champion: nothing to change")
    if not StageResult.exists(run):
        raise ValueError(f"{run} has no stage.json: promote a folder written by `atft train` or a nightly challenger")
    stage = StageResult.read(run)
    if not Path(stage.cache_path).is_dir():
        raise ValueError(f"the cache {run} trained on ({stage.cache_path}) is gone: rebuild it with `atft build-cache "
                         "--data-path PANEL` (the same panel), then promote again")
    cfg = AtftConfig.from_dict(stage.config)
    cache = open_cache(stage.cache_path)
    meta = model_meta(cache, make_split(cache, cfg.data), cfg, {"stage_metrics": stage.metrics})
    registry.add_model(run, meta)
    entry = registry.promote(run.name, how="manual", night=None,
                             decision={"reason": "promoted by hand (atft champion promote)", "challenger": run.name,
                                       "previous": current["model_id"] if current else None})
    print(f"champion is now {entry['model_id']} (reign {entry['reign']}; previous: {entry['previous'] or 'none'}). "
          "Undo with `atft champion rollback`.")


def _show(registry) -> int:
    from atft_core.nightly.live import ranks_files, read_history, series

    entry = registry.champion_entry()
    if entry is None:
        print(f"no champion yet in {registry.root}: the nightly run seats the first challenger whose daily RankIC "
              "interval is above zero (or `atft champion promote RUN`)")
    else:
        model = registry.model(entry["model_id"])
        evidence = model.meta.get("evidence", {})
        decision = evidence.get("decision") or {}
        print(f"champion: {entry['model_id']} (reign {entry['reign']}, since {entry['since']}, {entry['how']}"
              f"{', night ' + entry['night'] if entry.get('night') else ''})")
        print(f"  trained on {model.meta['trained_on'][0]} .. {model.meta['trained_on'][1]}, saw labels until "
              f"{model.seen_until}; checkpoint {model.checkpoint}")
        if decision.get("difference"):
            d = decision["difference"]
            print(f"  won its seat by {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] daily RankIC over "
                  f"{d['n_days']} held-out days")
    decisions = registry.decisions()[-5:]
    if decisions:
        print("last decisions:")
        for d in decisions:
            verdict = "promoted" if d.get("promoted") else "kept"
            print(f"  {d.get('night') or d.get('at')}: {d.get('how')} {verdict} {d.get('challenger') or ''} - "
                  f"{d.get('reason', '')}")
    history = read_history(registry.root / "live" / "history.csv")
    h0 = int(history["horizon"].min()) if len(history) else 1
    champ = series(history, "champion", h0)
    if len(champ):
        print(f"live record: {len(champ)} night(s) scored, mean live RankIC ({h0}d) {champ['rankic'].mean():+.4f}, "
              f"last {champ['date'][-1]}")
    ranks = ranks_files(registry.root / "ranks")
    if ranks:
        last = list(ranks)[-1]
        print(f"tomorrow's ranks: {ranks[last]}")
    health = _latest_health(registry)
    if health:
        print(f"live health: {health}")
    return 0


def _latest_health(registry) -> str | None:
    """The state the last nightly run wrote (registry/live/health.json)."""
    path = registry.root / "live" / "health.json"
    return json.loads(path.read_text()).get("state") if path.is_file() else None
