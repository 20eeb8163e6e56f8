"""Building the Arrow cache: check the panel, build its grid, publish it under a content-named folder.

The cache folder is named by the input's content fingerprint and the build parameters, written to
a temporary folder next to it and renamed into place, so readers never see half a cache and a
re-run on the same input is a hit. The file layout is `atft_core.data.cache.store`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from atft_core.config import CacheConfig, DataConfig
from atft_core.data.cache.grid_build import BuildStopped, build_grid, plan_grid
from atft_core.data.cache.grid_file import row_array
from atft_core.data.cache.store import FORMAT_VERSION, GRID_FILE, MANIFEST_FILE
from atft_core.data.contract import check_rows, check_schema, read_schema
from atft_core.data.source import fingerprint_files, resolve_input
from atft_core.errors import DatasetError
from atft_core.retention import LAST_USED, mark_used
from atft_core.s3.client import S3Options

log = logging.getLogger("atft_core.data.cache")

_TMP_PREFIX = ".tmp-"


@dataclass
class CacheBuild:
    """What `build_cache` did: where the cache is, whether it was already there, and its summary."""

    path: Path
    hit: bool
    fingerprint: str
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def params_key(cfg: CacheConfig) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=4).hexdigest()


def build_cache(data_path: str | Path, cache_dir: str | Path, cfg: CacheConfig | None = None, *,
                s3: S3Options | None = None, progress: bool = True,
                require: DataConfig | None = None) -> CacheBuild:
    """Validate the panel and build (or find) its cache under ``cache_dir``.

    Raises `DatasetError` naming the file, column and problem; in that case nothing is created in
    ``cache_dir`` and an existing cache is untouched. ``require`` (the training data settings) adds
    the check that the history is long enough for its window, embargo and validation split.
    """
    cfg = cfg or CacheConfig()
    cache_dir = Path(cache_dir)
    t0 = time.perf_counter()
    with resolve_input(data_path, s3) as inp, ThreadPoolExecutor(1, thread_name_prefix="fingerprint") as pool:
        contract = check_schema(read_schema(inp), inp.display, cfg.columns)
        # The content hash reads the whole file once more: it runs beside the checks and the build
        # (I/O against CPU) instead of before them. A hit found while building stops the build.
        hashing = pool.submit(fingerprint_files, inp.files, inp.files[0].parent if len(inp.files) > 1 else None)
        suffix = params_key(cfg)

        def hit() -> Path | None:
            if not hashing.done():
                return None
            final = cache_dir / f"{hashing.result()[:16]}-{suffix}"
            return final if (final / MANIFEST_FILE).exists() else None

        def found(final: Path) -> CacheBuild:
            manifest = json.loads((final / MANIFEST_FILE).read_text())
            mark_used(final)
            log.info("cache hit %s", final)
            return CacheBuild(final, True, hashing.result(), _summary(manifest, True, time.perf_counter() - t0),
                              manifest.get("warnings", []))

        lf = pl.scan_parquet(list(inp.files))
        try:
            # every check that fails does so before a write, but one: all features missing, found by the build
            warnings = check_rows(lf, contract, inp.display)
            plan = plan_grid(lf, contract, inp.display, require)
        except DatasetError:
            hashing.result()
            if (final := hit()) is not None:  # as before the overlap: a cached panel is a hit, checks or not
                return found(final)
            raise
        if progress:
            log.info("checked rows and keys: %d days x %d stocks (%.1fs)", *plan.valid.shape, time.perf_counter() - t0)
        if (final := hit()) is not None:
            return found(final)
        created = not cache_dir.exists()
        cache_dir.mkdir(parents=True, exist_ok=True)
        _sweep_stale_tmp(cache_dir)

        def fill(tmp: Path) -> dict[str, Any]:
            built = build_grid(inp.files, contract, plan, cfg, tmp / GRID_FILE, progress, inp.display,
                               stop=lambda: hit() is not None)
            warnings.extend(built["warnings"])
            return {"format_version": FORMAT_VERSION, "fingerprint": hashing.result(), "source": str(data_path),
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "build_params": dataclasses.asdict(cfg), "warnings": warnings, **built["meta"]}

        def name() -> Path:
            fingerprint = hashing.result()
            if progress:
                log.info("fingerprint %s (%.1fs)", fingerprint[:16], time.perf_counter() - t0)
            return cache_dir / f"{fingerprint[:16]}-{suffix}"

        try:
            path, manifest = _atomic(cache_dir, name, fill, tmp_name=f"pending-{suffix}")
        except BuildStopped:
            return found(hit())  # type: ignore[arg-type]  # stopped only once hit() found the cache
        except DatasetError:
            if created and not any(cache_dir.iterdir()):
                cache_dir.rmdir()  # bad input leaves nothing behind, not even the folder
            raise
    summary = _summary(manifest, False, time.perf_counter() - t0)
    for w in warnings:
        log.warning(w)
    return CacheBuild(path, False, hashing.result(), summary, warnings)


def _summary(manifest: dict[str, Any], hit: bool, seconds: float) -> dict[str, Any]:
    shape = manifest["shape"]
    return {"stocks": shape["stocks"], "days": shape["days"], "features": shape["features"],
            "horizons": manifest["horizons"], "first_date": manifest["dates"][0],
            "last_date": manifest["dates"][-1], "bytes": manifest["bytes"], "hit": hit,
            "market_features": manifest["market_features"], "warnings": len(manifest.get("warnings", [])),
            "leak_suspects": list(dict.fromkeys(s["feature"] for s in manifest.get("leak_suspects", []))),
            "seconds": round(seconds, 3)}


def _publish(cache_dir: Path, final: Path, manifest: dict[str, Any], grid: dict[str, np.ndarray]) -> Path:
    """A grid held in memory (synthetic benchmarks) as a cache folder."""

    def fill(tmp: Path) -> dict[str, Any]:
        d, s = grid["valid"].shape
        x, y, y_z = grid["x"], grid["y"], grid["y_z"]
        static = grid.get("static")
        if static is None:  # a synthetic grid (bench) states per-stock ids: the same on every day
            ids = [np.asarray(manifest.get(k, [-1] * s), np.int32) for k in ("section_id", "sector_id")]
            static = np.broadcast_to(np.stack(ids, axis=1)[None], (d, s, 2))
        batch = pa.record_batch(
            [row_array(np.asarray(x, np.float32), x.shape[2]), row_array(np.asarray(y, np.float32), y.shape[2]),
             row_array(np.asarray(y_z, np.float32), y_z.shape[2]), pa.array(grid["valid"].reshape(-1)),
             row_array(np.ascontiguousarray(static, np.int32), 2)],
            names=["x", "y", "y_z", "valid", "static"])
        with pa.OSFile(str(tmp / GRID_FILE), "wb") as sink, ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        return manifest

    return _atomic(cache_dir, final, fill)[0]


def _atomic(cache_dir: Path, final: Path | Callable[[], Path], fill: Any,
            tmp_name: str | None = None) -> tuple[Path, dict[str, Any]]:
    """fill(tmp) writes the grid into a private temp folder and returns the manifest; then rename.

    ``final`` may be a function, asked once the grid is written (the content hash that names the
    cache runs beside the build). Readers see a whole cache or none; a build that fails or is killed
    leaves only a temp folder, removed here or swept by the next build.
    """
    label = final.name if isinstance(final, Path) else tmp_name or "pending"
    tmp = cache_dir / f"{_TMP_PREFIX}{label}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        manifest = fill(tmp)
        final = final if isinstance(final, Path) else final()
        manifest["bytes"] = (tmp / GRID_FILE).stat().st_size
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, default=_json_default))
        (tmp / LAST_USED).touch()  # born used: a later hit only moves its mtime, adds no file
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / MANIFEST_FILE).exists():  # a concurrent build of the same input won: use its cache
                shutil.rmtree(tmp, ignore_errors=True)
                return final, json.loads((final / MANIFEST_FILE).read_text())
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, manifest


def _sweep_stale_tmp(cache_dir: Path) -> None:
    """Remove temp folders left by builds that were killed (their process no longer exists)."""
    for p in cache_dir.glob(f"{_TMP_PREFIX}*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _json_default(o: Any) -> Any:
    if isinstance(o, (date, datetime)):
        return o.isoformat()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(type(o))
