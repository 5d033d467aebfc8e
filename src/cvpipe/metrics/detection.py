"""COCO detection / instance-segmentation metrics through pycocotools' ``COCOeval`` (no home-made AP).

Formats (COCO's own, so the same JSON feeds pycocotools, the CLI and the evaluate stage):

- Ground truth: a COCO instances dict {"images", "annotations", "categories"}; every annotation carries
  ``id``, ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] absolute pixels, ``area`` and ``iscrowd``
  (crowd regions are ignored: a detection on them is neither TP nor FP), plus ``segmentation`` for "segm".
- Predictions: a COCO results list of {"image_id", "category_id", "bbox" [x, y, w, h], "score"}, with a
  ``segmentation`` RLE for "segm".

AP follows COCO: 10 IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision
(``p_interp(r) = max_{r' ≥ r} p(r')`` averaged over r ∈ {0, 0.01, …, 1}), at most 100 detections per image.
Entries COCO marks -1 (no ground truth of that class/area) are ignored in averages, and a value that has
nothing to average is reported as -1, pycocotools' convention.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_KEYS = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large",
             "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")  # order of COCOeval.stats
IOU_TYPES = ("bbox", "segm")
_GT_ANN_KEYS = ("id", "image_id", "category_id", "area", "iscrowd")


def check_gt(gt: dict, iou_type: str = "bbox") -> None:
    """Raise ValueError naming the first missing key in a COCO ground-truth dict."""
    if not isinstance(gt, dict):
        raise ValueError(f"ground truth must be a COCO dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"ground truth has no '{key}' list")
        for i, item in enumerate(gt[key]):
            if not isinstance(item, dict) or "id" not in item:
                raise ValueError(f"ground truth {key}[{i}] is not a dict with an 'id'")
    needed = _GT_ANN_KEYS + (("bbox",) if iou_type == "bbox" else ("segmentation",))
    for i, ann in enumerate(gt["annotations"]):
        missing = [k for k in needed if k not in ann]
        if missing:
            raise ValueError(f"ground truth annotations[{i}] lacks {missing}")


def check_predictions(predictions: list[dict], gt: dict, iou_type: str = "bbox") -> None:
    """Raise ValueError naming the first prediction that is malformed or points outside ``gt``."""
    if not isinstance(predictions, list):
        raise ValueError(f"predictions must be a COCO results list, got {type(predictions).__name__}")
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {cat["id"] for cat in gt["categories"]}
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    for i, pred in enumerate(predictions):
        if not isinstance(pred, dict):
            raise ValueError(f"predictions[{i}] is a {type(pred).__name__}, not a dict")
        missing = [k for k in ("image_id", "category_id", "score", geometry) if k not in pred]
        if missing:
            raise ValueError(f"predictions[{i}] lacks {missing}")
        if pred["image_id"] not in image_ids:
            raise ValueError(f"predictions[{i}] has image_id {pred['image_id']!r}, not an image of the ground truth")
        if pred["category_id"] not in category_ids:
            raise ValueError(f"predictions[{i}] has category_id {pred['category_id']!r}, "
                             f"not a category of the ground truth {sorted(category_ids)}")


def coco_evaluator(gt: dict, predictions: list[dict], iou_type: str = "bbox") -> COCOeval:
    """A checked, not yet evaluated ``COCOeval`` of ``predictions`` against ``gt`` (both in memory, copied).

    Empty ``predictions``: ``COCO.loadRes`` rejects [], so the results object is built with no annotations
    and COCOeval runs as usual: 0 wherever ground truth exists, -1 where it does not.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    check_gt(gt, iou_type)
    check_predictions(predictions, gt, iou_type)
    # COCOeval rewrites annotations in place (polygons → RLE) and loadRes adds keys: work on copies. With a
    # "bbox" beside a mask, loadRes would take the box area as the instance area (wrong size bucket).
    dets = [{k: v for k, v in p.items() if not (iou_type == "segm" and k == "bbox")} for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                               "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
            coco_dt.createIndex()
        return COCOeval(coco_gt, coco_dt, iouType=iou_type)


def coco_evaluate(gt: dict, predictions: list[dict], iou_type: str = "bbox") -> dict[str, Any]:
    """COCOeval on in-memory GT and results.

    Returns the twelve ``COCOeval.stats`` under :data:`STAT_KEYS`, ``per_class`` (list of {"class",
    "category_id", "ap50_95", "ap50"}, -1 for a class without ground truth), ``summary`` (the text
    ``COCOeval.summarize`` prints) and ``pr_curve`` ({"iou": 0.5, "recall": 101 points 0..1, "precision":
    interpolated precision averaged over the classes that have ground truth, area all, maxDets 100}).

    Empty ``predictions``: ``COCO.loadRes`` rejects [], so the results object is built with no annotations
    and COCOeval runs as usual: 0 wherever ground truth exists, -1 where it does not.
    """
    evaluator = coco_evaluator(gt, predictions, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    result: dict[str, Any] = {k: float(v) for k, v in zip(STAT_KEYS, evaluator.stats)}
    result["per_class"] = _per_class(evaluator, evaluator.cocoGt)
    result["summary"] = summary.getvalue()
    result["pr_curve"] = _pr_curve(evaluator)
    return result


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries COCO did not mark -1; -1 if there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _iou_index(evaluator: COCOeval, iou: float) -> int:
    return int(np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou))[0])


