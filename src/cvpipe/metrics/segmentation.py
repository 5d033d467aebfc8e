"""Semantic segmentation metrics from one confusion matrix accumulated over a whole split.

Labels: 0 = background, k = class k for k = 1..K (``num_classes`` = K foreground classes, so the matrix is
[K + 1, K + 1], row = true label, column = predicted label); pixels whose target is ``ignore_index`` are not
counted. For binary masks use K = 1 with targets (t ≠ 0) and predictions in {0, 1}.

Per class c, from the split-level counts TP_c = M[c, c], FP_c = Σ_r M[r, c] − TP_c, FN_c = Σ_col M[c, col] − TP_c:

    IoU_c  = TP_c / (TP_c + FP_c + FN_c)                  (Jaccard index)
    Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)              (F1 score of the class's pixels)
    pixel accuracy = Σ_c TP_c / Σ M

Scores are computed from the split's totals, not averaged over images: a per-image mean weighs a 20-pixel
object as much as a full scene and is undefined for images where a class is absent (the PASCAL VOC / Cityscapes
convention, and the one the Dice loss of :mod:`cvpipe.losses.segmentation` mirrors with its batch sums).

A class absent from both the ground truth and the predictions of the split (TP + FP + FN = 0) has no defined
score: its IoU and Dice are NaN and it is left out of every mean; a mean over no defined class is NaN. A class
present in only one of the two scores 0 (an empty prediction of a present class, or false positives of an
absent one), which the means do count.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def update_confusion(confusion: np.ndarray | None, pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = 255) -> np.ndarray:
    """``confusion`` + the counts of (target, pred) pairs: a new int64 [K + 1, K + 1] matrix (None = start at 0).

    pred, target: integer arrays of the same shape (e.g. [B, H, W] or [H, W]); pred in 0..K, target in 0..K or
    ``ignore_index``. Pixels whose target is ``ignore_index`` are skipped whatever their prediction.
    """
    size = num_classes + 1
    pred, target = np.asarray(pred).astype(np.int64, copy=False), np.asarray(target).astype(np.int64, copy=False)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    for name, values in (("pred", pred), ("target", target)):
        bad = (values < 0) | (values >= size)
        if bad.any():
            raise ValueError(f"{name} value {values[bad][0]} outside 0..{num_classes}"
                             + (f" and not ignore_index={ignore_index}" if name == "target" else ""))
    counts = np.bincount(target * size + pred, minlength=size * size).reshape(size, size)
    if confusion is None:
        return counts
    if confusion.shape != (size, size):
        raise ValueError(f"confusion {confusion.shape} is not [{size}, {size}] for num_classes={num_classes}")
    return confusion + counts


def per_class_iou_dice(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice per label (index 0 = background), float [K + 1] each; NaN where TP + FP + FN = 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    errors = confusion.sum(axis=0) + confusion.sum(axis=1) - 2 * tp  # FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + errors)
        dice = 2 * tp / (2 * tp + errors)
    return iou, dice


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if len(defined) else float("nan")


def segmentation_scores(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Scores of a [K + 1, K + 1] confusion matrix; ``class_names`` are the K foreground names (label 1..K).

    Returns {"miou": mean IoU over foreground classes, "dice": mean Dice over foreground classes,
    "miou_with_background": mean IoU over labels 0..K, "pixel_accuracy",
    "per_class": [{"class": name, "iou", "dice", "support": ground-truth pixels}, ...] for background then
    the K classes}. Undefined values (see the module docstring) are NaN.
    """
    confusion = np.asarray(confusion)
    if confusion.shape != (len(class_names) + 1,) * 2:
        raise ValueError(f"confusion {confusion.shape} does not fit {len(class_names)} class names + background")
    iou, dice = per_class_iou_dice(confusion)
    total = confusion.sum()
    support = confusion.sum(axis=1)
    names = ["background", *class_names]
    return {
        "miou": _nanmean(iou[1:]),
        "dice": _nanmean(dice[1:]),
        "miou_with_background": _nanmean(iou),
        "pixel_accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "per_class": [{"class": n, "iou": float(i), "dice": float(d), "support": int(s)}
                      for n, i, d, s in zip(names, iou, dice, support)],
    }


def score_labels(labels: np.ndarray, targets: np.ndarray, class_names: list[str],
                 ignore_index: int = 255) -> dict:
    """mIoU, Dice, pixel accuracy from one confusion matrix over the whole split."""
    confusion = update_confusion(None, labels, targets, len(class_names), ignore_index=ignore_index)
    return segmentation_scores(confusion, class_names)
