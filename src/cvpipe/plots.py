"""Figures people would rather look at than read: confusion matrices, prediction grids, curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd


def _save(fig: "plt.Figure", path: str | Path, *, dpi: int, rect: tuple[float, ...] | None = None) -> None:
    """Lay out, write and close a figure (closing matters: stages draw many)."""
    fig.tight_layout(**({"rect": rect} if rect else {}))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _image_grid(images: np.ndarray, columns: int, *, cell: tuple[float, float]) -> tuple["plt.Figure", list]:
    """A grid of ``columns`` axes per row (cell size in inches), every axis off; image i drawn on axis i.
    Returns the figure and the first len(images) axes."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell[0], rows * cell[1]), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    shown = list(axes.ravel()[: len(images)])
    for ax, image in zip(shown, images):
        ax.imshow(image)
    return fig, shown


def _panel_rows(rows: Sequence[Sequence[tuple[str, np.ndarray]]]) -> tuple["plt.Figure", np.ndarray]:
    """One row of titled panels (e.g. image | ground truth | prediction) per example; axes [rows, panels]."""
    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.5 * columns, 2.5 * len(rows)), squeeze=False)
    for i, panels in enumerate(rows):
        for j, (title, panel) in enumerate(panels):
            axes[i, j].imshow(panel)
            axes[i, j].set_title(title, fontsize=8)
            axes[i, j].axis("off")
    return fig, axes


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
    _save(fig, path, dpi=120)


def save_prediction_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray, confidence: np.ndarray,
                         class_names: Sequence[str], path: str | Path, columns: int = 8) -> None:
    """Images uint8 [N, H, W, 3] titled 'pred (conf) / true'; wrong predictions in red."""
    fig, axes = _image_grid(images, columns, cell=(1.5, 1.7))
    for i, ax in enumerate(axes):
        ok = true[i] == pred[i]
        ax.set_title(f"{class_names[pred[i]]} ({confidence[i]:.2f})\ntrue: {class_names[true[i]]}",
                     fontsize=7, color="black" if ok else "red")
    _save(fig, path, dpi=110)


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
    _save(fig, path, dpi=120)


def save_detection_overlays(images: np.ndarray, ground_truth: Sequence[dict], predictions: Sequence[dict],
                            class_names: Sequence[str], path: str | Path, columns: int = 4) -> None:
    """Ground truth (white dashed) under predictions (coloured by class, with class and score).

    images uint8 [N, H, W, 3]; each ground-truth/prediction dict holds numpy "boxes" [D, 4] xyxy abs px and
    "labels" [D] (0-based); predictions also "scores" [D].
    """
    from matplotlib.patches import Rectangle

    colours = plt.get_cmap("tab10")
    fig, axes = _image_grid(images, columns, cell=(3.0, 3.0))
    for i, ax in enumerate(axes):
        for (x0, y0, x1, y1) in np.asarray(ground_truth[i]["boxes"]).reshape(-1, 4):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--", lw=1))
        pred = predictions[i]
        for box, label, score in zip(np.asarray(pred["boxes"]).reshape(-1, 4), pred["labels"], pred["scores"]):
            x0, y0, x1, y1 = box
            colour = colours(int(label) % 10)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=1.5))
            ax.text(x0, y0 - 1, f"{class_names[int(label)]} {float(score):.2f}", color="white", fontsize=6,
                    bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "lw": 0})
    fig.suptitle("predictions (colour) vs ground truth (white dashed)", fontsize=9)
    _save(fig, path, dpi=110)


def save_grid_curves(grid: "pd.DataFrame", path: str | Path, *, x: str, y: str, series: str,
                     chosen: tuple[float, object], xlabel: str, ylabel: str, title: str) -> None:
    """One curve of ``y`` over ``x`` per value of ``series`` (e.g. F1 over score threshold per NMS IoU);
    the chosen (x, series) cell is starred."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    keys = grid[series].map(str)  # None (no NMS / argmax) becomes the label "None", not a dropped NaN
    for value, part in grid.groupby(keys, sort=True):
        part = part.sort_values(x)
        ax.plot(part[x], part[y], marker="o", ms=3, label=f"{series} {value}")
    best = grid[(grid[x] == chosen[0]) & (keys == str(chosen[1]))][y]
    if len(best):
        ax.plot([chosen[0]], [best.max()], "k*", ms=12, label="chosen")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path, dpi=120)


def save_segmentation_overlays(images: np.ndarray, targets: np.ndarray, predictions: np.ndarray,
                               class_names: Sequence[str], path: str | Path) -> None:
    """Rows of image | ground truth | prediction; label maps [N, H, W] (0 background, 255 ignore) coloured by class."""
    colours = np.array([plt.get_cmap("tab10")(i % 10)[:3] for i in range(len(class_names) + 1)])
    colours[0] = 0.0

    def paint(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = image.astype(float) / 255.0
        fg = (labels > 0) & (labels != 255)
        out[fg] = 0.4 * out[fg] + 0.6 * colours[np.clip(labels[fg], 0, len(class_names))]
        out[labels == 255] = 0.5
        return out

    fig, _ = _panel_rows([[("image", image / 255.0), ("ground truth", paint(image, target)),
                           ("prediction", paint(image, pred))]
                          for image, target, pred in zip(images, targets, predictions)])
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k + 1]) for k in range(len(class_names))]
    fig.legend(handles, class_names, loc="lower center", ncol=min(6, len(class_names)), fontsize=7)
    _save(fig, path, dpi=100, rect=(0, 0.03, 1, 1))


def save_instance_overlays(images: np.ndarray, ground_truth: Sequence[np.ndarray], predictions: Sequence[dict],
                           class_names: Sequence[str], path: str | Path,
                           title: str = "instances: one colour per object") -> None:
    """Rows of image | ground-truth instances | predicted instances, one colour per instance (so two touching
    objects of the same class show as two colours), predicted masks labelled with class and score.

    images uint8 [N, H, W, 3]; ground_truth: per image bool masks [G, H, W]; predictions: per image
    {"masks" bool [D, H, W], "labels" [D], "scores" [D]}.
    """
    colours = plt.get_cmap("tab20")

    def paint(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        out = image.astype(float) / 255.0
        for j, mask in enumerate(masks):
            out[mask] = 0.35 * out[mask] + 0.65 * np.array(colours(j % 20)[:3])
        return out

    fig, axes = _panel_rows([[("image", image / 255.0), (f"ground truth ({len(truth)})", paint(image, truth)),
                              (f"prediction ({len(pred['masks'])})", paint(image, pred["masks"]))]
                             for image, truth, pred in zip(images, ground_truth, predictions)])
    for i, pred in enumerate(predictions):
        for mask, label, score in zip(pred["masks"], pred["labels"], pred["scores"]):
            ys, xs = np.nonzero(mask)
            if len(xs):
                axes[i, 2].text(xs.min(), ys.min(), f"{class_names[int(label)]} {float(score):.2f}", color="white",
                                fontsize=5, bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.3, "lw": 0})
    fig.suptitle(title, fontsize=9)
    _save(fig, path, dpi=100)
