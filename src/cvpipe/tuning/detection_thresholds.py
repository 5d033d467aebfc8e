"""Detector operating point: score threshold × NMS IoU threshold chosen on the validation split.

Each grid cell runs :func:`cvpipe.postprocess.detections.select_detections` on the dense candidates
(boxes [A, 4] xyxy absolute, scores [A, K] in 0..1, computed once per image) and matches the selected
detections to ground truth greedily per class (see :func:`match_detections`), counting
TP / FP / FN over the split:

    precision = TP / (TP + FP)   (0 when nothing is predicted: a point that predicts nothing is useless)
    recall    = TP / (TP + FN)   (TP + FN = number of GT boxes)
    F1        = 2 P R / (P + R)  (0 when P + R = 0)

Objectives: ``"f1"`` takes the cell with the highest F1; ``"recall_at_precision"`` the highest recall among
cells with precision ≥ ``target_precision``, or, when none reaches it, the highest precision with
``target_met=False``. Ties go to higher precision, then the higher score threshold (fewer detections).

Speed without a second NMS: for a fixed IoU threshold, selection at score threshold t₂ ≥ t₁ equals the
selection at t₁ filtered to scores ≥ t₂ (greedy NMS visits boxes by descending score, so boxes below t₂
never suppress boxes above it; the max-detections cap keeps a score-sorted prefix), and a detection's
TP/FP status depends only on higher-scored detections. So select_detections and the matching run once per
IoU threshold at the lowest score threshold, and every score threshold is a count over that list; results
equal a separate select_detections call per cell up to the order of exactly tied scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from cvpipe.postprocess.detections import select_detections
from cvpipe.tuning.empty_split import require_objects

OBJECTIVES = ("f1", "recall_at_precision")
UNMATCHED = -1  # match_detections: the detection matched no ground-truth box


@dataclass(frozen=True)
class DetectionOperatingPoint:
    score_threshold: float
    iou_threshold: float | None  # None: no NMS (DETR)
    precision: float
    recall: float
    f1: float
    target_met: bool  # always True for the "f1" objective, which has no target
    grid: list[dict[str, Any]] = field(repr=False, compare=False)  # every cell, for a plot / CSV

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Scalars for MLflow / JSON (the IoU threshold is left out when NMS is off)."""
        out = {f"{prefix}score_threshold": self.score_threshold, f"{prefix}precision": self.precision,
               f"{prefix}recall": self.recall, f"{prefix}f1": self.f1}
        if self.iou_threshold is not None:
            out[f"{prefix}iou_threshold"] = self.iou_threshold
        return out


def _tensor(x: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype)


