"""Caches for the GPU benches: a synthetic grid written straight from numpy, or the demo market built.

`synthetic_grid_cache` fills the cache's arrays with numpy and publishes them with the cache
module's own writer (seconds at 4,000 x 2,500 x 64); `demo_source_cache` runs the demo market
generator and `build_cache` (the real build path; minutes at that size). Both reuse an existing cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.common import bench_dir, demo_panel

log = logging.getLogger("bench.synthetic_cache")



def synthetic_grid_cache(stocks: int, days: int, features: int, seed: int = 0, root: Path | None = None,
                         horizons: tuple[int, ...] = (1, 5, 10, 20), missing: float = 0.02) -> Path:
    """Write (once) a cache in the atft format straight from numpy, without a parquet or a build.

    Features are i.i.d. N(0, 1) (already "normalised"); the 1-day-ahead return has a planted part
    0.1 * feat_0 + 0.1 * (mean of feat_1 over the last 5 days), so a model can find something;
    longer horizons add noise. Missing cells (2 %) are marked invalid, as halts would be.
    """
    from atft_core.config import CacheConfig
    from atft_core.data.cache.build import _publish
    from atft_core.data.cache.normalise import standardise_targets
    from atft_core.data.cache.store import FORMAT_VERSION, MANIFEST_FILE

    root = root or bench_dir() / "gpu"
    key = f"synthetic-s{stocks}-d{days}-f{features}-seed{seed}"
    final = root / key
    if (final / MANIFEST_FILE).exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    x = np.empty((days, stocks, features), dtype=np.float32)
    chunk = max(1, 2**26 // max(1, stocks * features))
    for a in range(0, days, chunk):  # bounded temporaries at the full size
        b = min(days, a + chunk)
        x[a:b] = rng.standard_normal((b - a, stocks, features), dtype=np.float32)
    valid = (rng.random((days, stocks)) >= missing).astype(np.uint8)
    csum = np.cumsum(np.concatenate([np.zeros((1, stocks), np.float64), x[:, :, min(1, features - 1)]]), axis=0)
    lag5 = (csum[1:] - csum[np.maximum(np.arange(1, days + 1) - 5, 0)]) / 5.0  # mean over the last <= 5 days
    signal = 0.1 * x[:, :, 0] + 0.1 * lag5
    h_max = max(horizons)
    y = np.full((days, stocks, len(horizons)), np.nan, dtype=np.float32)
    for k, h in enumerate(horizons):
        noise = rng.standard_normal((days, stocks), dtype=np.float32) * np.sqrt(h)
        y[:, :, k] = 0.01 * (signal + noise)
        y[days - h:, :, k] = np.nan  # forward returns are unknown for the last h days
    y[valid == 0] = np.nan
    x[valid == 0] = 0.0
    y_z = standardise_targets(y, CacheConfig().clip)
    names = ["returns_1d", *[f"feat_{j:03d}" for j in range(1, features)]]
    dates = np.busday_offset("2014-01-06", np.arange(days), roll="forward").astype("datetime64[D]")
    codes = [f"{1300 + i}0" if i < 8700 else f"{i:05d}" for i in range(stocks)]
    fingerprint = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "source": f"synthetic:{key}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_params": dataclasses.asdict(CacheConfig()), "warnings": [],
        "shape": {"days": days, "stocks": stocks, "features": features, "horizons": len(horizons)},
        "features": names, "horizons": list(horizons), "targets": [f"target_{h}d" for h in horizons],
        "market_features": [], "feature_kinds": {n: "cross_sectional" for n in names},
        "dates": [str(d) for d in dates], "codes": codes,
        "section_vocab": ["Growth", "Prime", "Standard"], "sector_vocab": [f"{c:04d}" for c in range(50, 3350, 100)],
        "section_id": (np.arange(stocks) % 3).tolist(), "sector_id": (np.arange(stocks) % 33).tolist(),
        "leak_suspects": [], "rows": int(valid.sum()), "synthetic": {"seed": seed, "missing": missing, "h_max": h_max},
    }
    path = _publish(root, final, manifest, {"x": x, "y": y, "y_z": y_z, "valid": valid})
    log.info("synthetic grid cache %s written in %.1f s", path, time.perf_counter() - t0)
    return path


def demo_source_cache(stocks: int, days: int, features: int, seed: int = 0) -> Path:
    from atft_core.data.cache.build import build_cache

    return build_cache(demo_panel(stocks, days, features, seed), bench_dir() / "gpu" / "demo-caches",
                       progress=True).path
