"""The Arrow cache: the panel as a dense day x stock grid, normalised, memory-mapped on open.

Layout (one Arrow IPC file, one record batch, uncompressed, rows ordered day-major then stock):
    x      FixedSizeList<float32>[F]  normalised features, missing cells 0 (= the day's median)
    y      FixedSizeList<float32>[H]  raw forward returns, NaN where unknown
    y_z    FixedSizeList<float32>[H]  per-day standardised (and clipped) targets, NaN where unknown
    valid  uint8                      1 where the stock had a row that day
Because a FixedSizeList's values are one contiguous buffer, `x` opens as a zero-copy numpy view of
shape [D, S, F]: a window of L days for every stock is the slice ``x[t-L+1 : t+1]``.

The cache folder is named by the input's content fingerprint and the build parameters, written to
a temporary folder next to it and renamed into place, so readers never see half a cache and a
re-run on the same input is a hit.
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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc

from atft_core.config import CacheConfig, DataConfig
from atft_core.data.contract import Contract, check_rows, check_schema, date_expr, read_schema
from atft_core.data.indexing import day_index
from atft_core.data.source import S3Options, fingerprint_files, resolve_input
from atft_core.errors import DatasetError, Problem

log = logging.getLogger("atft_core.data.cache")

FORMAT_VERSION = 1
GRID_FILE = "grid.arrow"
MANIFEST_FILE = "manifest.json"
_TMP_PREFIX = ".tmp-"
_COLUMN_GROUP = 64  # feature columns read per pass: bounds memory on 300-column panels
_MAD_SCALE = 1.4826  # MAD -> standard deviation under normality


@dataclass
class CacheBuild:
    """What `build_cache` did: where the cache is, whether it was already there, and its summary."""

    path: Path
    hit: bool
    fingerprint: str
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Cache:
    """An opened cache: zero-copy numpy views over the memory-mapped grid plus its manifest."""

    path: Path
    manifest: dict[str, Any]
    x: np.ndarray  # [D, S, F] float32
    y: np.ndarray  # [D, S, H] float32 raw forward returns
    y_z: np.ndarray  # [D, S, H] float32 standardised targets
    valid: np.ndarray  # [D, S] bool
    static: np.ndarray  # [S, 2] int64: section id, sector id (-1 unknown)

    @property
    def dates(self) -> list[str]:
        return self.manifest["dates"]

    @property
    def codes(self) -> list[str]:
        return self.manifest["codes"]

    @property
    def feature_names(self) -> list[str]:
        return self.manifest["features"]

    @property
    def horizons(self) -> tuple[int, ...]:
        return tuple(self.manifest["horizons"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape)  # type: ignore[return-value]


def open_cache(path: str | Path) -> Cache:
    """Memory-map a cache folder. Costs milliseconds whatever the size: nothing is read yet."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path} is not an atft cache (no {MANIFEST_FILE}); build it with "
                                "`atft build-cache --data-path ... --cache-dir ...`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"cache {path} has format {manifest.get('format_version')}, this code reads "
                         f"{FORMAT_VERSION}: rebuild it")
    d, s, f, h = (manifest["shape"][k] for k in ("days", "stocks", "features", "horizons"))
    batch = ipc.open_file(pa.memory_map(str(path / GRID_FILE), "r")).get_batch(0)

    def values(name: str) -> np.ndarray:
        col = batch.column(name)
        arr = col.values if pa.types.is_fixed_size_list(col.type) else col
        return arr.to_numpy(zero_copy_only=True)

    static = np.stack([np.asarray(manifest["section_id"], np.int64),
                       np.asarray(manifest["sector_id"], np.int64)], axis=1)
    return Cache(path=path, manifest=manifest,
                 x=values("x").reshape(d, s, f), y=values("y").reshape(d, s, h),
                 y_z=values("y_z").reshape(d, s, h), valid=values("valid").reshape(d, s).view(np.bool_),
                 static=static)


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
    with resolve_input(data_path, s3) as inp:
        contract = check_schema(read_schema(inp), inp.display)
        fingerprint = fingerprint_files(inp.files, inp.files[0].parent if len(inp.files) > 1 else None)
        final = cache_dir / f"{fingerprint[:16]}-{params_key(cfg)}"
        if (final / MANIFEST_FILE).exists():
            manifest = json.loads((final / MANIFEST_FILE).read_text())
            log.info("cache hit %s", final)
            return CacheBuild(final, True, fingerprint, _summary(manifest, True, time.perf_counter() - t0),
                              manifest.get("warnings", []))
        lf = pl.scan_parquet(list(inp.files))
        warnings, _ = check_rows(lf, contract, inp.display)
        if require is not None:
            _check_history(lf, contract, require, inp.display)
        grid = _build_grid(lf, contract, cfg, inp.display, progress)
    warnings += grid.pop("warnings")
    manifest = {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "source": str(data_path),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_params": dataclasses.asdict(cfg), "warnings": warnings, **grid.pop("meta"),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(cache_dir)
    path = _publish(cache_dir, final, manifest, grid)
    summary = _summary(manifest, False, time.perf_counter() - t0)
    for w in warnings:
        log.warning(w)
    return CacheBuild(path, False, fingerprint, summary, warnings)


def _summary(manifest: dict[str, Any], hit: bool, seconds: float) -> dict[str, Any]:
    shape = manifest["shape"]
    return {"stocks": shape["stocks"], "days": shape["days"], "features": shape["features"],
            "horizons": manifest["horizons"], "first_date": manifest["dates"][0],
            "last_date": manifest["dates"][-1], "bytes": manifest["bytes"], "hit": hit,
            "market_features": manifest["market_features"], "warnings": len(manifest.get("warnings", [])),
            "leak_suspects": [s["feature"] for s in manifest.get("leak_suspects", [])],
            "seconds": round(seconds, 3)}


def _check_history(lf: pl.LazyFrame, contract: Contract, require: DataConfig, source: str) -> None:
    n_days = lf.select(date_expr(contract).n_unique()).collect().item()
    need = require.min_history(contract.horizons)
    if n_days < need:
        sp = require.split
        embargo = max(contract.horizons) if sp.embargo_days is None else sp.embargo_days
        test = f" + embargo {embargo} + test {sp.test_days}" if sp.test_days else ""
        raise DatasetError(source, Problem("Date", f"only {n_days} trading days; training needs at least {need} "
                                                   f"(window {require.window} + embargo {embargo} + validation "
                                                   f"{sp.val_days}{test} + 1). Provide a longer history or lower "
                                                   "data.window / data.split.val_days / data.split.test_days "
                                                   "in --config"))


def _build_grid(lf: pl.LazyFrame, contract: Contract, cfg: CacheConfig, source: str,
                progress: bool) -> dict[str, Any]:
    keys = lf.select(date_expr(contract).alias("Date"), pl.col("Code").cast(pl.String),
                     *[pl.col(c).cast(pl.String) for c in contract.static]).collect()
    dates, codes, day_idx, stock_idx = day_index(keys["Date"].to_numpy(), keys["Code"].to_numpy().astype(str))
    n_days, n_stocks = len(dates), len(codes)
    if n_stocks < 2:
        raise DatasetError(source, Problem("Code", f"only {n_stocks} stock(s): the model ranks stocks against each "
                                                   "other on each day and needs a cross-section of many"))
    section_id, section_vocab = _static_ids(keys, "Section", stock_idx, n_stocks)
    sector_id, sector_vocab = _static_ids(keys, "sector33_code", stock_idx, n_stocks)

    valid = np.zeros((n_days, n_stocks), dtype=np.uint8)
    valid[day_idx, stock_idx] = 1
    feats = list(contract.features)
    x = _scatter_columns(lf, feats, day_idx, stock_idx, n_days, n_stocks)
    y = _scatter_columns(lf, contract.targets, day_idx, stock_idx, n_days, n_stocks)

    warnings: list[str] = []
    finite_any = np.isfinite(x).any(axis=(0, 1))
    if not finite_any.all():  # all-missing features carry nothing: drop rather than feed zeros
        keep = np.flatnonzero(finite_any)
        feats = [feats[i] for i in keep]
        x = np.ascontiguousarray(x[:, :, keep])
    if not feats:
        raise DatasetError(source, Problem("", "every feature column is entirely missing"))

    market = _market_level_mask(x, valid.astype(bool))
    raw_std = np.nanstd(x, axis=(0, 1))
    for j, name in enumerate(feats):
        if not raw_std[j] > 0:
            warnings.append(f"feature '{name}': constant across all stocks and days; it carries no information")
    _normalise_cross_section(x, ~market, cfg, progress)
    _normalise_market(x, valid.astype(bool), market, cfg)
    np.nan_to_num(x, copy=False, nan=0.0)
    x[valid == 0] = 0.0
    zero = ~np.any(x != 0, axis=(0, 1))
    for j in np.flatnonzero(zero & (raw_std > 0)):
        warnings.append(f"feature '{feats[j]}': all zeros after normalisation (no cross-sectional spread on any "
                        "day); check it upstream")
    y_z = _standardise_targets(y, cfg.clip)
    leak = _leak_suspects(x, y, valid.astype(bool), feats, contract.horizons, cfg)
    for s in leak:
        warnings.append(f"feature '{s['feature']}': mean daily RankIC {s['rankic']:+.3f} with target_{s['horizon']}d "
                        "is implausibly high: likely look-ahead (future information) in this column")
    meta = {
        "shape": {"days": n_days, "stocks": n_stocks, "features": len(feats), "horizons": len(contract.horizons)},
        "features": feats, "horizons": list(contract.horizons), "targets": contract.targets,
        "market_features": [f for f, m in zip(feats, market) if m],
        "feature_kinds": {f: ("market" if m else "cross_sectional") for f, m in zip(feats, market)},
        "dates": [str(d)[:10] for d in dates], "codes": [str(c) for c in codes],
        "section_vocab": section_vocab, "sector_vocab": sector_vocab,
        "section_id": section_id.tolist(), "sector_id": sector_id.tolist(),
        "leak_suspects": leak, "rows": int(len(keys)),
    }
    return {"x": x, "y": y, "y_z": y_z, "valid": valid, "meta": meta, "warnings": warnings}


def _static_ids(keys: pl.DataFrame, col: str, stock_idx: np.ndarray, n_stocks: int) -> tuple[np.ndarray, list[str]]:
    """Per-stock id of a static column (last value seen wins; -1 when absent)."""
    ids = np.full(n_stocks, -1, dtype=np.int64)
    if col not in keys.columns:
        return ids, []
    values = keys[col].to_numpy().astype(object)
    present = np.array([v is not None for v in values])
    vocab, inv = np.unique(values[present].astype(str), return_inverse=True)
    ids[stock_idx[present]] = inv  # rows are in file order; later rows overwrite earlier ones
    return ids, [str(v) for v in vocab]


def _scatter_columns(lf: pl.LazyFrame, cols: list[str], day_idx: np.ndarray, stock_idx: np.ndarray,
                     n_days: int, n_stocks: int) -> np.ndarray:
    """Dense [D, S, len(cols)] float32 grid, NaN where no row; reads a group of columns per pass."""
    out = np.full((n_days, n_stocks, len(cols)), np.nan, dtype=np.float32)
    for start in range(0, len(cols), _COLUMN_GROUP):
        group = cols[start:start + _COLUMN_GROUP]
        block = lf.select([pl.col(c).cast(pl.Float32) for c in group]).collect().to_numpy()
        block = block.astype(np.float32, copy=False)
        block[~np.isfinite(block)] = np.nan  # +-inf become missing (reported as warnings by the contract)
        out[day_idx, stock_idx, start:start + len(group)] = block
    return out


def _market_level_mask(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Features equal for every stock on (almost) every day: index returns, macro, market flows.

    Cross-sectional z-scores would turn these into all zeros, so they are normalised over time.
    """
    n_feat = x.shape[2]
    spread = np.zeros(n_feat)
    days_with_data = np.zeros(n_feat)
    for d in range(x.shape[0]):  # per day, vectorised over stocks and features
        v = x[d][valid[d]]
        if v.shape[0] < 2:
            continue
        finite = np.isfinite(v).sum(axis=0) >= 2
        fin = np.isfinite(v)
        rng = np.max(np.where(fin, v, -np.inf), axis=0) - np.min(np.where(fin, v, np.inf), axis=0)
        days_with_data += finite
        with _quiet_nan_warnings():  # a feature with no value on this day: its mean is NaN, fine
            spread += finite & (rng > 1e-9 * (1 + np.abs(np.nanmean(v, axis=0))))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_spread = spread / days_with_data
    return (days_with_data > 0) & (frac_spread < 0.05)


def _normalise_cross_section(x: np.ndarray, which: np.ndarray, cfg: CacheConfig, progress: bool) -> None:
    """Per-day robust z-score (median / MAD, std when MAD is 0), clipped. Same-day data only."""
    cols = np.flatnonzero(which)
    if len(cols) == 0:
        return
    n_days = x.shape[0]
    t0 = time.perf_counter()
    for start in range(0, n_days, cfg.chunk_days):
        block = x[start:start + cfg.chunk_days][:, :, cols]  # [c, S, Fc] copy
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            med = np.nanmedian(block, axis=1, keepdims=True)
            scale = np.nanmedian(np.abs(block - med), axis=1, keepdims=True) * _MAD_SCALE
            std = np.nanstd(block, axis=1, keepdims=True)
            scale = np.where(scale > 1e-12, scale, std)
            z = np.where(scale > 1e-12, (block - med) / scale, 0.0)
            z = np.where(np.isfinite(block), z, np.nan)
        x[start:start + cfg.chunk_days, :, cols] = np.clip(z, -cfg.clip, cfg.clip)
        if progress and n_days > cfg.chunk_days:
            log.info("normalised days %d-%d of %d (%.1fs)", start, min(start + cfg.chunk_days, n_days), n_days,
                     time.perf_counter() - t0)


def _normalise_market(x: np.ndarray, valid: np.ndarray, market: np.ndarray, cfg: CacheConfig) -> None:
    """Time-series z-score of a market-level series with statistics from *past* days only."""
    for j in np.flatnonzero(market):
        with _quiet_nan_warnings():
            series = np.nanmean(np.where(valid, x[:, :, j], np.nan), axis=1).astype(np.float64)  # [D]
        z = past_only_zscore(series, cfg.market_window)
        x[:, :, j] = np.clip(z, -cfg.clip, cfg.clip)[:, None].astype(np.float32)


def past_only_zscore(series: np.ndarray, window: int = 0) -> np.ndarray:
    """z_t = (v_t - mean(v_<t)) / std(v_<t): expanding (window 0) or rolling over the last `window` days.

    Day t never sees days after t; the first days (fewer than 2 past values) get 0.
    """
    v = np.where(np.isfinite(series), series, 0.0)
    n = np.isfinite(series).astype(np.float64)
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])
    cn = np.concatenate([[0.0], np.cumsum(n)])
    t = np.arange(len(series))
    lo = np.zeros_like(t) if window <= 0 else np.maximum(t - window, 0)
    cnt, s1, s2 = cn[t] - cn[lo], c1[t] - c1[lo], c2[t] - c2[lo]  # sums over days [lo, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = (s2 - cnt * mean * mean) / np.maximum(cnt - 1, 1)
        z = (series - mean) / np.sqrt(var)
    return np.where((cnt >= 2) & (var > 1e-24) & np.isfinite(z), z, 0.0)


def _standardise_targets(y: np.ndarray, clip: float) -> np.ndarray:
    """Per-day z-score of each horizon's forward return, clipped; NaN where the return is unknown."""
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        mean = np.nanmean(y, axis=1, keepdims=True)
        std = np.nanstd(y, axis=1, keepdims=True)
        z = np.where(std > 1e-12, (y - mean) / std, np.nan)
    return np.clip(z, -clip, clip).astype(np.float32)


def _leak_suspects(x: np.ndarray, y: np.ndarray, valid: np.ndarray, feats: list[str], horizons: tuple[int, ...],
                   cfg: CacheConfig, max_days: int = 250) -> list[dict[str, Any]]:
    """Features whose daily RankIC with a forward target is implausibly high (|mean| > threshold).

    Real daily equity signals sit around |RankIC| 0.05; a column near 1 almost surely contains the
    target itself or future prices. Checked on up to `max_days` evenly spaced days to stay cheap.
    """
    from atft_core.evaluate.metrics import daily_ic

    days = np.unique(np.linspace(0, x.shape[0] - 1, num=min(max_days, x.shape[0])).astype(int))
    suspects = []
    for k, h in enumerate(horizons):
        target = np.where(valid[days], y[days, :, k], np.nan)
        for j, name in enumerate(feats):
            feat = np.where(valid[days], x[days, :, j], np.nan)
            _, ric = daily_ic(feat, target, min_stocks=10)
            with _quiet_nan_warnings():
                m = float(np.nanmean(ric)) if np.isfinite(ric).any() else 0.0
            if abs(m) > cfg.leak_rankic_threshold:
                suspects.append({"feature": name, "horizon": h, "rankic": round(m, 4)})
    return suspects


def _publish(cache_dir: Path, final: Path, manifest: dict[str, Any], grid: dict[str, np.ndarray]) -> Path:
    """Write into a private temp folder, then rename: readers see a whole cache or none."""
    tmp = cache_dir / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        d, s = grid["valid"].shape
        x, y, y_z = grid["x"], grid["y"], grid["y_z"]
        batch = pa.record_batch(
            [pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[2]),
             pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1)), y.shape[2]),
             pa.FixedSizeListArray.from_arrays(pa.array(y_z.reshape(-1)), y_z.shape[2]),
             pa.array(grid["valid"].reshape(-1))],
            names=["x", "y", "y_z", "valid"])
        with pa.OSFile(str(tmp / GRID_FILE), "wb") as sink, ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        manifest["bytes"] = (tmp / GRID_FILE).stat().st_size
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, default=_json_default))
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / MANIFEST_FILE).exists():  # a concurrent build of the same input won: use its cache
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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


class _quiet_nan_warnings:
    """All-NaN slices are expected (holidays of a stock, empty days): silence numpy's RuntimeWarning."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