@torch.no_grad()
def match_detections(pred_boxes: torch.Tensor | np.ndarray, pred_scores: torch.Tensor | np.ndarray,
                     pred_labels: torch.Tensor | np.ndarray, gt_boxes: torch.Tensor | np.ndarray,
                     gt_labels: torch.Tensor | np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of one image's detections to its ground truth, per class.

    pred_boxes [D, 4], gt_boxes [G, 4] xyxy; pred_scores [D]; labels [D] / [G] int. Detections are visited
    by descending score (stable on ties); each takes the unmatched GT box of its class with the highest
    IoU (lowest index on ties) if that IoU ≥ ``iou_threshold``. Each GT box is matched at most once.
    Returns int64 [D]: the matched GT index, or :data:`UNMATCHED`.
    """
    pb, gb = _tensor(pred_boxes, torch.float64).reshape(-1, 4), _tensor(gt_boxes, torch.float64).reshape(-1, 4)
    scores = _tensor(pred_scores).reshape(-1)
    pl, gl = _tensor(pred_labels).reshape(-1), _tensor(gt_labels).reshape(-1)
    if not len(pb) == len(scores) == len(pl) or len(gb) != len(gl):
        raise ValueError(f"match_detections: {len(pb)} boxes / {len(scores)} scores / {len(pl)} labels "
                         f"predicted, {len(gb)} boxes / {len(gl)} labels in ground truth")
    if len(pb) == 0 or len(gb) == 0:
        return np.full(len(pb), UNMATCHED, dtype=np.int64)
    iou = torch.nan_to_num(box_iou(pb, gb), nan=0.0).numpy()  # [D, G]; nan when both boxes have zero area
    return greedy_match(iou, scores.numpy(), pl.numpy(), gl.numpy(), iou_threshold)


def greedy_match(iou: np.ndarray, scores: np.ndarray, pred_labels: np.ndarray, gt_labels: np.ndarray,
                 iou_threshold: float) -> np.ndarray:
    """The greedy rule of :func:`match_detections` on a given IoU matrix [D, G] (boxes or masks).

    Returns int64 [D]: the matched GT index, or :data:`UNMATCHED`.
    """
    match = np.full(len(scores), UNMATCHED, dtype=np.int64)
    if iou.size == 0:
        return match
    iou = np.where(np.asarray(pred_labels)[:, None] != np.asarray(gt_labels)[None, :], -1.0, iou)  # class must agree
    taken = np.zeros(iou.shape[1], dtype=bool)
    for d in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist():
        candidates = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            match[d] = g
            taken[g] = True
    return match


def count_matches(pred_boxes: torch.Tensor | np.ndarray, pred_scores: torch.Tensor | np.ndarray,
                  pred_labels: torch.Tensor | np.ndarray, gt_boxes: torch.Tensor | np.ndarray,
                  gt_labels: torch.Tensor | np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image under :func:`match_detections`."""
    match = match_detections(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, iou_threshold)
    tp = int((match != UNMATCHED).sum())
    return tp, len(match) - tp, int(_tensor(gt_labels).numel()) - tp


def _rates(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def threshold_grid(boxes: Sequence[torch.Tensor | np.ndarray], scores: Sequence[torch.Tensor | np.ndarray],
                   targets: Sequence[dict], *, score_thresholds: Sequence[float],
                   iou_thresholds: Sequence[float | None], max_detections: int,
                   match_iou: float = 0.5, split: str = "val") -> list[dict[str, Any]]:
    """TP/FP/FN, precision, recall and F1 of every (score threshold, NMS IoU threshold) cell.

    boxes: per image [A, 4] xyxy absolute (or one [N, A, 4] array); scores: per image [A, K] in 0..1;
    targets: per image {"boxes" [G, 4] xyxy absolute, "labels" [G] 0..K-1}. Returns one dict per cell
    with keys score_threshold, iou_threshold, tp, fp, fn, precision, recall, f1 (IoU-major order).
    Targets without a single box: :class:`cvpipe.errors.DataValidationError` naming ``split``.
    """
    if not len(boxes) == len(scores) == len(targets):
        raise ValueError(f"{len(boxes)} box arrays, {len(scores)} score arrays, {len(targets)} targets")
    if not len(score_thresholds) or not len(iou_thresholds):
        raise ValueError("score_thresholds and iou_thresholds must not be empty")
    num_gt = sum(int(_tensor(t["labels"]).numel()) for t in targets)
    require_objects(num_gt, split=split, images=len(targets), chooses="score threshold or NMS IoU threshold")
    lowest = min(score_thresholds)
    grid = []
    for iou_threshold in iou_thresholds:
        kept_scores, kept_tp = [], []
        for img_boxes, img_scores, target in zip(boxes, scores, targets):
            det = select_detections(_tensor(img_boxes)[None], _tensor(img_scores)[None], score_threshold=lowest,
                                    iou_threshold=iou_threshold, max_detections=max_detections)[0]
            match = match_detections(det["boxes"], det["scores"], det["labels"], target["boxes"],
                                     target["labels"], match_iou)
            kept_scores.append(det["scores"])
            kept_tp.append(torch.from_numpy(match != UNMATCHED))
        all_scores, all_tp = torch.cat(kept_scores), torch.cat(kept_tp)
        for score_threshold in score_thresholds:
            keep = all_scores >= score_threshold  # same comparison (and dtype) as select_detections
            tp = int(all_tp[keep].sum())
            fp, fn = int(keep.sum()) - tp, num_gt - tp
            precision, recall, f1 = _rates(tp, fp, fn)
            grid.append({"score_threshold": float(score_threshold),
                         "iou_threshold": None if iou_threshold is None else float(iou_threshold),
                         "tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1})
    return grid


def choose_operating_point(grid: list[dict[str, Any]], objective: str = "f1",
                           target_precision: float | None = None) -> DetectionOperatingPoint:
    """Pick a cell of :func:`threshold_grid` by ``objective`` (see the module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not grid:
        raise ValueError("empty threshold grid")
    target_met = True
    if objective == "f1":
        best = max(grid, key=lambda c: (c["f1"], c["precision"], c["score_threshold"]))
    else:
        if target_precision is None or not 0.0 <= target_precision <= 1.0:
            raise ValueError(f"recall_at_precision needs target_precision in [0, 1], got {target_precision!r}")
        meeting = [c for c in grid if c["precision"] >= target_precision]
        if meeting:
            best = max(meeting, key=lambda c: (c["recall"], c["precision"], c["score_threshold"]))
        else:
            best = max(grid, key=lambda c: (c["precision"], c["recall"], c["score_threshold"]))
            target_met = False
    return DetectionOperatingPoint(score_threshold=best["score_threshold"], iou_threshold=best["iou_threshold"],
                                   precision=best["precision"], recall=best["recall"], f1=best["f1"],
                                   target_met=target_met, grid=grid)


def tune_detection_thresholds(boxes: Sequence[torch.Tensor | np.ndarray],
                              scores: Sequence[torch.Tensor | np.ndarray], targets: Sequence[dict], *,
                              score_thresholds: Sequence[float], iou_thresholds: Sequence[float | None],
                              max_detections: int, objective: str = "f1",
                              target_precision: float | None = None) -> DetectionOperatingPoint:
    """:func:`threshold_grid` on the validation candidates, then :func:`choose_operating_point`.

    To report the chosen point on the test split, call :func:`threshold_grid` there with the single
    chosen score and IoU threshold.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    grid = threshold_grid(boxes, scores, targets, score_thresholds=score_thresholds,
                          iou_thresholds=iou_thresholds, max_detections=max_detections)
    return choose_operating_point(grid, objective, target_precision)
