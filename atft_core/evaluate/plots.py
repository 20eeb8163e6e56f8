"""PNG plots of a training run: loss / IC / RankIC per epoch, and GPU utilisation over time.

Pure functions over plain data (the per-epoch history and the GPU monitor's samples) that write a
file and return its path. Matplotlib's Agg backend is selected explicitly, so this works on a
headless worker and never opens a window. Figures are small (they are also embedded in the
orchestrator's UI as data URLs) and always closed, so a long HPO study does not leak memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

_DPI = 80
_SIZE = (7.0, 3.2)


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f)
    return out


def plot_training(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Loss (left) and IC / RankIC (right) per epoch. Missing keys are simply not drawn."""
    path = Path(path)
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    fig, (ax_loss, ax_ic) = plt.subplots(1, 2, figsize=_SIZE, dpi=_DPI)
    try:
        for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
            if any(key in h for h in history):
                ax_loss.plot(epochs, _finite([h.get(key) for h in history]), marker="o", label=label)
        ax_loss.set_title("loss per epoch")
        ax_loss.set_xlabel("epoch")
        for key, label in (("val_ic", "val IC"), ("val_rankic", "val RankIC")):
            if any(key in h for h in history):
                ax_ic.plot(epochs, _finite([h.get(key) for h in history]), marker="o", label=label)
        ax_ic.axhline(0.0, color="grey", linewidth=0.8)
        ax_ic.set_title("IC / RankIC per epoch")
        ax_ic.set_xlabel("epoch")
        for ax in (ax_loss, ax_ic):
            if epochs:
                ax.set_xticks(epochs)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_gpu(times_s: Sequence[float], util: Sequence[float], path: str | Path, *,
             threshold: float | None = None, note: str = "") -> Path:
    """GPU utilisation (0..1) against seconds since training started; a dashed line at the gate.

    With no samples (a CPU run) the figure says so instead of drawing an empty axis, so the file
    set of a run is the same with or without a GPU.
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    try:
        if len(times_s) and len(util):
            ax.plot(_finite(times_s), [100.0 * u for u in _finite(util)], linewidth=1.2, label="GPU util")
            ax.set_ylim(0, 105)
            if threshold is not None:
                ax.axhline(100.0 * threshold, color="red", linestyle="--", linewidth=1, label="gate")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, note or "no GPU samples (CPU run)", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title("GPU utilisation while training")
        ax.set_xlabel("seconds")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Signal report (atft_core.evaluate.report): daily IC series, IC histogram, decile means, equity curve.
# Inputs are numpy arrays (NaN = undefined day); dates are datetime64[D].



def _save(fig: Any, path: Path) -> Path:
    try:
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_ic_series(dates: Any, ic: Any, rankic: Any, ic_rolling: Any, rankic_rolling: Any, path: str | Path, *,
                   title: str = "") -> Path:
    """Daily IC and RankIC (thin) with their rolling means (thick) against the date."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    ax.plot(dates, ic, linewidth=0.6, alpha=0.45, color="tab:blue", label="daily IC")
    ax.plot(dates, rankic, linewidth=0.6, alpha=0.45, color="tab:orange", label="daily RankIC")
    ax.plot(dates, ic_rolling, linewidth=1.8, color="tab:blue", label="IC, rolling mean")
    ax.plot(dates, rankic_rolling, linewidth=1.8, color="tab:orange", label="RankIC, rolling mean")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_title(f"daily IC / RankIC {title}".strip())
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_ic_histogram(ic: Any, rankic: Any, path: str | Path, *, title: str = "") -> Path:
    """Histograms of the daily IC and RankIC with their means marked."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    for values, label, color in ((ic, "IC", "tab:blue"), (rankic, "RankIC", "tab:orange")):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=min(40, max(5, v.size // 4)), alpha=0.5, color=color,
                    label=f"{label} (mean {v.mean():+.4f})")
            ax.axvline(float(v.mean()), color=color, linestyle="--", linewidth=1)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_title(f"distribution of daily IC / RankIC {title}".strip())
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scored day", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_decile_means(means: Any, path: str | Path, *, title: str = "") -> Path:
    """Bar plot of the mean target per prediction decile (1 = lowest prediction)."""
    path = Path(path)
    m = np.asarray(means, dtype=float)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    x = np.arange(1, len(m) + 1)
    ax.bar(x, np.nan_to_num(m), color=["tab:red" if v < 0 else "tab:green" for v in np.nan_to_num(m)])
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("prediction decile (1 = lowest)")
    ax.set_ylabel("mean target")
    ax.set_title(f"mean target per prediction decile {title}".strip())
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_equity_curve(dates: Any, equity: Any, path: str | Path, *, title: str = "",
                      stats: Mapping[str, Any] | None = None) -> Path:
    """Cumulative top-minus-bottom decile return (starting at 1) with its drawdown shaded."""
    path = Path(path)
    eq = np.asarray(equity, dtype=float)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    if eq.size:
        peak = np.maximum.accumulate(np.concatenate([[1.0], eq]))[1:]
        ax.plot(dates, eq, color="tab:green", linewidth=1.4, label="long top decile - short bottom decile")
        ax.fill_between(dates, eq, peak, color="tab:red", alpha=0.2, label="drawdown")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.legend(fontsize=8)
    s = stats or {}

    def fmt(key: str, spec: str) -> str:
        v = s.get(key)
        return "n/a" if v is None else format(v, spec)

    ax.set_title(f"equity curve {title}: ann. return {fmt('annualised_return', '+.1%')}, Sharpe "
                 f"{fmt('sharpe', '.2f')}, max DD {fmt('max_drawdown', '.1%')}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_hpo_history(trials: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Optimisation history of a (maximised) study: each trial's value and the best so far.

    `trials`: {number, state, value} per trial. Pruned trials are drawn at their last reported value;
    failed trials have none, so they are ticks on the bottom edge (a failure is not a poor score).
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    try:
        styles = {"COMPLETE": ("o", "tab:blue", "complete"), "PRUNED": ("x", "tab:orange", "pruned")}
        for state, (marker, color, label) in styles.items():
            pts = [(t["number"], v) for t in trials if t.get("state") == state
                   for v in _finite([t.get("value")]) if math.isfinite(v)]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=color, label=f"{label} ({len(pts)})", zorder=3)
        done = sorted((t["number"], v) for t in trials if t.get("state") == "COMPLETE"
                      for v in _finite([t.get("value")]) if math.isfinite(v))
        if done:
            best, xs, ys = -math.inf, [], []
            for n, v in done:
                best = max(best, v)
                xs.append(n)
                ys.append(best)
            ax.step(xs, ys, where="post", color="tab:green", label="best so far")
        failed = [t["number"] for t in trials if t.get("state") == "FAIL"]
        if failed:
            ax.plot(failed, [0.0] * len(failed), "|", color="red", markersize=14, transform=ax.get_xaxis_transform(),
                    label=f"failed ({len(failed)})", clip_on=False)
        if not trials:
            ax.text(0.5, 0.5, "no trials yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("optimisation history (validation RankIC, maximised)")
        ax.set_xlabel("trial")
        ax.set_ylabel("RankIC")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def plot_param_importances(importances: Mapping[str, float], path: str | Path, *, note: str = "") -> Path:
    """Horizontal bars of each hyperparameter's importance (sums to 1), largest on top."""
    path = Path(path)
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(_SIZE[0], max(_SIZE[1], 0.3 * len(items) + 1.0)), dpi=_DPI)
    try:
        if items:
            ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
            ax.set_xlabel("importance")
        else:
            ax.text(0.5, 0.5, note or "no importances yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("hyperparameter importances")
        ax.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
