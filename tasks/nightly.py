"""Nightly product tasks: the champion decision, tomorrow's ranks, the live record. Logic in `atft_core.nightly`.

Each task writes its result into the run folder (decision.json, ranks-DATE.parquet, live.png,
health.json) and the registry, then shows it as an artifact: the UI is a view of the files.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from atft_core.config import AtftConfig
from atft_core.data.cache.store import open_cache
from atft_core.data.split import make_split
from atft_core.nightly.health import Health
from atft_core.nightly.night import Peer, champion_decision, live_record, night_of, tomorrows_ranks
from atft_core.nightly.plots import plot_live
from atft_core.nightly.promotion import Decision
from atft_core.nightly.ranks import ends_table
from atft_core.nightly.registry import Registry
from atft_core.rundir import json_safe, write_json
from atft_core.s3.client import S3Options
from atft_core.s3.folders import share_folder

DECISION_KEY = "champion-decision"
RANKS_KEY = "tomorrows-ranks"
LIVE_KEY = "live-record"
HEALTH_KEY = "live-health"


@task(name="fit-peer", cache_policy=NO_CACHE, persist_result=False,
      description="Tonight's LightGBM peer: the decision's third column and the live record's rival.")
def fit_peer_task(cache_path: str, config: dict) -> Peer:
    cache = open_cache(cache_path)
    return Peer.fit(cache, make_split(cache, AtftConfig.from_dict(config).data))


@task(name="champion-decision", cache_policy=NO_CACHE, persist_result=False,
      description="Challenger vs champion on the same unseen test days; promotes only a confidently better one.")
def decision_task(registry_root: str, cache_path: str, challenger_run: str, config: dict, run_dir: str,
                  peer: Peer, challenger_failed: str = "") -> Decision:
    cache = open_cache(cache_path)
    cfg = AtftConfig.from_dict(config)
    decision = champion_decision(Registry(registry_root), cache, make_split(cache, cfg.data), Path(challenger_run),
                                 cfg, peer, challenger_failed=challenger_failed)
    write_json(Path(run_dir) / "decision.json", json_safe(decision.to_dict()))
    create_markdown_artifact(decision.markdown(), key=DECISION_KEY,
                             description="Champion vs tonight's challenger (and the peer), same held-out days")
    return decision


@task(name="tomorrows-ranks", cache_policy=NO_CACHE, persist_result=False,
      description="The champion's score, rank and decile of every stock on the panel's last day.")
def ranks_task(registry_root: str, cache_path: str, config: dict, run_dir: str, peer: Peer) -> str | None:
    cache = open_cache(cache_path)
    cfg = AtftConfig.from_dict(config)
    ranks = tomorrows_ranks(Registry(registry_root), cache, peer, cfg)
    logger = get_run_logger()
    if ranks is None:
        create_markdown_artifact(f"## Tomorrow's ranks {night_of(cache)}: none\n\nNo champion yet: the first "
                                 "challenger whose daily RankIC interval is above zero takes the seat.",
                                 key=RANKS_KEY, description="Tomorrow's ranks (no champion yet)")
        logger.info("no champion yet: no ranks tonight")
        return None
    copy = Path(run_dir) / ranks.path.name
    shutil.copy2(ranks.path, copy)
    h0 = cache.horizons[0]
    create_table_artifact(ends_table(ranks.table, h0, cfg.nightly.top_n), key=RANKS_KEY,
                          description=f"Tomorrow's ranks ({night_of(cache)}, champion {ranks.champion}): top and "
                                      f"bottom {cfg.nightly.top_n} by the {h0}d score, sector, the peer's score and "
                                      f"the last-day inputs the model weighted most (normalised: "
                                      f"{', '.join(ranks.features) or 'n/a'}). All stocks: {ranks.path}")
    logger.info("ranks of %d stocks for %s by champion %s: %s", len(ranks.table), night_of(cache), ranks.champion,
                ranks.path)
    return str(ranks.path)


@task(name="live-record", cache_policy=NO_CACHE, persist_result=False,
      description="Score earlier nights' ranks against the returns that arrived; health over the last nights.")
def live_task(registry_root: str, cache_path: str, config: dict, run_dir: str) -> Health:
    cache = open_cache(cache_path)
    cfg = AtftConfig.from_dict(config)
    history, health = live_record(Registry(registry_root), cache, cfg)
    png = plot_live(history, Path(run_dir) / "plots" / "live.png", horizon=cache.horizons[0])
    (Path(registry_root) / "live").mkdir(parents=True, exist_ok=True)
    shutil.copy2(png, Path(registry_root) / "live" / "live.png")  # the registry always shows the latest picture
    write_json(Path(run_dir) / "health.json", json_safe(health.to_dict()))
    write_json(Path(registry_root) / "live" / "health.json", json_safe({**health.to_dict(), "night": night_of(cache)}))
    create_image_artifact("data:image/png;base64," + base64.b64encode(png.read_bytes()).decode(), key=LIVE_KEY,
                          description="Live record: nightly live RankIC of the champion and the peer vs zero, and "
                                      "their cumulative top - bottom decile return")
    create_markdown_artifact(health.markdown(), key=HEALTH_KEY, description="The champion's live health")
    get_run_logger().log(30 if health.state == "degraded" else 20, "live health: %s (%d nights)", health.state,
                         health.nights)
    return health


@task(name="mirror-registry", cache_policy=NO_CACHE, persist_result=False,
      description="Upload the registry (champion, models, decisions, ranks, live record) to ATFT_ARTIFACT_URI.")
def mirror_registry_task(registry_root: str, target: S3Options) -> int:
    key = "/".join(p for p in (target.prefix, "registry") if p)
    return share_folder(Path(registry_root), target, key, logger=get_run_logger())
