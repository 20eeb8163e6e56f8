"""The Arrow cache on disk: its file layout, and opening it as memory-mapped numpy views.

Layout (one Arrow IPC file, one record batch, uncompressed, rows ordered day-major then stock; each
row of numbers is one FixedSizeBinary element holding them as little-endian values, see
`grid_file.row_array`: a FixedSizeList child of D x S x F numbers cannot be written past 2^31 - 1):
    x      FixedSizeBinary[4F]  float32 x F: normalised features, missing cells 0 (= the day's median)
    y      FixedSizeBinary[4H]  float32 x H: raw forward returns, NaN where unknown
    y_z    FixedSizeBinary[4H]  float32 x H: per-day standardised (and clipped) targets, NaN where unknown
    valid  uint8                1 where the stock had a row that day
    static FixedSizeBinary[8]   int32 x 2: section id, sector id of that row (-1 unknown): as of that day
Because each column's values are one contiguous buffer, `x` opens as a zero-copy numpy view of
shape [D, S, F]: a window of L days for every stock is the slice ``x[t-L+1 : t+1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from atft_core.data.cache.grid_file import column_values
from atft_core.retention import mark_used

FORMAT_VERSION = 3  # raised whenever the layout changes: a reader refuses any other version (rebuild)
GRID_FILE = "grid.arrow"
MANIFEST_FILE = "manifest.json"


@dataclass
class Cache:
    """An opened cache: zero-copy numpy views over the memory-mapped grid plus its manifest."""

    path: Path
    manifest: dict[str, Any]
    x: np.ndarray  # [D, S, F] float32
    y: np.ndarray  # [D, S, H] float32 raw forward returns
    y_z: np.ndarray  # [D, S, H] float32 standardised targets
    valid: np.ndarray  # [D, S] bool
    static: np.ndarray  # [D, S, 2] int32: section id, sector id on that day (-1 unknown)

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
    mark_used(path)  # every run opens its cache here: `atft gc` keeps the caches used in the last days
    d, s, f, h = (manifest["shape"][k] for k in ("days", "stocks", "features", "horizons"))
    batch = ipc.open_file(pa.memory_map(str(path / GRID_FILE), "r")).get_batch(0)

    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    return Cache(path=path, manifest=manifest,
                 x=column_values(batch, "x", f32).reshape(d, s, f), y=column_values(batch, "y", f32).reshape(d, s, h),
                 y_z=column_values(batch, "y_z", f32).reshape(d, s, h),
                 valid=column_values(batch, "valid", np.dtype(np.uint8)).reshape(d, s).view(np.bool_),
                 static=column_values(batch, "static", i32).reshape(d, s, 2))
