"""Small synthetic panels for contract / cache tests (independent of the demo generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl


def make_panel(days: int = 60, stocks: int = 30, features: int = 4, seed: int = 0,
               horizons: tuple[int, ...] = (1, 5), drop: float = 0.03) -> pl.DataFrame:
    """Random panel satisfying the contract; `drop` removes a fraction of rows (halts)."""
    rng = np.random.default_rng(seed)
    dates = np.busday_offset("2022-01-03", np.arange(days), roll="forward").astype("datetime64[D]")
    codes = np.array([f"{1300 + i}0" for i in range(stocks)])
    df = pl.DataFrame({
        "Date": np.repeat(dates, stocks),
        "Code": np.tile(codes, days),
        "Section": np.tile(np.array(["Prime", "Standard", "Growth"])[np.arange(stocks) % 3], days),
        "sector33_code": np.tile(np.array(["0050", "1050", "3050", "3650"])[np.arange(stocks) % 4], days),
    })
    for j in range(features):
        df = df.with_columns(pl.Series(f"feat_{j}", rng.normal(size=days * stocks).astype(np.float32)))
    for h in horizons:
        df = df.with_columns(pl.Series(f"target_{h}d", (0.01 * rng.normal(size=days * stocks)).astype(np.float32)))
    if drop:
        df = df.filter(pl.Series(rng.random(len(df)) > drop))
    return df


def write(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    return path


def small_split_cache(folder: Path):
    """A built and opened 90-day x 25-stock cache with gaps and horizons 1/5/10: what split and batch tests cut."""
    from atft_core.data.cache.build import build_cache
    from atft_core.data.cache.store import open_cache

    path = write(make_panel(days=90, stocks=25, features=3, drop=0.15, horizons=(1, 5, 10)), folder / "p.parquet")
    return open_cache(build_cache(path, folder / "cache", progress=False).path)
