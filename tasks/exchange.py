"""Move the cache and run folders through S3 for gpu workers on other hosts (logic in atft_core.s3.folders).

Used only when a stage runs on the gpu pool and ATFT_ARTIFACT_URI is set: then the gpu worker never
reads the pipeline host's paths, so the same deployments work with or without a shared disk.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from atft_core.s3.client import S3Options
from atft_core.s3.folders import cache_key, fetch_cache, fetch_folder, run_key, share_folder


@task(name="share-cache", cache_policy=NO_CACHE, persist_result=False,
      description="Upload the cache folder for gpu workers on other hosts (once per cache).")
def share_cache_task(cache_path: str, target: S3Options) -> str:
    path = Path(cache_path)
    share_folder(path, target, cache_key(target, path.name), manifest=True, skip_complete=True,
                 logger=get_run_logger())
    return path.name


@task(name="fetch-cache", cache_policy=NO_CACHE, persist_result=False,
      description="The pipeline's cache on this gpu host, downloaded on first use.")
def fetch_cache_task(cache_name: str, target: S3Options, work_dir: str) -> str:
    return str(fetch_cache(target, cache_name, Path(work_dir), logger=get_run_logger()))


@task(name="share-results", cache_policy=NO_CACHE, persist_result=False,
      description="Upload this host's part of the run folder for the pipeline.")
def share_results_task(local: str, target: S3Options, run_name: str, sub: str = "") -> int:
    return share_folder(Path(local), target, run_key(target, run_name, sub), logger=get_run_logger())


@task(name="fetch-results", cache_policy=NO_CACHE, persist_result=False,
      description="Download what the gpu workers wrote into this run folder.")
def fetch_results_task(target: S3Options, run_dir: str, sub: str = "") -> int:
    local = Path(run_dir) / sub if sub else Path(run_dir)
    return fetch_folder(target, run_key(target, Path(run_dir).name, sub), local, logger=get_run_logger())
