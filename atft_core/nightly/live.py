"""The live record: each night's ranks scored against the returns that have since arrived.

No backtest replaces it: the ranks were written before their returns existed, by the model that was
champion that night. Every night, each ranks file (`registry/ranks/ranks-DATE.parquet`) whose
h-day return is now in the panel (DATE + h trading days <= tonight; the panel leaves later targets
empty) is scored once per model (the champion's ``score_{h}d`` and the peer's ``peer_score_{h}d``):

    rankic    Spearman correlation of the scores with the realised h-day returns of that day
    spread    mean realised return of the top decile minus that of the bottom decile
    turnover  share of the top and bottom deciles' names (averaged) that were not there the night before

Rows are keyed by (date, model, horizon): a night re-run, or a row already scored, is never
written twice and never changed, so the file only grows by new facts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from atft_core.data.cache.store import Cache
from atft_core.evaluate.compare import daily_rankic
from atft_core.nightly.ranks import DECILES

KEY = ("date", "model", "horizon")
SCHEMA = {"date": pl.Utf8, "model": pl.Utf8, "model_id": pl.Utf8, "horizon": pl.Int64, "rankic": pl.Float64,
          "spread": pl.Float64, "turnover": pl.Float64, "n_stocks": pl.Int64, "scored_on": pl.Utf8}
MODELS = {"champion": "score", "peer": "peer_score"}  # model -> column prefix in a ranks file
_RANKS = re.compile(r"^ranks-(\d{4}-\d{2}-\d{2})\.parquet$")


def ranks_files(folder: Path) -> dict[str, Path]:
    """{date: ranks file} of a ranks folder, in date order."""
    if not folder.is_dir():
        return {}
    found = {m.group(1): p for p in folder.iterdir() if (m := _RANKS.match(p.name))}
    return dict(sorted(found.items()))


def read_history(path: Path) -> pl.DataFrame:
    return pl.read_csv(path, schema=SCHEMA) if path.is_file() else pl.DataFrame(schema=SCHEMA)


def score_ranks(ranks: pl.DataFrame, previous: pl.DataFrame | None, cache: Cache, *, scored_on: str,
                min_stocks: int = 20) -> list[dict[str, Any]]:
    """Rows of the live record for one ranks file, for every (model, horizon) whose returns are known."""
    date = str(ranks["Date"][0])
    if date not in cache.dates:
        return []
    day = cache.dates.index(date)
    index = {c: i for i, c in enumerate(cache.codes)}
    stocks = np.array([index.get(c, -1) for c in ranks["Code"].to_list()])
    known = stocks >= 0
    model_id = str(ranks["model_id"][0]) if "model_id" in ranks.columns else ""
    rows = []
    for k, h in enumerate(cache.horizons):
        realised = np.full(len(stocks), np.nan)
        realised[known] = np.where(cache.valid[day, stocks[known]], cache.y[day, stocks[known], k], np.nan)
        for model, prefix in MODELS.items():
            col = f"{prefix}_{h}d"
            if col not in ranks.columns:
                continue
            score = ranks[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
            ok = np.isfinite(score) & np.isfinite(realised)
            if ok.sum() < min_stocks:
                continue  # not arrived yet (or too few names): a later night scores it
            rankic = float(daily_rankic(score[None, ok], realised[None, ok], min_stocks=min_stocks)[0])
            top, bottom = _ends(score, ok)
            prev = _previous_ends(previous, ranks, col)
            turnover = None if prev is None else float(np.mean([1 - len(top & prev[0]) / len(top),
                                                                 1 - len(bottom & prev[1]) / len(bottom)]))
            spread = float(np.mean(realised[sorted(top)]) - np.mean(realised[sorted(bottom)]))
            rows.append({"date": date, "model": model, "model_id": model_id if model == "champion" else "lightgbm",
                         "horizon": int(h), "rankic": rankic, "spread": spread, "turnover": turnover,
                         "n_stocks": int(ok.sum()), "scored_on": scored_on})
    return rows


def _ends(score: np.ndarray, ok: np.ndarray) -> tuple[set[int], set[int]]:
    """Row positions of the top and bottom decile by score among the rows in `ok` (as sets)."""
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(-score[idx], kind="stable")]
    n = max(1, len(order) // DECILES)
    return set(order[:n].tolist()), set(order[-n:].tolist())


def _previous_ends(previous: pl.DataFrame | None, ranks: pl.DataFrame, col: str) -> tuple[set[int], set[int]] | None:
    """The previous night's top and bottom decile, as row positions of tonight's ranks (codes matched)."""
    if previous is None or col not in previous.columns:
        return None
    score = previous[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
    ok = np.isfinite(score)
    if not ok.any():
        return None
    top, bottom = _ends(score, ok)
    prev_codes = previous["Code"].to_list()
    here = {c: i for i, c in enumerate(ranks["Code"].to_list())}
    return ({here.get(prev_codes[i], -1 - i) for i in top}, {here.get(prev_codes[i], -1 - i) for i in bottom})


def update_history(path: Path, folder: Path, cache: Cache, *, scored_on: str, min_stocks: int = 20) -> pl.DataFrame:
    """Score every ranks file of `folder` not yet in the history at `path`; append the new rows; the history.

    Written atomically (temp file + rename). Rows already present are kept as they are.
    """
    history = read_history(path)
    have = set(history.select(KEY).iter_rows()) if len(history) else set()
    files = ranks_files(folder)
    new: list[dict[str, Any]] = []
    previous = None
    for date, file in files.items():
        ranks = pl.read_parquet(file)
        if date < scored_on:  # tonight's own ranks have no returns yet
            for row in score_ranks(ranks, previous, cache, scored_on=scored_on, min_stocks=min_stocks):
                if (row["date"], row["model"], row["horizon"]) not in have:
                    new.append(row)
        previous = ranks
    if new:
        history = pl.concat([history, pl.DataFrame(new, schema=SCHEMA)]).sort("date", "model", "horizon")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        history.write_csv(tmp)
        tmp.replace(path)
    return history


def series(history: pl.DataFrame, model: str, horizon: int) -> pl.DataFrame:
    """One model's rows of one horizon, by date."""
    return history.filter((pl.col("model") == model) & (pl.col("horizon") == horizon)).sort("date")