def _per_class(evaluator: COCOeval, coco_gt: COCO) -> list[dict[str, Any]]:
    """AP per category from ``eval["precision"]`` [T IoU, R recall, K classes, A areas, M maxDets]."""
    precision = evaluator.eval["precision"]
    t50 = _iou_index(evaluator, 0.5)
    rows = []
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]  # [T, R] area "all", maxDets 100
        rows.append({"class": coco_gt.cats[cat_id].get("name", str(cat_id)), "category_id": int(cat_id),
                     "ap50_95": _mean_valid(p), "ap50": _mean_valid(p[t50])})
    return rows


def _pr_curve(evaluator: COCOeval) -> dict[str, Any]:
    """Interpolated precision at IoU 0.5 on COCO's 101 recall points, averaged over classes with GT."""
    p = evaluator.eval["precision"][_iou_index(evaluator, 0.5), :, :, 0, -1]  # [R, K]
    has_gt = (p > -1).all(axis=0)  # a class without GT is -1 on every recall point
    mean = p[:, has_gt].mean(axis=1) if has_gt.any() else np.full(p.shape[0], -1.0)
    return {"iou": 0.5, "recall": evaluator.params.recThrs.tolist(), "precision": mean.tolist()}


def _to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (on any device), array or sequence as an array; torch is not imported for this."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def detections_to_coco(detections: list[dict], image_ids: list[int], category_ids: list[int]) -> list[dict]:
    """Per-image {"boxes" [D, 4] xyxy absolute, "scores" [D], "labels" [D] 0-based} → COCO results list.

    Label k becomes ``category_ids[k]``; boxes become [x, y, w, h] as Python floats at full precision
    (never rounded: rounding shifts IoU near the thresholds). A dict with "segmentations" (D COCO RLEs, one
    per detection) adds each as the result's ``segmentation``, for ``iou_type="segm"``.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detection dicts for {len(image_ids)} image ids")
    results = []
    for i, (det, image_id) in enumerate(zip(detections, image_ids)):
        boxes = _to_numpy(det["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(det["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(det["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"detections[{i}]: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        _check_labels(labels, len(category_ids), f"detections[{i}]")
        segmentations = det.get("segmentations")
        if segmentations is not None and len(segmentations) != len(boxes):
            raise ValueError(f"detections[{i}]: {len(segmentations)} segmentations for {len(boxes)} boxes")
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        for j, (box, score, label) in enumerate(zip(xywh.tolist(), scores.tolist(), labels.tolist())):
            result = {"image_id": int(image_id), "category_id": int(category_ids[label]), "bbox": box, "score": score}
            if segmentations is not None:
                result["segmentation"] = segmentations[j]
            results.append(result)
    return results


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """ValueError naming the first 0-based label outside 0..num_classes-1."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"{where} label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1}")


def targets_to_coco(targets: list[dict], category_names: list[str],
                    image_size: tuple[int, int] | None = None) -> dict:
    """Per-image targets {"boxes" [N, 4] xyxy absolute, "labels" [N] 0-based, optional "iscrowd" [N]} → COCO GT.

    Image ids are 1..len(targets), category ids 1..K, ``area = w * h``, ``iscrowd`` 0 unless given.
    ``image_size`` (height, width) fills the images' size fields when known (only mask evaluation needs it).
    """
    images, annotations = [], []
    for i, target in enumerate(targets):
        image = {"id": i + 1}
        if image_size is not None:
            image.update(height=int(image_size[0]), width=int(image_size[1]))
        images.append(image)
        boxes = _to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4)
        labels = _to_numpy(target["labels"]).astype(np.int64).reshape(-1)
        crowd = _to_numpy(target.get("iscrowd", np.zeros(len(labels)))).astype(np.int64).reshape(-1)
        if not len(boxes) == len(labels) == len(crowd):
            raise ValueError(f"targets[{i}]: {len(boxes)} boxes, {len(labels)} labels, {len(crowd)} iscrowd flags")
        _check_labels(labels, len(category_names), f"targets[{i}]")
        for (x1, y1, x2, y2), label, is_crowd in zip(boxes.tolist(), labels.tolist(), crowd.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(is_crowd)})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(category_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def evaluate_detections(targets: list[dict], detections: list[dict], num_classes: int,
                        category_names: list[str] | None = None) -> dict[str, Any]:
    """COCO bbox metrics of per-image detections against per-image targets (both 0-based labels, xyxy).

    Shortcut for tests and small checks: :func:`targets_to_coco` + :func:`detections_to_coco` +
    :func:`coco_evaluate`. Class names default to "0".."K-1".
    """
    names = category_names if category_names is not None else [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} category names for num_classes={num_classes}")
    gt = targets_to_coco(targets, names)
    image_ids = [img["id"] for img in gt["images"]]
    predictions = detections_to_coco(detections, image_ids, [cat["id"] for cat in gt["categories"]])
    return coco_evaluate(gt, predictions, iou_type="bbox")


COCO_SCORE_THRESHOLD = 0.001  # the COCO protocol scores (almost) every candidate, capped at 100 per image
COCO_MAX_DETECTIONS = 100


def coco_scores(gt: dict[str, Any], detections: list[dict[str, np.ndarray]], iou_type: str = "bbox") -> dict[str, Any]:
    """COCO metrics of per-image detections (in ``gt``'s image order) through pycocotools."""
    image_ids = [im["id"] for im in sorted(gt["images"], key=lambda im: im["index"])]
    category_ids = [c["id"] for c in gt["categories"]]
    return coco_evaluate(gt, detections_to_coco(detections, image_ids, category_ids), iou_type=iou_type)
