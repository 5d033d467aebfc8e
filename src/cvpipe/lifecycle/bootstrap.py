"""Paired bootstrap over test images: the confidence interval of ``metric(challenger) - metric(champion)``.

Both models are scored on the *same* resampled image sets (indices drawn with replacement, ``N`` per resample),
so image difficulty cancels out of the difference. A scorer maps an index array [M] (repeats allowed) to the
split-level metric of those images:

- :class:`AccuracyScorer`: mean of per-image correctness.
- :class:`ConfusionScorer`: mean IoU (or Dice) over foreground classes of the summed per-image confusion
  matrices, the segmentation metric's split-level definition.
- :class:`CocoScorer`: COCO mAP. pycocotools' ``COCOeval.evaluate`` runs once (it matches detections to ground
  truth per image and category); each resample then rebuilds ``evalImgs`` for the drawn images, repeats
  included, and runs pycocotools' own ``accumulate``, so a resample's AP is exactly what COCOeval reports on a
  dataset made of those images.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Protocol

import numpy as np

COCO_IOU_SLICES = {"map50_95": slice(None), "map50": slice(0, 1), "map75": slice(5, 6)}  # over 0.50:0.05:0.95


class Scorer(Protocol):
    num_images: int

    def __call__(self, indices: np.ndarray) -> float: ...


class AccuracyScorer:
    """Accuracy of the images in ``indices``; ``correct`` is bool/0-1 [N]."""

    def __init__(self, correct: np.ndarray) -> None:
        self.correct = np.asarray(correct, dtype=np.float64)
        self.num_images = len(self.correct)

    def __call__(self, indices: np.ndarray) -> float:
        return float(self.correct[indices].mean())


class ConfusionScorer:
    """Segmentation score of the images in ``indices`` from per-image confusion matrices int [N, K+1, K+1]."""

    def __init__(self, confusions: np.ndarray, metric: str = "miou") -> None:
        if metric not in ("miou", "dice"):
            raise ValueError(f"segmentation metric must be 'miou' or 'dice', got {metric!r}")
        self.confusions = np.asarray(confusions, dtype=np.int64)
        self.metric = metric
        self.num_images = len(self.confusions)

    def __call__(self, indices: np.ndarray) -> float:
        from cvpipe.metrics.segmentation import per_class_iou_dice

        iou, dice = per_class_iou_dice(self.confusions[indices].sum(axis=0))
        values = (iou if self.metric == "miou" else dice)[1:]  # foreground classes
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else float("nan")


class CocoScorer:
    """COCO AP (``map50_95``, ``map50`` or ``map75``, area all, 100 detections) of the images in ``indices``, of
    boxes (``iou_type="bbox"``) or masks (``"segm"``: predictions carry RLE ``segmentation``).

    ``gt``: COCO instances dict whose ``images`` carry ``index`` (array order); ``predictions``: COCO results list.
    """

    def __init__(self, gt: dict, predictions: list[dict], metric: str = "map50_95", iou_type: str = "bbox") -> None:
        from cvpipe.metrics.detection import coco_evaluator

        if metric not in COCO_IOU_SLICES:
            raise ValueError(f"detection metric must be one of {sorted(COCO_IOU_SLICES)}, got {metric!r}")
        self.metric = metric
        self.evaluator = coco_evaluator(gt, predictions, iou_type)
        params = self.evaluator.params
        params.imgIds = [im["id"] for im in sorted(gt["images"], key=lambda im: im.get("index", im["id"]))]
        params.areaRng, params.areaRngLbl, params.maxDets = [[0, 1e10]], ["all"], [100]  # only what AP needs
        with contextlib.redirect_stdout(io.StringIO()):
            self.evaluator.evaluate()
        self.image_ids = list(params.imgIds)
        self.per_image = list(self.evaluator.evalImgs)  # [K * N], category-major (one area range)
        self.num_images = len(self.image_ids)

    def __call__(self, indices: np.ndarray) -> float:
        n, ev = self.num_images, self.evaluator
        num_cats = len(ev.params.catIds)
        drawn = np.asarray(indices)
        ev.evalImgs = [self.per_image[k * n + i] for k in range(num_cats) for i in drawn]
        slots = list(range(len(drawn)))  # one image slot per draw, repeats included
        ev.params.imgIds = slots
        ev._paramsEval = copy.copy(ev.params)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
        precision = ev.eval["precision"][COCO_IOU_SLICES[self.metric], :, :, 0, -1]  # [T, R, K]
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else -1.0


@dataclass(frozen=True)
class BootstrapResult:
    """Challenger minus champion: the full-split difference and its percentile interval."""

    challenger: float
    champion: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    images: int


def paired_bootstrap(challenger: Scorer, champion: Scorer, *, resamples: int, confidence: float,
                     seed: int) -> BootstrapResult:
    """Percentile interval (two-sided, ``confidence``) of the paired difference over ``resamples`` draws."""
    n = challenger.num_images
    if champion.num_images != n:
        raise ValueError(f"paired bootstrap needs the same images: {n} vs {champion.num_images}")
    if n == 0:
        raise ValueError("paired bootstrap over an empty test split")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    everything = np.arange(n)
    a, b = challenger(everything), champion(everything)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for r in range(resamples):
        drawn = rng.integers(0, n, size=n)
        diffs[r] = challenger(drawn) - champion(drawn)
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(diffs, [alpha, 1.0 - alpha]) if resamples else (a - b, a - b)
    return BootstrapResult(challenger=a, champion=b, difference=a - b, ci_low=float(low), ci_high=float(high),
                           confidence=confidence, resamples=resamples, images=n)
