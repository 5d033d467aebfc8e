"""Figures people would rather look at than read: confusion matrices, prediction grids, curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix (rows: true, columns: predicted)") -> None:
    """Row-normalised colours with raw counts written in each cell."""
    k = len(class_names)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * k, 1.0 + 0.7 * k))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_prediction_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray, confidence: np.ndarray,
                         class_names: Sequence[str], path: str | Path, columns: int = 8) -> None:
    """Images uint8 [N, H, W, 3] titled 'pred (conf) / true'; wrong predictions in red."""
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i])
        ok = true[i] == pred[i]
        ax.set_title(f"{class_names[pred[i]]} ({confidence[i]:.2f})\ntrue: {class_names[true[i]]}",
                     fontsize=7, color="black" if ok else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_curve(x: np.ndarray, ys: dict[str, np.ndarray], path: str | Path, *, xlabel: str, title: str,
               marker_x: float | None = None) -> None:
    """Several named curves over one x axis; an optional vertical line marks the chosen point."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, y in ys.items():
        ax.plot(x, y, label=name)
    if marker_x is not None:
        ax.axvline(marker_x, color="grey", linestyle="--", label=f"chosen = {marker_x:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
