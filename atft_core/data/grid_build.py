"""Build the cache grid from the panel a chunk of days at a time: peak memory is set by the chunk, not by D.

1. keys: read only the date, code and category columns; fix the calendar, the stocks, which
   (day, stock) cells exist and each cell's categories. Checks that need only these (enough
   stocks, enough days) fail here, before anything is written.
2. scatter: read the parquet files in record batches into chunks of days held in memory; a chunk
   whose rows have all arrived gets its statistics (which features are market-level, their daily
   series, which are constant) and is written once to its region of the grid file. Targets stay in
   memory ([D, S, H] is small).
3. normalise: per chunk, cross-sectional z-scores (same day) and market z-scores (past days),
   missing cells to 0, the leak screen's daily RankICs on its days in the chunk; write back.

The result is identical to normalising the whole panel at once: every statistic is per day or
accumulated over days (tested with tiny chunks against one chunk).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atft_core.config import CacheConfig, DataConfig
from atft_core.data.contract import Contract, date_expr
from atft_core.data.grid_file import GridFile, create_grid_file
from atft_core.data.indexing import day_index
from atft_core.data.leak import daily_rankics, screen_days, spacing_of, summarise, suspect_message
from atft_core.data.normalise import DayStats, normalise_days, standardise_targets
from atft_core.errors import DatasetError, Problem

log = logging.getLogger("atft_core.data.grid_build")

_BATCH_CELLS = 32 << 20  # feature values per parquet record batch read (~128 MB as float32)
F32 = np.dtype(np.float32)
_OPEN_CHUNKS = 2  # chunks of days held in memory while their rows arrive (a batch spans ~1-2)


@dataclass
class Plan:
    """What the keys pass found: the grid's axes and the cells that exist."""

    dates: np.ndarray  # [D] datetime64[D]
    codes: np.ndarray  # [S] str, sorted
    valid: np.ndarray  # [D, S] uint8
    static: np.ndarray  # [D, S, 2] int32
    section_vocab: list[str]
    sector_vocab: list[str]
    rows: int


def plan_grid(lf: pl.LazyFrame, contract: Contract, source: str, require: DataConfig | None) -> Plan:
    keys = lf.select(date_expr(contract).alias("Date"), pl.col(contract.code).cast(pl.String).alias("Code"),
                     *[pl.col(c).cast(pl.String) for c in contract.static]).collect()
    dates, codes, day_idx, stock_idx = day_index(keys["Date"].to_numpy(), keys["Code"].to_numpy().astype(str))
    n_days, n_stocks = len(dates), len(codes)
    if n_stocks < 2:
        raise DatasetError(source, Problem(contract.code, f"only {n_stocks} stock(s): the model ranks stocks against "
                                                          "each other on each day and needs a cross-section of many"))
    if require is not None:
        check_history(n_days, contract, require, source)
    valid = np.zeros((n_days, n_stocks), dtype=np.uint8)
    valid[day_idx, stock_idx] = 1
    static = np.full((n_days, n_stocks, 2), -1, dtype=np.int32)
    section_vocab = _static_ids(keys, contract.section, day_idx, stock_idx, static[:, :, 0])
    sector_vocab = _static_ids(keys, contract.sector, day_idx, stock_idx, static[:, :, 1])
    return Plan(dates=np.asarray(dates).astype("datetime64[D]"), codes=np.asarray(codes).astype(str), valid=valid,
                static=static, section_vocab=section_vocab, sector_vocab=sector_vocab, rows=len(keys))


def check_history(n_days: int, contract: Contract, require: DataConfig, source: str) -> None:
    need = require.min_history(contract.horizons)
    if n_days < need:
        split, longest = require.split, max(contract.horizons)
        embargo = longest if split.embargo_days is None else split.embargo_days
        test = f" + test {split.test_days} + embargo {embargo}" if split.test_days else ""
        raise DatasetError(source, Problem(contract.date, (
            f"only {n_days} trading days; training needs at least {need} (window {require.window} + longest "
            f"horizon {longest} + embargo {embargo} + validation {split.val_days}{test} + training "
            f"{require.min_train_days}). Provide a longer history or lower data.window / data.split.val_days / "
            "data.min_train_days in --config")))


def _static_ids(keys: pl.DataFrame, col: str, day_idx: np.ndarray, stock_idx: np.ndarray,
                out: np.ndarray) -> list[str]:
    """Fill out[day, stock] with the id of that row's category (-1 absent); returns the vocabulary.

    Per row, not per stock: a stock that moves market section is seen in its old section before
    the move and in the new one after (taking the last value for all days would leak the future).
    """
    if not col:
        return []
    values = keys[col].to_numpy().astype(object)
    present = np.array([v is not None for v in values], dtype=bool)
    vocab, inv = np.unique(values[present].astype(str), return_inverse=True)
    out[day_idx[present], stock_idx[present]] = inv
    return [str(v) for v in vocab]


