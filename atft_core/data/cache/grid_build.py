"""Build the cache grid from the panel a chunk of days at a time: peak memory is set by the chunk, not by D.

1. keys: read only the date, code and category columns; fix the calendar, the stocks, which
   (day, stock) cells exist, each row's cell and each cell's categories. Checks that need only these
   (enough stocks, enough days) fail here, before anything is written.
2. one read of the feature and target columns, in record batches, gathered into chunks of days held
   in memory (feature-major, by the compiled `build_kernels.gather_columns`); a chunk
   whose rows have all arrived is handed to `grid_stream.ChunkStream`: its statistics, cross-sectional
   z-scores (same day), market z-scores (past days), missing cells to 0, the leak screen's daily
   RankICs on its days, and one write to its region of the grid file. The same read counts the
   infinite and missing values the contract warns about. Targets stay in memory ([D, S, H] is small).

The result is identical to normalising the whole panel at once: every statistic is per day or
accumulated over past days (tested with tiny chunks against one chunk).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from atft_core.config import CacheConfig, DataConfig
from atft_core.data.cache import build_kernels
from atft_core.data.cache.arrow_numpy import float_values
from atft_core.data.cache.grid_file import GridFile, create_grid_file
from atft_core.data.cache.grid_stream import ChunkStream
from atft_core.data.cache.indexing import factorize_sorted
from atft_core.data.cache.leak import screen_days, spacing_of, summarise, suspect_message
from atft_core.data.contract import Contract, date_expr, value_warnings
from atft_core.errors import DatasetError, Problem

log = logging.getLogger("atft_core.data.cache.grid_build")

# Values per parquet record batch read (~24 MB as float32): below glibc's largest mmap threshold
# (32 MB), so each batch's arrays reuse freed heap memory instead of being mapped and page-faulted in
# anew (larger batches spend their time in page faults).
_BATCH_CELLS = 6 << 20
F32 = np.dtype(np.float32)
_WHOLE_GROUP_BYTES = 512 << 20  # parquet row groups read whole up to this size (see `_reader`)
_OPEN_CHUNKS = 2  # chunks of days held in memory while their rows arrive (a batch spans ~1-2)


class BuildStopped(Exception):
    """`build_grid` was told to stop (its ``stop`` returned True): the cache it was building exists."""


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
    row_day: np.ndarray  # [rows] int32: each row's day, in the files' order
    row_stock: np.ndarray  # [rows] int32: each row's stock


def plan_grid(lf: pl.LazyFrame, contract: Contract, source: str, require: DataConfig | None) -> Plan:
    keys = lf.select(date_expr(contract).alias("Date"), pl.col(contract.code).cast(pl.String).alias("Code"),
                     *[pl.col(c).cast(pl.String) for c in contract.static]).collect()
    dates, day_idx = factorize_sorted(keys["Date"].to_numpy())
    codes, stock_idx = _factorize(keys["Code"])
    n_days, n_stocks = len(dates), len(codes)
    valid = np.zeros((n_days, n_stocks), dtype=np.uint8)
    valid[day_idx, stock_idx] = 1
    _check_unique(valid, day_idx, stock_idx, dates, codes, contract, source)
    if n_stocks < 2:
        raise DatasetError(source, Problem(contract.code, f"only {n_stocks} stock(s): the model ranks stocks against "
                                                          "each other on each day and needs a cross-section of many"))
    if require is not None:
        check_history(n_days, contract, require, source)
    static = np.full((n_days, n_stocks, 2), -1, dtype=np.int32)
    section_vocab = _static_ids(keys, contract.section, day_idx, stock_idx, static[:, :, 0])
    sector_vocab = _static_ids(keys, contract.sector, day_idx, stock_idx, static[:, :, 1])
    return Plan(dates=np.asarray(dates).astype("datetime64[D]"), codes=np.asarray(codes, dtype=str), valid=valid,
                static=static, section_vocab=section_vocab, sector_vocab=sector_vocab, rows=len(keys),
                row_day=day_idx.astype(np.int32), row_stock=stock_idx.astype(np.int32))


def _check_unique(valid: np.ndarray, day_idx: np.ndarray, stock_idx: np.ndarray, dates: np.ndarray, codes: list[str],
                  contract: Contract, source: str) -> None:
    """Each stock at most once a day: fewer cells than rows means duplicate (date, code) keys. From the
    grid's own indices: a polars group-by over the keys would add to the build's serial first phase."""
    if int(valid.sum()) == len(day_idx):
        return
    per_cell = np.bincount(day_idx.astype(np.int64) * valid.shape[1] + stock_idx, minlength=valid.size)
    first = int(np.argmax(per_cell > 1))
    example = f"{str(dates[first // valid.shape[1]])[:10]}, {codes[first % valid.shape[1]]}"
    raise DatasetError(source, Problem(f"{contract.date}, {contract.code}",
                                       f"{int((per_cell > 1).sum())} duplicate (date, code) key(s), e.g. ({example}); "
                                       "each stock may appear once per day"))


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
    vocab, ids = _factorize(keys[col])
    present = ids >= 0
    out[day_idx[present], stock_idx[present]] = ids[present]
    return vocab


def _factorize(values: pl.Series) -> tuple[list[str], np.ndarray]:
    """(sorted distinct strings, each row's index in them: -1 where null), without a Python string per row.

    A join against the few thousand distinct values, far cheaper than np.unique over millions of strings.
    """
    vocab = values.drop_nulls().unique().sort()
    table = pl.DataFrame({"v": vocab, "i": np.arange(len(vocab), dtype=np.int64)})
    ids = values.alias("v").to_frame().join(table, on="v", how="left", maintain_order="left")["i"]
    return vocab.to_list(), ids.fill_null(-1).to_numpy()


def build_grid(files: tuple[Path, ...], contract: Contract, plan: Plan, cfg: CacheConfig, grid_path: Path,
               progress: bool, source: str, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Write the grid file at ``grid_path``; returns {"meta": manifest fields, "warnings": [...]}.

    ``stop`` is asked after each record batch; when it says True the build ends with `BuildStopped`
    (the content hash, running beside the build, found this panel's cache already built).

    One read of the panel's value columns. Built again (a second read) only when a feature turns out
    entirely missing (it is dropped) or the market-level features guessed from the first chunk are
    not the ones over all days (the result is always that of a whole-panel build).
    """
    feats, market, warnings = list(contract.features), None, []
    while True:
        with _small_pages():
            stream, infinite = _stream_grid(files, contract, feats, plan, cfg, grid_path, progress, market, stop)
        finite = stream.stats.count.astype(np.int64)
        if market is None and feats == contract.features:  # the values as the file has them: said once
            warnings = value_warnings(feats, dict(zip(feats, finite)), dict(zip(feats, infinite)))
        keep = np.flatnonzero(finite > 0)
        if not len(keep):
            raise DatasetError(source, Problem("", "every feature column is entirely missing"))
        final = stream.stats.market_mask()
        if len(keep) == len(feats) and np.array_equal(final, stream.market):
            break
        log.info("building again: %d entirely missing feature(s) dropped, market-level features %s",
                 len(feats) - len(keep), "as guessed" if np.array_equal(final, stream.market) else "corrected")
        feats, market = [feats[j] for j in keep], final[keep]
    meta, leak_warnings = _meta(contract, feats, plan, stream, cfg)
    return {"meta": meta, "warnings": warnings + _grid_warnings(feats, stream) + leak_warnings}


def _stream_grid(files: tuple[Path, ...], contract: Contract, feats: list[str], plan: Plan, cfg: CacheConfig,
                 grid_path: Path, progress: bool, market: np.ndarray | None,
                 stop: Callable[[], bool] | None) -> tuple[ChunkStream, np.ndarray]:
    """The grid file written chunk by chunk as the panel is read; returns the stream and infinite counts [F]."""
    n_days, n_stocks = plan.valid.shape
    n_h = len(contract.targets)
    grid = create_grid_file(grid_path, n_days, n_stocks, {"x": (F32, len(feats)), "y": (F32, n_h),
                                                          "y_z": (F32, n_h), "valid": (np.dtype(np.uint8), 0),
                                                          "static": (np.dtype(np.int32), 2)})
    t0 = time.perf_counter()
    y = np.full((n_days, n_stocks, n_h), np.nan, dtype=np.float32)
    screened = screen_days(n_days, cells_per_day=n_stocks * len(feats) * n_h)
    stream = ChunkStream(grid, plan.valid.astype(bool), y, cfg, len(feats), screened, market, progress)
    try:
        infinite = _scatter(files, contract, feats, plan, cfg, grid, stream, y, stop)
    except BaseException:
        stream.abandon()  # its threads stop touching the file before the caller removes it
        raise
    stream.finish()
    _say(progress, "read, normalised and wrote %d rows over %d days (%.1fs)", plan.rows, n_days,
         time.perf_counter() - t0)
    for name, values in (("y", y), ("y_z", stream.y_z), ("valid", plan.valid[:, :, None]), ("static", plan.static)):
        grid.write_days(name, 0, values)
    return stream, infinite


@contextmanager
def _small_pages() -> Iterator[None]:
    """numpy's new arrays of 4 MB and more without transparent huge pages (numpy asks for them by default),
    set back after.

    Huge pages come zeroed 2 MB at a time from memory the kernel must find contiguous: a cost in system
    time that buys nothing for buffers that are allocated once and then reused. numpy's switch is
    process-wide and private: a numpy without it builds with huge pages, only slower.
    """
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        yield
        return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)


