"""The live record as a picture: nightly live RankIC of the champion and the peer against zero, and
the long-short spread they earned, over the last nights (a person reads a trend faster than a table)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from atft_core.nightly.live import series  # noqa: E402

_COLORS = {"champion": "tab:blue", "peer": "tab:orange"}


def plot_live(history: pl.DataFrame, path: str | Path, *, horizon: int, last: int = 120, window: int = 20) -> Path:
    """Left: each night's live RankIC (dots) and its `window`-night mean (line); right: cumulative spread."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_ic, ax_sp) = plt.subplots(1, 2, figsize=(9.0, 3.2), dpi=80)
    try:
        dates = sorted(set(series(history, "champion", horizon)["date"].to_list()))[-last:]
        for model in ("champion", "peer"):
            s = series(history, model, horizon).filter(pl.col("date").is_in(dates))
            if not len(s):
                continue
            x = [dates.index(d) for d in s["date"].to_list()]
            ic = s["rankic"].to_numpy()
            # the mean of up to `window` nights: fewer at the start, so a young record still shows a line
            mean = s["rankic"].rolling_mean(window, min_samples=1).to_numpy()
            ax_ic.plot(x, ic, "o", ms=3, alpha=0.5, color=_COLORS[model])
            ax_ic.plot(x, mean, "-", color=_COLORS[model], label=f"{model} ({len(ic)} nights, mean {np.mean(ic):+.3f})")
            ax_sp.plot(x, np.cumsum(s["spread"].to_numpy()), "-", marker=".", color=_COLORS[model], label=model)
        ticks = sorted({0, len(dates) - 1, *range(0, len(dates), max(1, len(dates) // 4))}) if dates else []
        for ax in (ax_ic, ax_sp):
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
            ax.set_xticks(ticks, [dates[i] for i in ticks], fontsize=7)
            ax.set_xlabel("night (the ranks' date; scored once its returns arrived)", fontsize=8)
        ax_ic.set_title(f"live RankIC, {horizon}d returns (line: mean of up to {window} nights)", fontsize=9)
        ax_sp.set_title("cumulative top - bottom decile return", fontsize=9)
        if dates:
            ax_ic.legend(fontsize=7)
            ax_sp.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
