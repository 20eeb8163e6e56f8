"""Which planted part of the demo's signal does a trained model find? (diagnostic, demo panels only)

    python -m bench.signal_capture                       # default config, demo seed 0, validation days
    python -m bench.signal_capture --set model.vsn_gate=softmax --set model.vsn_var_dim=4

The demo's expected return mu is a sum of five unit-variance parts (`atft_core.data.demo.market`):
an interaction x * sign(gate) (30 % of mu's variance), an extreme-value indicator (15 %), a 10-day
sum of a daily signal (25 %), a sector-relative part (15 %) and a linear one (15 %). Each part is
rebuilt here from the demo parquet's `sig_*` columns, and the model's validation predictions are
rank-correlated with it per day. The oracle (mu itself) scores sqrt(share): 0.55, 0.39, 0.50, 0.39,
0.39. A part near 0 is one the model did not learn. Validation days only: this is for choosing.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from scipy import stats

from atft_core.config import AtftConfig
from atft_core.data.cache.store import open_cache
from atft_core.data.demo.market import EXTREME_THRESHOLD, TEMPORAL_WINDOW
from atft_core.data.split import make_split
from atft_core.evaluate.metrics import summarize
from atft_core.train.trainer import Trainer
from bench.signal import apply, demo_cache

OUT = Path(__file__).resolve().parent
PARTS = ("interaction", "extreme", "temporal", "sector", "linear")


def planted_parts(parquet: Path, dates: list[str], codes: list[str]) -> dict[str, np.ndarray]:
    """The five parts of mu as ``[D, S]`` grids (NaN where the stock has no row)."""
    cols = ["sig_interact_x", "sig_interact_gate", "sig_extreme", "sig_daily_noisy", "sig_sector_rel", "sig_linear"]
    df = pl.read_parquet(parquet, columns=["Date", "Code", "sector33_code", *cols])
    day = {d: i for i, d in enumerate(dates)}
    stock = {c: i for i, c in enumerate(codes)}
    di = np.array([day[str(d)] for d in df["Date"].cast(pl.Utf8)])
    si = np.array([stock[c] for c in df["Code"]])

    def grid(values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        out = np.full((len(dates), len(codes)), fill)
        out[di, si] = values
        return out

    x, gate, ext, daily, rel, lin = (grid(df[c].to_numpy()) for c in cols)
    sector = grid(df["sector33_code"].cast(pl.Int64).to_numpy(), -1).astype(int)
    temporal = np.full_like(daily, np.nan)
    for t in range(len(dates)):  # sum over the published days of the window / sqrt(count)
        w = daily[max(0, t - TEMPORAL_WINDOW + 1):t + 1]
        n = np.isfinite(w).sum(0)
        temporal[t] = np.where(np.isfinite(daily[t]), np.nansum(w, 0) / np.sqrt(np.maximum(n, 1)), np.nan)
    sector_part = np.full_like(rel, np.nan)
    for t in range(len(dates)):
        ok = np.isfinite(rel[t])
        for s in np.unique(sector[t][ok]):
            m = ok & (sector[t] == s)
            sector_part[t, m] = rel[t, m] - rel[t, m].mean() if m.sum() > 1 else 0.0
    p = 2 * stats.norm.sf(EXTREME_THRESHOLD)  # P(|N(0,1)| > threshold): centred, unit variance
    hit = (np.abs(ext) > EXTREME_THRESHOLD).astype(float)
    extreme = np.where(np.isfinite(ext), (p - hit) / np.sqrt(p * (1 - p)), np.nan)
    return dict(zip(PARTS, (x * np.sign(gate), extreme, temporal, sector_part, lin)))


def capture(cfg: AtftConfig, seed: int, stocks: int) -> dict:
    path = demo_cache(seed, stocks=stocks)
    cache = open_cache(path)
    split = make_split(cache, cfg.data)
    res = Trainer(cache, cfg, split=split).fit()
    parquet = next(p for p in Path(path).parents if (p / "demo.parquet").exists()) / "demo.parquet"
    parts = planted_parts(parquet, cache.dates, cache.codes)
    pred = res.val_pred[:, :, 0]
    ms = cfg.data.min_stocks
    out = {"val_rankic": round(res.best_rankic, 4), "best_epoch": res.best_epoch,
           "val_curve": [round(r["val_rankic"], 4) for r in res.history]}
    for name, part in parts.items():  # summarize's RankIC: per-day Spearman, mean over days
        out[name] = round(summarize(pred, part[res.val_days], min_stocks=ms).rankic, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stocks", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="section.key=value (YAML value), repeatable")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = apply(AtftConfig(), overrides)
    cfg.train.max_epochs = cfg.train.patience = args.epochs
    cfg.train.seed, cfg.train.progress = args.seed, False
    row = {"overrides": overrides, **capture(cfg, args.seed, args.stocks)}
    print(json.dumps(row))
    with (OUT / "signal_capture.jsonl").open("a") as f:
        f.write(json.dumps({"seed": args.seed, "stocks": args.stocks, "epochs": args.epochs, **row}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
