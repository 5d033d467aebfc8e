"""Instance-segmentation operating point: score threshold × mask binarisation threshold, chosen on validation.

For a mask threshold τ, every image's detections (selected once at the lowest score threshold) get binary
masks; each is matched to the ground-truth instances greedily by descending score, per class, on *mask*
IoU (:func:`cvpipe.tuning.detection_thresholds.greedy_match`), separately for every IoU threshold
t ∈ T = {0.50, 0.55, …, 0.95} (COCO's). For a score threshold s, over the split:

    TP_t(s) = #matched detections with score ≥ s,  FP_t(s) = #detections with score ≥ s − TP_t(s),
    FN_t(s) = #GT instances − TP_t(s),  F1_t = 2 TP / (2 TP + FP + FN)

    objective(s, τ) = (1/|T|) Σ_{t∈T} F1_t(s, τ)

F1 at one IoU threshold cannot see mask quality above it, so a τ that makes every mask sloppier would not
lose; averaging over T rewards tight masks the way mask mAP@[0.5:0.95] does, while still choosing a single
operating point (a score threshold), which mAP does not. Crowd ground truth is left out of the matching.
Filtering a score-sorted list to score ≥ s gives the selection at s (see detection_thresholds), so one
matching per (image, τ, t) serves the whole score grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from cvpipe.data.masks import pycocotools_rle
from cvpipe.tuning.detection_thresholds import UNMATCHED, greedy_match
from cvpipe.tuning.empty_split import require_objects

MATCH_IOUS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


@dataclass(frozen=True)
class InstanceOperatingPoint:
    score_threshold: float
    mask_threshold: float
    f1: float  # objective: F1 averaged over mask IoU 0.50:0.95
    precision50: float
    recall50: float
    f1_50: float
    grid: list[dict[str, Any]] = field(repr=False, compare=False)


def mask_iou_matrix(pred: Sequence[dict[str, Any]], gt: Sequence[dict[str, Any]]) -> np.ndarray:
    """IoU [D, G] between predicted and ground-truth masks given as COCO RLEs (pycocotools)."""
    if not len(pred) or not len(gt):
        return np.zeros((len(pred), len(gt)))
    return np.asarray(mask_utils.iou([pycocotools_rle(r) for r in pred], [pycocotools_rle(r) for r in gt],
                                     [0] * len(gt)))


def instance_threshold_grid(detections: Iterable[dict[str, Any]], ground_truth: Sequence[dict[str, Any]], *,
                            score_thresholds: Sequence[float], mask_thresholds: Sequence[float],
                            match_ious: Sequence[float] = MATCH_IOUS, split: str = "val") -> list[dict[str, Any]]:
    """One row per (mask threshold, score threshold): tp/fp/fn at IoU 0.5, precision50, recall50, f1_50 and the
    objective ``f1`` (mean over ``match_ious``).

    detections: per image {"scores" [D], "labels" [D], "rles": {τ: [D RLEs]}} for every τ in mask_thresholds,
    selected at the lowest score threshold; ground_truth: per image {"labels" [G], "rles": [G RLEs]} (no crowd).
    No instance at all: :class:`cvpipe.errors.DataValidationError` naming ``split``.
    """
    if not len(score_thresholds) or not len(mask_thresholds):
        raise ValueError("score_thresholds and mask_thresholds must not be empty")
    num_gt = 0
    scores_by_tau: dict[float, list[np.ndarray]] = {tau: [] for tau in mask_thresholds}
    tp_by_tau: dict[float, list[np.ndarray]] = {tau: [] for tau in mask_thresholds}  # [D, |T|] bool per image
    for det, gt in zip(detections, ground_truth, strict=True):
        num_gt += len(gt["labels"])
        for tau in mask_thresholds:
            iou = mask_iou_matrix(det["rles"][tau], gt["rles"])
            flags = np.stack([greedy_match(iou, det["scores"], det["labels"], gt["labels"], t) != UNMATCHED
                              for t in match_ious], axis=1) if len(det["scores"]) else np.zeros((0, len(match_ious)), bool)
            scores_by_tau[tau].append(np.asarray(det["scores"], np.float64))
            tp_by_tau[tau].append(flags)
    require_objects(num_gt, split=split, images=len(ground_truth), chooses="score threshold or mask threshold")
    grid = []
    for tau in mask_thresholds:
        scores, tp = np.concatenate(scores_by_tau[tau]), np.concatenate(tp_by_tau[tau])
        for s in score_thresholds:
            kept = scores >= s
            tps = tp[kept].sum(axis=0).astype(float)  # [|T|]
            fps = kept.sum() - tps
            f1s = 2 * tps / np.maximum(2 * tps + fps + (num_gt - tps), 1e-12)
            precision50 = tps[0] / kept.sum() if kept.sum() else 0.0
            recall50 = tps[0] / num_gt
            grid.append({"mask_threshold": float(tau), "score_threshold": float(s), "tp": int(tps[0]),
                         "fp": int(fps[0]), "fn": int(num_gt - tps[0]), "precision50": float(precision50),
                         "recall50": float(recall50), "f1_50": float(f1s[0]), "f1": float(f1s.mean())})
    return grid


def tune_instance_thresholds(detections: Iterable[dict[str, Any]], ground_truth: Sequence[dict[str, Any]], *,
                             score_thresholds: Sequence[float], mask_thresholds: Sequence[float],
                             split: str = "val") -> InstanceOperatingPoint:
    """The grid cell with the highest objective; ties go to the higher score threshold, then the mask threshold
    closest to 0.5."""
    grid = instance_threshold_grid(detections, ground_truth, score_thresholds=score_thresholds,
                                   mask_thresholds=mask_thresholds, split=split)
    best = max(grid, key=lambda r: (round(r["f1"], 12), r["score_threshold"], -abs(r["mask_threshold"] - 0.5)))
    return InstanceOperatingPoint(score_threshold=best["score_threshold"], mask_threshold=best["mask_threshold"],
                                  f1=best["f1"], precision50=best["precision50"], recall50=best["recall50"],
                                  f1_50=best["f1_50"], grid=grid)
