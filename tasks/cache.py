"""Build (or find) the Arrow cache for the input panel.

Two layers of caching, on purpose:
- `atft_core.data.cache.build.build_cache` names its folder by the input's content fingerprint and the build
  parameters, so a rebuild of the same input is a cheap hit even outside Prefect;
- this task's Prefect cache key is the same two things (content fingerprint + build parameters +
  where the cache lives), so a repeated run shows the task as Cached in the UI and, for an s3://
  input, skips the download entirely. Never a fixed key: a fixed key would survive a changed input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.context import TaskRunContext

from atft_core import __version__ as core_version
from atft_core.config import CacheConfig, DataConfig
from atft_core.data.cache.build import build_cache, params_key
from atft_core.data.cache.store import FORMAT_VERSION
from atft_core.data.source import fingerprint_files, resolve_input
from atft_core.errors import DatasetError
from atft_core.s3.client import S3Options

_REMOTE_RETRY_DELAYS = [10, 60]  # seconds: a network blip, then a longer outage


def input_fingerprint(data_path: str, s3: S3Options | None) -> str:
    """Content fingerprint of the input without building anything.

    Local: the same content hash `build_cache` uses. s3://: the objects' ETags and sizes (the
    server's own content hashes), so computing the key never downloads the panel.
    """
    if not str(data_path).startswith("s3://"):
        with resolve_input(data_path) as inp:
            root = inp.files[0].parent if len(inp.files) > 1 else None
            return fingerprint_files(inp.files, root)
    return _s3_fingerprint(str(data_path), s3 or S3Options())


def _s3_fingerprint(uri: str, s3: S3Options) -> str:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    client = s3.client()
    h = hashlib.blake2b(digest_size=16)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in sorted(page.get("Contents", []), key=lambda o: o["Key"]):
            if obj["Key"] == prefix or obj["Key"].endswith(".parquet"):
                h.update(f"{obj['Key']}\0{obj['ETag']}\0{obj['Size']}\n".encode())
    return "s3-" + h.hexdigest()


def cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Prefect cache key: input content + build parameters + cache location + cache format.

    None (no caching) when the input cannot be fingerprinted (missing file, unreachable bucket): the
    task body then reads the same input and raises the clear DatasetError, once.
    """
    cfg: CacheConfig = parameters["cfg"]
    try:
        fingerprint = input_fingerprint(parameters["data_path"], parameters.get("s3"))
    except Exception:  # noqa: BLE001 - any failure here is reported by the build itself
        return None
    where = hashlib.blake2b(str(Path(parameters["cache_dir"]).resolve()).encode(), digest_size=6).hexdigest()
    return f"atft-cache-v{FORMAT_VERSION}-{core_version}-{fingerprint}-{params_key(cfg)}-{where}"


@task(name="build-cache", cache_key_fn=cache_key, result_serializer="json",
      description="Validate the panel and build (or find) its memory-mapped Arrow cache.")
def build_cache_task(data_path: str, cache_dir: str, cfg: CacheConfig, s3: S3Options | None = None,
                     require: DataConfig | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    build = build_cache(data_path, cache_dir, cfg, s3=s3, progress=False, require=require)
    s = build.summary
    logger.info("cache %s %s: %s stocks x %s days x %s features, horizons %s, %s..%s, %.1f MB",
                "hit" if build.hit else "built", build.path, s.get("stocks"), s.get("days"), s.get("features"),
                s.get("horizons"), s.get("first_date"), s.get("last_date"), (s.get("bytes") or 0) / 1e6)
    for w in build.warnings:
        logger.warning("dataset: %s", w)
    rows = [{"item": k, "value": json.dumps(v) if isinstance(v, (list, dict)) else str(v)} for k, v in s.items()]
    rows.append({"item": "fingerprint", "value": build.fingerprint})
    rows.append({"item": "path", "value": str(build.path)})
    rows += [{"item": "warning", "value": w} for w in build.warnings]
    create_table_artifact(rows, key="cache-summary",
                          description=f"Arrow cache for {data_path}: shape, dates, warnings")
    # Plain JSON (not the CacheBuild object): the persisted result must stay readable after
    # atft_core's classes change.
    return {"path": str(build.path), "hit": build.hit, "fingerprint": build.fingerprint,
            "summary": s, "warnings": list(build.warnings), "params": dataclasses.asdict(cfg)}


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a read that may succeed later; never a permanent error (no such bucket, bad file)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, DatasetError) or exc.transient


@dataclass(frozen=True)
class CacheRef:
    """The built cache as the flows pass it on: where it is, and what the build found.

    Rebuilt from the task's plain-JSON result (which stays readable in Prefect's result store when
    this class changes), so the flows handle one typed value from the build to the training.
    """

    path: str
    hit: bool
    fingerprint: str
    summary: dict[str, Any]
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_task(cls, result: dict[str, Any]) -> CacheRef:
        return cls(path=result["path"], hit=bool(result["hit"]), fingerprint=result["fingerprint"],
                   summary=dict(result.get("summary") or {}), warnings=tuple(result.get("warnings") or ()))


def cached_build(data_path: str, cache_dir: str | Path, cfg: CacheConfig, s3: S3Options | None,
                 require: DataConfig | None = None) -> CacheRef:
    """Run the cache task: retries only for s3:// inputs, and a rebuild when a cached result is stale.

    A local file that fails validation will fail the same way again, so it gets no retries; a remote
    read can fail on a network blip. A Prefect cache hit whose folder was deleted since (someone
    cleaned the cache dir) is refreshed instead of handing a missing path to training.
    """
    run = build_cache_task
    if str(data_path).startswith("s3://"):
        run = run.with_options(retries=len(_REMOTE_RETRY_DELAYS), retry_delay_seconds=_REMOTE_RETRY_DELAYS,
                               retry_condition_fn=retry_if_transient)
    args = dict(data_path=str(data_path), cache_dir=str(cache_dir), cfg=cfg, s3=s3, require=require)
    result = run(**args)
    if not Path(result["path"]).is_dir():
        get_run_logger().warning("cached result points at %s, which no longer exists: rebuilding", result["path"])
        result = run.with_options(refresh_cache=True)(**args)
    return CacheRef.from_task(result)
