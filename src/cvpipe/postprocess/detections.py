"""Dense candidates → final detections: score filter, optional class-wise NMS, max-detections cap.

One module for every detector (YOLO-style and SSD use NMS; DETR does not) and for both the PyTorch and the
ONNX paths (:func:`select_detections_numpy` runs the same steps on onnxruntime outputs).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, *, score_threshold: float,
                      iou_threshold: float | None, max_detections: int,
                      return_candidates: bool = False) -> list[dict[str, torch.Tensor]]:
    """Per image: every (candidate, class) pair with score ≥ threshold, class-wise NMS, top ``max_detections``.

    boxes: [B, A, 4] xyxy absolute; scores: [B, A, K] in 0..1. ``iou_threshold=None`` skips NMS.
    Returns one dict per image: boxes [D, 4], scores [D], labels [D] (0-based class), sorted by score; with
    ``return_candidates`` also "candidates" [D], the index a of each detection's dense candidate (to pick
    per-candidate outputs such as mask coefficients).
    """
    results = []
    num_classes = scores.shape[-1]
    for img_boxes, img_scores in zip(boxes, scores):
        flat = img_scores.reshape(-1)  # [A*K], index = anchor * K + class
        keep = torch.nonzero(flat >= score_threshold).squeeze(1)
        cand_scores = flat[keep]
        cand_labels = keep % num_classes
        cand_boxes = img_boxes[torch.div(keep, num_classes, rounding_mode="floor")]
        if iou_threshold is not None and keep.numel():
            kept = batched_nms(cand_boxes.float(), cand_scores.float(), cand_labels, iou_threshold)
        else:
            kept = torch.argsort(cand_scores, descending=True)
        kept = kept[:max_detections]
        result = {"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]}
        if return_candidates:
            result["candidates"] = torch.div(keep, num_classes, rounding_mode="floor")[kept]
        results.append(result)
    return results


def select_detections_numpy(boxes: np.ndarray, scores: np.ndarray, *, score_threshold: float,
                            iou_threshold: float | None, max_detections: int) -> list[dict[str, np.ndarray]]:
    """The same selection for onnxruntime outputs (numpy in, numpy out)."""
    out = select_detections(torch.from_numpy(boxes), torch.from_numpy(scores), score_threshold=score_threshold,
                            iou_threshold=iou_threshold, max_detections=max_detections)
    return [{k: v.numpy() for k, v in d.items()} for d in out]