def build_grid(files: tuple[Path, ...], contract: Contract, feats: list[str], plan: Plan, cfg: CacheConfig,
               grid_path: Path, progress: bool) -> dict[str, Any]:
    """Write the grid file at ``grid_path``; returns {"meta": manifest fields, "warnings": [...]}."""
    n_days, n_stocks = plan.valid.shape
    n_h = len(contract.targets)
    grid = create_grid_file(grid_path, n_days, n_stocks, {"x": (F32, len(feats)), "y": (F32, n_h),
                                                          "y_z": (F32, n_h), "valid": (np.dtype(np.uint8), 0),
                                                          "static": (np.dtype(np.int32), 2)})
    t0 = time.perf_counter()
    stats = DayStats(n_days, len(feats))
    y = _scatter(files, contract, feats, plan, cfg, grid, stats)
    _say(progress, "read and scattered %d rows, statistics over %d days (%.1fs)", plan.rows, n_days,
         time.perf_counter() - t0)
    valid = plan.valid.astype(bool)
    chunk = max(1, cfg.chunk_days)
    market = stats.market_mask()
    market_z = stats.market_z(market, cfg)

    warnings = [f"feature '{name}': constant across all stocks and days; it carries no information"
                for name, const in zip(feats, stats.constant()) if const]
    screened = screen_days(n_days, cells_per_day=n_stocks * len(feats) * n_h)
    rics, counts = [], []
    nonzero = np.zeros(len(feats), dtype=bool)
    starts = list(range(0, n_days, chunk))
    with ThreadPoolExecutor(max_workers=1) as io:  # reads the next chunk and writes the last while this one is computed
        ahead = io.submit(_raw_days, grid, valid, 0, min(chunk, n_days), len(feats))
        written = None
        for i, d0 in enumerate(starts):
            d1 = min(d0 + chunk, n_days)
            x = ahead.result()
            if i + 1 < len(starts):
                ahead = io.submit(_raw_days, grid, valid, d1, min(d1 + chunk, n_days), len(feats))
            nonzero |= normalise_days(x, valid[d0:d1], market, market_z[d0:d1], cfg.clip)
            here = screened[(screened >= d0) & (screened < d1)]
            if len(here):
                ric, cnt = daily_rankics(x[here - d0], y[here], valid[here])
                rics.append(ric)
                counts.append(cnt)
            if written is not None:
                written.result()
            written = io.submit(grid.write_days, "x", d0, x)
            _say(progress and n_days > chunk, "normalised days %d-%d of %d (%.1fs)", d0, d1, n_days,
                 time.perf_counter() - t0)
        if written is not None:
            written.result()
    for j in np.flatnonzero(~nonzero & ~stats.constant()):
        warnings.append(f"feature '{feats[j]}': all zeros after normalisation (no cross-sectional spread on any "
                        "day); check it upstream")
    y_z = standardise_targets(y, cfg.clip)
    for name, values in (("y", y), ("y_z", y_z), ("valid", plan.valid[:, :, None]), ("static", plan.static)):
        grid.write_days(name, 0, values)
    leak, screen = summarise(np.concatenate(rics), np.concatenate(counts), feats, contract.horizons,
                             spacing_of(n_days, screened), cfg.leak_rankic_floor, cfg.leak_noise_k)
    target_of = dict(zip(contract.horizons, contract.targets))
    warnings += [suspect_message(s, target_of[s["horizon"]]) for s in leak]
    meta = {
        "shape": {"days": n_days, "stocks": n_stocks, "features": len(feats), "horizons": n_h},
        "features": feats, "horizons": list(contract.horizons), "targets": contract.targets,
        "market_features": [f for f, m in zip(feats, market) if m],
        "feature_kinds": {f: ("market" if m else "cross_sectional") for f, m in zip(feats, market)},
        "dates": [str(d)[:10] for d in plan.dates], "codes": [str(c) for c in plan.codes],
        "section_vocab": plan.section_vocab, "sector_vocab": plan.sector_vocab,
        "roles": {"profile": contract.profile, "date": contract.date, "code": contract.code,
                  "section": contract.section, "sector": contract.sector, "not_features": contract.ignored},
        "leak_suspects": leak, "leak_screen": screen, "rows": plan.rows,
    }
    return {"meta": meta, "warnings": warnings}


def _raw_days(grid: GridFile, valid: np.ndarray, d0: int, d1: int, n_feat: int) -> np.ndarray:
    """Raw features of days [d0, d1) as [c, S, F] float32, NaN where the stock had no row."""
    x = grid.read_days("x", d0, d1, F32, n_feat)
    x[~valid[d0:d1]] = np.nan
    return x


