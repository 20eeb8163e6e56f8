"""A historical panel as it looked on an earlier night: the demo week, and tests of the live record.

On the night of day T a real panel has no row after T and no h-day target for the last h trading
days (their returns have not happened). `panel_as_of` cuts a complete panel to exactly that, so a
run on it can not see anything a run on that night could not have seen.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

_TARGET = re.compile(r"^target_(\d+)d$")


def panel_as_of(panel: str | Path, as_of: str, out: str | Path) -> Path:
    """Write the rows of `panel` dated <= `as_of`, each ``target_{h}d`` emptied where day + h trading days > as_of."""
    df = pl.read_parquet(panel)
    date_col = "Date"
    cut = pl.lit(as_of).str.to_date() if df.schema[date_col] == pl.Date else pl.lit(as_of)
    df = df.filter(pl.col(date_col) <= cut)
    if not len(df):
        raise ValueError(f"{panel} has no day on or before {as_of}")
    days = df.select(pl.col(date_col).unique().sort()).to_series()
    position = pl.DataFrame({date_col: days, "_i": range(len(days))})
    last = len(days) - 1
    df = df.join(position, on=date_col, how="left")
    for col in df.columns:
        if (m := _TARGET.match(col)):
            df = df.with_columns(pl.when(pl.col("_i") + int(m.group(1)) <= last).then(pl.col(col)).otherwise(None)
                                 .alias(col))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    df.drop("_i").write_parquet(tmp)
    tmp.replace(out)
    return out


def trading_days(panel: str | Path) -> list[str]:
    """The panel's trading days, YYYY-MM-DD, in order."""
    dates = pl.read_parquet(panel, columns=["Date"]).to_series().unique().sort()
    return [str(d) for d in dates.to_list()]
