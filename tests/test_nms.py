"""The numpy NMS and detection selection of the serving path against torchvision (the training/evaluation path)
and against a brute-force reading of the definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms

from cvpipe.postprocess.detections import select_detections as torch_select
from cvpipe.postprocess.nms import batched_nms, select_detections


def random_boxes(rng: np.random.Generator, n: int, *, clustered: bool) -> np.ndarray:
    centres = rng.uniform(0, 128, (n, 2))
    if clustered:  # many heavy overlaps: a few objects, each with many near-duplicate candidates
        centres = rng.uniform(0, 128, (max(n // 20, 1), 2))[rng.integers(0, max(n // 20, 1), n)]
        centres += rng.normal(0, 2, (n, 2))
    sizes = rng.uniform(2, 40, (n, 2))
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).astype(np.float32)


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, tau: float) -> list[int]:
    """The definition, pair by pair, in float64 (tie order: index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        ok = True
        for j in kept:
            if labels[i] != labels[j]:
                continue
            a, b = boxes[i].astype(np.float64), boxes[j].astype(np.float64)
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if inter / union > tau:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@pytest.mark.parametrize("n", [0, 1, 7, 300, 999, 1000, 1001, 2500])  # both torchvision regimes (> 1000 boxes)
@pytest.mark.parametrize("tau", [0.3, 0.45, 0.7])
def test_batched_nms_equals_torchvision(n: int, tau: float) -> None:
    rng = np.random.default_rng(n * 7 + int(tau * 100))
    for clustered in (False, True):
        boxes = random_boxes(rng, n, clustered=clustered)
        scores = rng.random(n).astype(np.float32)
        labels = rng.integers(0, 3, n)
        expected = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                  tau).numpy()
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, tau), expected)
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, tau, limit=10), expected[:10])


def test_batched_nms_ties() -> None:
    """Quantised scores (many exact ties, as saturated sigmoids give) and duplicate boxes: the same keep list as
    torchvision up to 1,000 boxes; above, torchvision's per-class regime ends with an unstable sort, so the same
    kept boxes in the same score order, tied scores in index order (ours) or any order (torchvision)."""
    rng = np.random.default_rng(3)
    for n in (50, 600, 1500):
        boxes = random_boxes(rng, n, clustered=True)
        boxes[n // 2:] = boxes[: n - n // 2]  # exact duplicates
        scores = (rng.integers(0, 5, n) / 4).astype(np.float32)
        labels = rng.integers(0, 2, n)
        expected = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                  0.5).numpy()
        ours = batched_nms(boxes, scores, labels, 0.5)
        if n <= 1000:
            np.testing.assert_array_equal(ours, expected)
        else:
            assert sorted(ours.tolist()) == sorted(expected.tolist())
            np.testing.assert_array_equal(scores[ours], scores[expected])
            assert all(a < b for a, b in zip(ours[:-1], ours[1:]) if scores[a] == scores[b])


def test_batched_nms_matches_the_definition() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        boxes = random_boxes(rng, 60, clustered=True)
        scores = rng.random(60).astype(np.float32)
        labels = rng.integers(0, 2, 60)
        assert batched_nms(boxes, scores, labels, 0.5).tolist() == brute_force_nms(boxes, scores, labels, 0.5)


def test_hand_case() -> None:
    """Two boxes of one class with IoU exactly 1/2 (area 4 and 2, overlap 2), a third of another class on top
    of the first."""
    boxes = np.array([[0, 0, 2, 2], [1, 0, 2, 2], [0, 0, 2, 2]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    labels = np.array([0, 0, 1])
    assert batched_nms(boxes, scores, labels, 0.6).tolist() == [0, 1, 2]  # 1/2 ≤ 0.6: all kept
    assert batched_nms(boxes, scores, labels, 0.4).tolist() == [0, 2]  # 1/2 > 0.4: box 1 suppressed
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 1, 2]  # suppression needs IoU > τ
    assert batched_nms(boxes, scores[::-1].copy(), labels, 0.4).tolist() == [2, 1]  # box 1 now beats box 0


@pytest.mark.parametrize("iou", [0.5, None])
def test_select_detections_equals_the_torch_path(iou: float | None) -> None:
    rng = np.random.default_rng(5)
    boxes = np.stack([random_boxes(rng, 400, clustered=True) for _ in range(3)])
    scores = rng.random((3, 400, 4)).astype(np.float32) ** 4
    for threshold in (0.001, 0.25, 0.9):
        ours = select_detections(boxes, scores, score_threshold=threshold, iou_threshold=iou, max_detections=100,
                                 return_candidates=True)
        theirs = torch_select(torch.from_numpy(boxes), torch.from_numpy(scores), score_threshold=threshold,
                              iou_threshold=iou, max_detections=100, return_candidates=True)
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key].numpy(), err_msg=key)


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (37, 53)])
def test_numpy_mask_probabilities_equal_the_torch_assembly(size: tuple[int, int]) -> None:
    from cvpipe.postprocess import instance_masks, instance_masks_numpy

    rng = np.random.default_rng(sum(size))
    protos = rng.normal(0, 2, (8, 16, 16)).astype(np.float32)
    coeffs = rng.normal(0, 1, (5, 8)).astype(np.float32)
    boxes = random_boxes(rng, 5, clustered=False) * np.float32(min(size) / 128)
    ours = instance_masks_numpy.mask_probabilities(protos, coeffs, boxes, size)
    theirs = instance_masks.mask_probabilities(protos, coeffs, boxes, size).numpy()
    assert ours.shape == theirs.shape == (5, *size)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_array_equal(ours == 0, theirs == 0)  # the same crop


def test_interpolation_matrix_is_bilinear_resizing() -> None:
    from torch.nn import functional as F

    from cvpipe.postprocess.instance_masks_numpy import interpolation_matrix

    rng = np.random.default_rng(0)
    for source, target in ((4, 9), (16, 128), (10, 3), (7, 7)):
        row = rng.normal(size=source).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(row)[None, None], size=target, mode="linear",
                                 align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(interpolation_matrix(source, target) @ row, expected, atol=1e-6)
        np.testing.assert_allclose(interpolation_matrix(source, target).sum(1), 1, atol=1e-6)  # weights sum to 1


def test_torch_free_instances_equal_the_torch_path() -> None:
    from cvpipe.postprocess.instances import dense_from_arrays, paired_mask_iou, select_instances

    rng = np.random.default_rng(9)
    boxes = np.stack([random_boxes(rng, 200, clustered=True) for _ in range(2)])
    scores = rng.random((2, 200, 3)).astype(np.float32) ** 3
    coeffs = rng.normal(0, 1, (2, 200, 8)).astype(np.float32)
    protos = rng.normal(0, 2, (2, 8, 32, 32)).astype(np.float32)
    dense = dense_from_arrays(boxes, scores, coeffs, protos, image_size=(128, 128))
    kwargs = dict(score_threshold=0.05, iou_threshold=0.5, max_detections=50, mask_threshold=0.5)
    for ours, theirs in zip(select_instances(dense, torch_free=True, **kwargs), select_instances(dense, **kwargs)):
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(ours[key], theirs[key])
        assert len(ours["segmentations"]) == 50
        assert paired_mask_iou(ours["segmentations"], theirs["segmentations"]).min() > 0.999
