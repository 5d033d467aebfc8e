"""Greedy non-maximum suppression in numpy, with ``torchvision.ops.batched_nms``'s semantics, for the serving
path (``cvpipe predict``, the pyfunc) that must not import torch.

Definition (greedy NMS, as in the YOLO and SSD papers and torchvision): visit the boxes in decreasing score
order (ties in index order); keep box i unless an already kept box j of the same class overlaps it with

    IoU(i, j) = |i ∩ j| / (|i| + |j| - |i ∩ j|)  >  τ,

with |b| = (x2 - x1)(y2 - y1) and |i ∩ j| = max(0, min(x2) - max(x1)) · max(0, min(y2) - max(y1)).
A kept box can only be suppressed by a higher-scored kept box, so the first ``limit`` kept boxes are final:
the loop stops there (the detection cap), at most ``limit`` vector passes over the candidates.

Bit-for-bit the same keep list as torchvision on CPU: the IoU is computed in float32 in the kernel's order of
operations, compared with τ in float64 (the kernel's double threshold), and the class separation follows
torchvision's two regimes: up to 1,000 boxes the boxes are shifted by ``class · (max coordinate + 1)`` (the
"coordinate trick", whose float32 rounding is part of the result), above that classes are suppressed on the
raw coordinates (per-class NMS). ``tests/test_nms.py`` checks this against torchvision.
"""

from __future__ import annotations

import numpy as np

VANILLA_ABOVE = 4000  # boxes.numel() above which torchvision's CPU batched_nms runs per class on raw coordinates


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                limit: int | None = None) -> np.ndarray:
    """Indices (int64) of the boxes kept by class-wise greedy NMS, in decreasing score order.

    boxes [N, 4] xyxy; scores [N]; labels [N] integer classes (NMS never crosses classes); ``limit``: stop after
    that many kept boxes (the result is then the first ``limit`` of the full keep list).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    if boxes.size <= VANILLA_ABOVE:
        shift = labels.astype(np.float32) * (boxes.max() + np.float32(1))
        return _greedy(boxes + shift[:, None], scores, None, iou_threshold, limit)
    return _greedy(boxes, scores, labels, iou_threshold, limit)


def _greedy(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray | None, iou_threshold: float,
            limit: int | None) -> np.ndarray:
    """Greedy NMS over ``boxes`` (suppression only within a label when ``labels`` is given)."""
    order = np.argsort(-scores, kind="stable")  # descending, ties in index order (torchvision's stable sort)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    same_class = None if labels is None else labels[order]
    alive = np.ones(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            break
        rest = slice(i + 1, None)
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: 0/0 is NaN, never suppresses
            overlap = inter / (areas[i] + areas[rest] - inter)
        suppressed = overlap.astype(np.float64) > iou_threshold
        if same_class is not None:
            suppressed &= same_class[rest] == same_class[i]
        alive[rest] &= ~suppressed
    return order[np.asarray(keep, np.int64)]


def select_detections(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float,
                      iou_threshold: float | None, max_detections: int,
                      return_candidates: bool = False) -> list[dict[str, np.ndarray]]:
    """:func:`cvpipe.postprocess.detections.select_detections` in numpy: per image every (candidate, class) pair
    with score ≥ ``score_threshold``, class-wise NMS (skipped when ``iou_threshold`` is None), the top
    ``max_detections`` by score.

    boxes [B, A, 4] xyxy; scores [B, A, K] in 0..1. One dict per image: boxes [D, 4], scores [D], labels [D]
    (0-based class), and with ``return_candidates`` "candidates" [D] (each detection's dense candidate index).
    """
    results = []
    num_classes = scores.shape[-1]
    for img_boxes, img_scores in zip(boxes, scores):
        flat = img_scores.reshape(-1)  # [A*K], index = candidate * K + class
        keep = np.flatnonzero(flat >= flat.dtype.type(score_threshold))  # compared in the scores' dtype, as torch
        cand_scores = flat[keep]
        cand_labels = keep % num_classes
        candidates = keep // num_classes
        cand_boxes = img_boxes[candidates]
        if iou_threshold is not None and len(keep):
            kept = batched_nms(cand_boxes, cand_scores, cand_labels, iou_threshold, limit=max_detections)
        else:
            kept = np.argsort(-cand_scores, kind="stable")[:max_detections]
        result = {"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]}
        if return_candidates:
            result["candidates"] = candidates[kept]
        results.append(result)
    return results
