"""The cache's Arrow file written in pieces: its layout first, then each array region in place.

An Arrow IPC file with one record batch keeps every array in one contiguous buffer, which is what
makes the [D, S, F] memory map zero-copy. pyarrow's writer wants the whole batch in memory, which
for a 4,000 x 2,500 x 400 grid is 16 GB. So the file is written once with *placeholder* arrays
(untouched calloc'ed zeros: no physical memory) through a sink that seeks over them instead of
writing them (a sparse file), and the real values are then written into each array's region with
``pwrite``, a chunk of days at a time. The result is byte-for-byte the file pyarrow would write.
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

# column name -> (dtype, values per (day, stock) row; 0 = a plain column, else the row's width)
Layout = dict[str, tuple[np.dtype, int]]
ALIGN = 4096  # O_DIRECT's alignment of file offsets, lengths and memory (the largest block size in use)
_BOUNCE = 8 << 20  # bytes copied to an aligned buffer per direct write (memory not placed like the file)
_DIRECT_PIECE = 64 << 20  # bytes per direct write straight from memory placed like the file


def row_array(values: np.ndarray, width: int) -> pa.Array:
    """Values [rows * width] as one Arrow element per (day, stock) row: FixedSizeBinary(width x itemsize).

    Not a FixedSizeList of numbers: its child array would have rows x width elements, and Arrow's IPC
    writer refuses arrays longer than 2^31 - 1 (4,000 x 2,500 x 400 features is 4e9). One fixed-size
    binary element per row keeps the length at D x S, and the values are still one contiguous buffer.
    """
    values = np.ascontiguousarray(values).reshape(-1)
    rows = len(values) // max(width, 1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width * values.dtype.itemsize), rows,
                                                [None, pa.py_buffer(values)])


def column_values(batch: pa.RecordBatch, name: str, dtype: np.dtype) -> np.ndarray:
    """Zero-copy flat numpy view of column ``name``'s values (a memory-mapped batch stays mapped)."""
    col = batch.column(name)
    if pa.types.is_fixed_size_binary(col.type):
        return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col) * col.type.byte_width // dtype.itemsize)
    return col.to_numpy(zero_copy_only=True)


class _SkipPlaceholders:
    """A file-like sink that seeks over the placeholder buffers and writes everything else."""

    def __init__(self, fh, ranges: list[tuple[int, int]]):
        self.fh, self.ranges, self.closed = fh, ranges, False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if n:
            addr = np.frombuffer(view, np.uint8).ctypes.data
            if any(lo <= addr and addr + n <= hi for lo, hi in self.ranges):
                self.fh.seek(n, os.SEEK_CUR)
                return n
        self.fh.write(view)
        return n

    def tell(self) -> int:
        return self.fh.tell()

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:  # the caller owns the file
        pass


@dataclass
class GridFile:
    """An opened grid file: where each array's values are, for in-place writes by row range."""

    path: Path
    rows_per_day: int  # S
    offsets: dict[str, int]
    row_bytes: dict[str, int]
    direct: bool = True  # write whole aligned pages with O_DIRECT (off where the file system refuses it)

    def write_days(self, name: str, day0: int, values: np.ndarray) -> None:
        """Write values for days day0, day0+1, ... (shape [c, S, ...]) into array ``name``.

        The aligned middle of the region bypasses the page cache (`_write_direct`): a grid as large
        as RAM written through it costs CPU in page allocation and reclaim, evicts the panel being
        read, and no reader needs it cached during the build.
        """
        data = np.ascontiguousarray(values)
        off = self.byte_offset(name, day0)
        expect = data.shape[0] * self.rows_per_day * self.row_bytes[name]
        assert data.nbytes == expect, (name, data.nbytes, expect)
        raw = memoryview(data).cast("B")
        done = (0, 0)
        if self.direct and len(raw) >= 2 * ALIGN:
            done = _write_direct(self.path, off, raw)
            self.direct = done != (0, 0)
        fd = os.open(self.path, os.O_WRONLY)
        try:  # whatever the direct write left: the unaligned head and tail (pages it never touches), or all
            for lo, hi in ((0, done[0]), (done[1], len(raw))) if done != (0, 0) else ((0, len(raw)),):
                _pwrite_all(fd, raw[lo:hi], off + lo)
        finally:
            os.close(fd)

    def byte_offset(self, name: str, day0: int) -> int:
        """Where day ``day0``'s values of array ``name`` start in the file. A buffer whose address has the
        same remainder modulo 4096 is written with O_DIRECT straight from its memory (no bounce copy)."""
        return self.offsets[name] + day0 * self.rows_per_day * self.row_bytes[name]

    def read_days(self, name: str, day0: int, day1: int, dtype: np.dtype, width: int) -> np.ndarray:
        """Values of days [day0, day1) as a new array [c, S, width] (read, not mapped: no RSS left behind)."""
        off = self.byte_offset(name, day0)
        count = (day1 - day0) * self.rows_per_day * max(width, 1)
        out = np.fromfile(self.path, dtype=dtype, count=count, offset=off)
        return out.reshape(day1 - day0, self.rows_per_day, max(width, 1))


