"""Grid file writes: whole pages through O_DIRECT, the rest buffered, byte for byte what buffered writes give."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from atft_core.data.cache import grid_file
from atft_core.data.cache.grid_file import create_grid_file

LAYOUT = {"x": (np.dtype(np.float32), 13), "valid": (np.dtype(np.uint8), 0), "y": (np.dtype(np.float32), 4)}


def _write_all(path, direct: bool, n_stocks: int) -> tuple[bytes, bool]:
    """Every array written in uneven day ranges (regions start and end off page boundaries)."""
    grid = create_grid_file(path, 9, n_stocks, LAYOUT)
    grid.direct = direct
    rng = np.random.default_rng(0)
    for name, (dtype, width) in LAYOUT.items():
        for d0, d1 in ((0, 4), (4, 5), (5, 9)):
            values = (rng.standard_normal((d1 - d0, n_stocks, max(width, 1))) * 100).astype(dtype)
            grid.write_days(name, d0, values if width else values[..., 0])
    return path.read_bytes(), grid.direct


@pytest.mark.parametrize("n_stocks", [7, 333, 4000])
def test_direct_writes_give_the_bytes_of_buffered_writes(tmp_path, monkeypatch, n_stocks):
    monkeypatch.setattr(grid_file, "_BOUNCE", 3 * 4096)  # many bounce-buffer rounds per region
    direct, used = _write_all(tmp_path / "d.arrow", True, n_stocks)
    buffered, _ = _write_all(tmp_path / "b.arrow", False, n_stocks)
    assert direct == buffered
    if n_stocks == 4000 and _takes_o_direct(tmp_path):
        assert used  # where the file system takes O_DIRECT, the writes went through it


def _takes_o_direct(folder) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_a_file_system_refusing_o_direct_gets_buffered_writes(tmp_path, monkeypatch):
    real_open = os.open

    def refuse(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_open(path, flags, *args)

    monkeypatch.setattr(grid_file.os, "open", refuse)
    refused, used = _write_all(tmp_path / "r.arrow", True, 4000)
    monkeypatch.undo()
    buffered, _ = _write_all(tmp_path / "b.arrow", False, 4000)
    assert refused == buffered and not used


def test_memory_placed_like_the_file_goes_out_directly_without_a_bounce_copy(tmp_path, monkeypatch):
    """The build places each chunk's buffer like its file region within a page (`GridFile.byte_offset`):
    O_DIRECT then writes from it with no copy. Same bytes as buffered writes; no bounce buffer made."""
    monkeypatch.setattr(grid_file, "_DIRECT_PIECE", 5 * 4096)  # several direct writes per region
    n_stocks, rng = 4000, np.random.default_rng(1)
    path = tmp_path / "p.arrow"
    grid = create_grid_file(path, 9, n_stocks, LAYOUT)
    bounces = []
    real_mmap = grid_file.mmap.mmap
    monkeypatch.setattr(grid_file.mmap, "mmap", lambda *a, **k: bounces.append(a) or real_mmap(*a, **k))
    want = {}
    for d0, d1 in ((0, 4), (4, 5), (5, 9)):
        values = rng.standard_normal((d1 - d0) * n_stocks * 13).astype(np.float32)
        room = np.empty(values.size + 1024, np.float32)
        start = (grid.byte_offset("x", d0) - room.ctypes.data) % 4096 // 4
        placed = room[start:start + values.size]
        placed[:] = values
        grid.write_days("x", d0, placed.reshape(d1 - d0, n_stocks, 13))
        want[d0] = values
    got = np.fromfile(path, np.float32, count=9 * n_stocks * 13, offset=grid.byte_offset("x", 0))
    np.testing.assert_array_equal(got, np.concatenate([want[0], want[4], want[5]]))
    if _takes_o_direct(tmp_path):
        assert grid.direct and not bounces