def _scatter(files: tuple[Path, ...], contract: Contract, feats: list[str], plan: Plan, cfg: CacheConfig,
             grid: GridFile, stats: DayStats) -> np.ndarray:
    """Raw features into the grid file by record batch, with each chunk's statistics; returns raw targets [D, S, H].

    A chunk of days stays in memory until all its rows have arrived (the plan knows how many), then its
    statistics are taken and it is written once. On a file ordered by date that is every chunk: no
    read-back. On another order (rows of a day spread over the file) at most `_OPEN_CHUNKS` chunks
    stay open; the others go to the file and are read back when more of their rows come.
    """
    n_days, n_stocks = plan.valid.shape
    y = np.full((n_days, n_stocks, len(contract.targets)), np.nan, dtype=np.float32)
    chunk = max(1, cfg.chunk_days)
    need = np.add.reduceat(plan.valid.sum(axis=1), np.arange(0, n_days, chunk))  # rows per chunk
    got = np.zeros_like(need)
    on_disk = np.zeros(len(need), dtype=bool)  # chunks whose partial values were written to the file
    open_: dict[int, np.ndarray] = {}  # chunk -> its [c, S, F] raw values, NaN where no row yet
    columns = list(dict.fromkeys([contract.date, contract.code, *feats, *contract.targets]))
    keys = [date_expr(contract).alias("__date"), pl.col(contract.code).cast(pl.String).alias("__code")]
    code_ids = pl.DataFrame({"__code": plan.codes.tolist(), "__stock": np.arange(n_stocks, dtype=np.int64)})
    batch_rows = max(1024, _BATCH_CELLS // max(1, len(columns)))

    def close(c: int, slab: np.ndarray) -> None:
        d0 = c * chunk
        if got[c] == need[c]:
            stats.add(d0, slab, plan.valid[d0:d0 + len(slab)].astype(bool))
        else:
            on_disk[c] = True
        grid.write_days("x", d0, slab)

    for f in files:
        # a 1 MB read buffer per column: ~4x faster than 8 MB (and than none), and the reader holds a few
        # MB per column, not a whole row group (pre-buffering: 1.6 GB on a 250-day x 4,000 x 400 group)
        reader = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns, use_threads=True):
            k = pl.from_arrow(batch.select([contract.date, contract.code])).select(keys)
            day = np.searchsorted(plan.dates, k["__date"].to_numpy().astype("datetime64[D]"))
            stock = k.join(code_ids, on="__code", how="left", maintain_order="left")["__stock"].to_numpy()
            vals = _as_f32(batch, feats)
            y[day, stock] = _as_f32(batch, contract.targets)
            del batch, k
            ck = day // chunk
            for c in np.unique(ck).tolist():
                rows = slice(None) if ck[0] == ck[-1] == c else np.flatnonzero(ck == c)
                d0 = c * chunk
                d1 = min(d0 + chunk, n_days)
                slab = open_.pop(c, None)
                if slab is None:
                    slab = (grid.read_days("x", d0, d1, F32, len(feats)) if on_disk[c]
                            else np.full((d1 - d0, n_stocks, len(feats)), np.nan, dtype=np.float32))
                slab[day[rows] - d0, stock[rows]] = vals[rows]
                got[c] += len(day[rows])
                if got[c] == need[c]:
                    close(c, slab)
                else:
                    open_[c] = slab
            while len(open_) > _OPEN_CHUNKS:  # rows of many chunks interleaved: park the oldest on disk
                c = min(open_)
                close(c, open_.pop(c))
    for c in sorted(open_):
        close(c, open_.pop(c))
    for c in np.flatnonzero(on_disk).tolist():  # chunks that were parked: statistics now they are whole
        d0 = c * chunk
        d1 = min(d0 + chunk, n_days)
        stats.add(d0, _raw_days(grid, plan.valid.astype(bool), d0, d1, len(feats)), plan.valid[d0:d1].astype(bool))
    y[~np.isfinite(y)] = np.nan
    return y


def _as_f32(batch: pa.RecordBatch, names: list[str]) -> np.ndarray:
    """[rows, len(names)] float32 straight from Arrow (nulls and +-inf -> NaN), C-contiguous.

    Filled column by column into a [len(names), rows] array (contiguous writes), then transposed in one
    copy: the scatter then moves whole rows (scattering from the strided view cost ~10x more).
    """
    out = np.empty((len(names), batch.num_rows), dtype=np.float32)
    for j, name in enumerate(names):
        col = batch.column(name)
        if col.type != pa.float32():
            col = pc.cast(col, pa.float32())
        out[j] = col.to_numpy(zero_copy_only=False)
        if np.isinf(out[j]).any():  # +-inf become missing (reported as warnings by the contract)
            out[j][np.isinf(out[j])] = np.nan
    return np.ascontiguousarray(out.T)


def _say(on: bool, msg: str, *args: Any) -> None:
    if on:
        log.info(msg, *args)