def _pwrite_all(fd: int, data: memoryview, off: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, off)
        data, off = data[n:], off + n


def _write_direct(path: Path, off: int, raw: memoryview) -> tuple[int, int]:
    """Write the whole `ALIGN`-byte pages of file region [off, off + len(raw)) with O_DIRECT, straight
    from ``raw`` when its address has off's remainder modulo `ALIGN` (see `GridFile.byte_offset`), else
    through a page-aligned bounce buffer; returns the byte range [lo, hi) of ``raw`` written, (0, 0) when
    the file system refuses O_DIRECT (then nothing was written). The partial pages at both ends are left to
    buffered writes (the kernel keeps the page cache and direct writes coherent either way).
    """
    lo = -off % ALIGN
    hi = lo + (len(raw) - lo) // ALIGN * ALIGN
    if not hasattr(os, "O_DIRECT"):  # not on this OS (macOS): buffered writes
        return 0, 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return 0, 0
    # memory in the same place within its page as the file region: whole pages go from it directly
    aligned = (np.frombuffer(raw, np.uint8, count=1).ctypes.data + lo) % ALIGN == 0
    bounce = None if aligned else mmap.mmap(-1, min(_BOUNCE, hi - lo))  # anonymous maps are page-aligned
    pos = lo
    try:
        while pos < hi:
            if bounce is None:
                n = min(_DIRECT_PIECE, hi - pos)
                written = os.pwrite(fd, raw[pos:pos + n], off + pos)
            else:
                n = min(len(bounce), hi - pos)
                bounce[:n] = raw[pos:pos + n]
                with memoryview(bounce) as view:
                    written = os.pwrite(fd, view[:n], off + pos)
            pos += written // ALIGN * ALIGN
            if written != n:  # short: the rest goes through buffered writes
                break
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
        if bounce is not None:
            bounce.close()
    return (lo, pos) if pos > lo else (0, 0)


def create_grid_file(path: Path, n_days: int, n_stocks: int, layout: Layout) -> GridFile:
    """Write the Arrow file's layout (schema, batch metadata, footer) with sparse zero regions."""
    n_rows = n_days * n_stocks
    placeholders, arrays = [], []
    for dtype, width in layout.values():
        zeros = np.zeros(n_rows * max(width, 1), dtype=dtype)  # calloc: no page is touched
        placeholders.append(zeros)
        arrays.append(row_array(zeros, width) if width else  # not pa.array(zeros): that imports pandas
                      pa.Array.from_buffers(pa.from_numpy_dtype(zeros.dtype), n_rows, [None, pa.py_buffer(zeros)]))
    batch = pa.record_batch(arrays, names=list(layout))
    ranges = [(z.ctypes.data, z.ctypes.data + z.nbytes) for z in placeholders if z.nbytes]
    with open(path, "wb") as fh:
        sink = pa.PythonFile(_SkipPlaceholders(fh, ranges), mode="w")
        with ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        fh.truncate(fh.tell())
    del batch, arrays, placeholders
    # where each values buffer landed: addresses inside a memory map of the file, minus its base
    mm = pa.memory_map(str(path), "r")
    base = mm.read_buffer(1).address  # zero-copy slice at offset 0
    mm.seek(0)
    got = ipc.open_file(mm).get_batch(0)
    offsets, row_bytes = {}, {}
    for name, (dtype, width) in layout.items():
        offsets[name] = got.column(name).buffers()[1].address - base
        row_bytes[name] = np.dtype(dtype).itemsize * max(width, 1)
    del got
    mm.close()
    return GridFile(path=path, rows_per_day=n_stocks, offsets=offsets, row_bytes=row_bytes)