def _grid_warnings(feats: list[str], stream: ChunkStream) -> list[str]:
    constant = stream.stats.constant()
    warnings = [f"feature '{name}': constant across all stocks and days; it carries no information"
                for name, const in zip(feats, constant) if const]
    for j in np.flatnonzero(~stream.nonzero & ~constant):
        warnings.append(f"feature '{feats[j]}': all zeros after normalisation (no cross-sectional spread on any "
                        "day); check it upstream")
    return warnings


def _meta(contract: Contract, feats: list[str], plan: Plan, stream: ChunkStream,
          cfg: CacheConfig) -> tuple[dict[str, Any], list[str]]:
    """The manifest's grid fields, and a warning per look-ahead suspect."""
    n_days, n_stocks = plan.valid.shape
    ric, cnt = stream.screen()
    leak, screen = summarise(ric, cnt, feats, contract.horizons, spacing_of(n_days, stream.screened),
                             cfg.leak_rankic_floor, cfg.leak_noise_k)
    target_of = dict(zip(contract.horizons, contract.targets))
    market = stream.market
    return {
        "shape": {"days": n_days, "stocks": n_stocks, "features": len(feats), "horizons": len(contract.targets)},
        "features": feats, "horizons": list(contract.horizons), "targets": contract.targets,
        "market_features": [f for f, m in zip(feats, market) if m],
        "feature_kinds": {f: ("market" if m else "cross_sectional") for f, m in zip(feats, market)},
        "dates": [str(d)[:10] for d in plan.dates], "codes": [str(c) for c in plan.codes],
        "section_vocab": plan.section_vocab, "sector_vocab": plan.sector_vocab,
        "roles": {"profile": contract.profile, "date": contract.date, "code": contract.code,
                  "section": contract.section, "sector": contract.sector, "not_features": contract.ignored},
        "leak_suspects": leak, "leak_screen": screen, "rows": plan.rows,
    }, [suspect_message(s, target_of[s["horizon"]]) for s in leak]


