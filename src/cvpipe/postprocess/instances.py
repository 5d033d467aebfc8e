"""Instance segmentation post-processing: dense outputs of a mask-predicting detector (PyTorch or onnxruntime) →
final instances per image (boxes, classes, scores, one binary mask each as COCO RLE), and mask comparisons.

Two implementations of the same steps: torchvision's NMS with the PyTorch mask assembly (training, evaluation,
tuning, export parity) and their numpy twins (``torch_free=True``: the served model and ``cvpipe predict``, which
start without importing torch); ``tests/test_nms.py`` holds them to the same answers. torch is imported only
when the PyTorch path runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from cvpipe.data.masks import encode_masks, pycocotools_rle


@dataclass
class DenseInstances:
    """Dense outputs for N images: boxes [N, A, 4], scores [N, A, K], coeffs [N, A, k], protos [N, k, H_p, W_p]."""

    boxes: np.ndarray
    scores: np.ndarray
    coeffs: np.ndarray
    protos: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.boxes)


def dense_from_arrays(boxes: np.ndarray, scores: np.ndarray, coeffs: np.ndarray, protos: np.ndarray,
                      image_size: tuple[int, int]) -> DenseInstances:
    """The same container for onnxruntime outputs (four arrays in the graph's output order)."""
    return DenseInstances(boxes, scores, coeffs, protos, image_size=tuple(image_size))


def _torch_steps() -> tuple[Callable, Callable]:
    """(select, probabilities) of the PyTorch path, numpy in and out."""
    import torch

    from cvpipe.postprocess.detections import select_detections
    from cvpipe.postprocess.instance_masks import mask_probabilities

    def select(boxes: np.ndarray, scores: np.ndarray, **kwargs: Any) -> list[dict[str, np.ndarray]]:
        found = select_detections(torch.from_numpy(boxes), torch.from_numpy(scores), **kwargs)
        return [{k: v.numpy() for k, v in d.items()} for d in found]

    def probabilities(*args: Any) -> np.ndarray:
        return mask_probabilities(*args).numpy()

    return select, probabilities


def _numpy_steps() -> tuple[Callable, Callable]:
    from cvpipe.postprocess import instance_masks_numpy, nms

    return nms.select_detections, instance_masks_numpy.mask_probabilities


def iter_instances(dense: DenseInstances, *, score_threshold: float, iou_threshold: float | None,
                   max_detections: int, mask_thresholds: tuple[float, ...],
                   torch_free: bool = False) -> Iterator[dict[str, Any]]:
    """Per image, the selected detections (shared NMS post-processing) with their masks as COCO RLE, one list
    per mask threshold: {"boxes", "scores", "labels", "rles": {τ: [RLE, ...]}}. Probabilities are computed
    once per image and thresholded for every τ, and masks never pile up in memory."""
    select, probabilities = _numpy_steps() if torch_free else _torch_steps()
    for i in range(len(dense)):
        det = select(dense.boxes[i:i + 1], dense.scores[i:i + 1], score_threshold=score_threshold,
                     iou_threshold=iou_threshold, max_detections=max_detections, return_candidates=True)[0]
        probs = probabilities(dense.protos[i], dense.coeffs[i][det["candidates"]], det["boxes"], dense.image_size)
        rles = {tau: encode_masks(probs > tau) for tau in mask_thresholds}
        yield {"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"], "rles": rles}


def select_instances(dense: DenseInstances, *, score_threshold: float, iou_threshold: float | None,
                     max_detections: int, mask_threshold: float, torch_free: bool = False) -> list[dict[str, Any]]:
    """Final instances per image: boxes [D, 4], scores [D], labels [D] and "segmentations" (D COCO RLEs)."""
    out = []
    for det in iter_instances(dense, score_threshold=score_threshold, iou_threshold=iou_threshold,
                              max_detections=max_detections, mask_thresholds=(mask_threshold,),
                              torch_free=torch_free):
        out.append({"boxes": det["boxes"], "scores": det["scores"], "labels": det["labels"],
                    "segmentations": det["rles"][mask_threshold]})
    return out


def decode_rles(rles: list[dict[str, Any]], image_size: tuple[int, int]) -> np.ndarray:
    """COCO RLEs → bool [D, H, W] (for overlays and parity checks)."""
    if not rles:
        return np.zeros((0, *image_size), bool)
    return mask_utils.decode([pycocotools_rle(r) for r in rles]).transpose(2, 0, 1).astype(bool)


def paired_mask_iou(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> np.ndarray:
    """IoU of the i-th RLE of ``a`` with the i-th of ``b`` → float [D] (1 where both are empty)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} masks: pair them first")
    out = np.ones(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        fx, fy = pycocotools_rle(x), pycocotools_rle(y)
        if mask_utils.area(fx) or mask_utils.area(fy):
            out[i] = float(mask_utils.iou([fx], [fy], [0])[0, 0])
    return out
