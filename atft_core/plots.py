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