def _scatter(files: tuple[Path, ...], contract: Contract, feats: list[str], plan: Plan, cfg: CacheConfig,
             grid: GridFile, stream: ChunkStream, y: np.ndarray, stop: Callable[[], bool] | None) -> np.ndarray:
    """Raw features by record batch into chunks of days, each given to ``stream`` whole; fills y [D, S, H].

    Only the value columns are decoded: each row's (day, stock) cell is the keys pass's, row for row
    (both read the files in the same order). A chunk of days stays in memory until all its rows have
    arrived (the plan knows how many). On a file ordered by date that is every chunk. On another order
    (rows of a day spread over the file) at most `_OPEN_CHUNKS` chunks stay open; the others go to the
    file and are read back when more of their rows come. Returns the count of infinite values per
    feature [F] (they become missing).
    """
    n_days, n_stocks = plan.valid.shape
    n_feat = len(feats)
    chunk = max(1, cfg.chunk_days)
    need = np.add.reduceat(plan.valid.sum(axis=1), np.arange(0, n_days, chunk))  # rows per chunk
    got = np.zeros_like(need)
    on_disk = np.zeros(len(need), dtype=bool)  # chunks whose partial values were written to the file
    open_: dict[int, np.ndarray] = {}  # chunk -> its [c, F, S] raw values, NaN where no row yet
    infinite = np.zeros(n_feat, dtype=np.int64)
    columns = [*feats, *contract.targets]
    batch_rows = max(1024, _BATCH_CELLS // max(1, len(columns)))

    def park(c: int, slab: np.ndarray) -> None:
        on_disk[c] = True
        grid.write_days("x", c * chunk, slab)  # the chunk's region of the grid file as scratch space

    def place(day: np.ndarray, stock: np.ndarray, cols: list[pa.Array]) -> None:
        ck = day // chunk
        for c in np.unique(ck).tolist():
            sel = np.arange(len(day)) if ck[0] == ck[-1] == c else np.flatnonzero(ck == c)
            d0 = c * chunk
            d1 = min(d0 + chunk, n_days)
            slab = open_.pop(c, None)
            if slab is None:
                slab = (grid.read_days("x", d0, d1, F32, n_feat).reshape(d1 - d0, n_feat, n_stocks) if on_disk[c]
                        else stream.slab(d1 - d0))
            _gather(cols, sel, day, d0, stock, slab, infinite)
            got[c] += len(sel)
            if got[c] == need[c]:
                stream.put(c, slab)
            else:
                open_[c] = slab
        while len(open_) > _OPEN_CHUNKS:  # rows of many chunks interleaved: park the oldest on disk
            c = min(open_)
            park(c, open_.pop(c))

    row = 0
    for batch in _batches(files, columns, batch_rows):
        n = batch.num_rows
        day, stock = plan.row_day[row:row + n], plan.row_stock[row:row + n]
        row += n
        arrays = dict(zip(batch.schema.names, batch.columns))  # column(name) searches the schema each time
        cols = [_f32(arrays[name]) for name in columns]
        y[day, stock] = _finite_f32(np.stack([float_values(c) for c in cols[n_feat:]], axis=1))
        place(day, stock, cols[:n_feat])
        del batch, cols
        if stop is not None and stop():
            raise BuildStopped
    assert row == plan.rows and not open_ and (got == need).all(), "rows read differ from the keys pass"
    return infinite


def _f32(values: pa.Array) -> pa.Array:
    """A column as float32 (nulls stay nulls)."""
    if values.type != pa.float32():
        values = values.cast(pa.float32(), safe=False)  # as polars casts: out-of-range doubles become inf
    return values


def _gather(cols: list[pa.Array], sel: np.ndarray, day: np.ndarray, day0: int, stock: np.ndarray,
            slab: np.ndarray, infinite: np.ndarray) -> None:
    """slab[day - day0, f, stock] = cols[f] over rows ``sel`` (nulls and infinite values as NaN, the latter
    counted per feature)."""
    if build_kernels.AVAILABLE:
        buffers = [c.buffers() for c in cols]  # [validity or None, values]; cols keep them alive
        values = np.array([b[1].address for b in buffers], dtype=np.int64)
        validity = np.array([b[0].address if b[0] is not None and c.null_count else 0
                             for b, c in zip(buffers, cols)], dtype=np.int64)
        offsets = np.array([c.offset for c in cols], dtype=np.int64)
        build_kernels.gather_columns(values, validity, offsets, len(day), sel, day, day0, stock, slab, infinite)
        return
    d, s = day[sel] - day0, stock[sel]
    for f, col in enumerate(cols):
        v = float_values(col)[sel]
        inf = np.isinf(v)
        if inf.any():
            infinite[f] += np.count_nonzero(inf)
            v = np.where(inf, np.float32(np.nan), v)
        slab[d, f, s] = v


def _batches(files: tuple[Path, ...], columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The files' record batches, decoded into memory from the system allocator.

    pyarrow's default pool (mimalloc) hands each batch's freed buffers back to the OS, so the next
    batch page-faults them in again (system time that grows with the panel). malloc keeps them for
    reuse. The pool is pyarrow's process-wide default: set back when done.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        for f in files:
            yield from _reader(f).iter_batches(batch_size=batch_rows, columns=columns, use_threads=True)
    finally:
        pa.set_memory_pool(previous)


def _reader(path: Path) -> pq.ParquetFile:
    """Row groups up to `_WHOLE_GROUP_BYTES` are read a column chunk at a time (faster than buffered
    reads); larger ones through a 256 KB buffer per column, which holds ~0.1 GB over 400 columns instead
    of the whole group (faster than whole chunks or polars' streaming batches, which also hold GBs;
    larger buffers are slower).

    Not through a memory map, though that saves the copy into the buffers: each of the column readers
    keeps its current page mapped, and where the page cache holds the file in large folios every touch
    maps whole folios, so the mapped pages grow the RSS by GBs depending on how the file was cached.
    """
    meta = pq.read_metadata(path)
    largest = max((meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)), default=0)
    if largest <= _WHOLE_GROUP_BYTES:
        return pq.ParquetFile(path, pre_buffer=False)
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=256 << 10)


def _finite_f32(out: np.ndarray) -> np.ndarray:
    """In place on float32 values: +-inf -> NaN (nulls already are): an infinite return is unknown."""
    out[np.isinf(out)] = np.nan
    return out


def _say(on: bool, msg: str, *args: Any) -> None:
    if on:
        log.info(msg, *args)
