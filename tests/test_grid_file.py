"""Grid file writes: whole pages through O_DIRECT, the rest buffered, byte for byte what buffered writes give."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from atft_core.data import grid_file
from atft_core.data.grid_file import create_grid_file

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
