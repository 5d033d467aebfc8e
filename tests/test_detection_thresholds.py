"""Detector operating-point tuning: matching against brute force, the grid against per-cell selection,
both objectives on a hand-made scene whose optimum is known."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from cvpipe.errors import DataValidationError
from cvpipe.postprocess.detections import select_detections
from cvpipe.tuning.detection_thresholds import (choose_operating_point, count_matches, threshold_grid,
                                                tune_detection_thresholds)


def brute_force_counts(pb, ps, pl, gb, gl, thr: float) -> tuple[int, int, int]:
    """Greedy matching written out with Python loops: by descending score (stable), best unmatched IoU."""
    def iou(a, b) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union
    taken: set[int] = set()
    for d in sorted(range(len(ps)), key=lambda i: -ps[i]):
        best, best_iou = None, -1.0
        for g in range(len(gl)):
            if g in taken or gl[g] != pl[d]:
                continue
            v = iou(pb[d], gb[g])
            if v >= thr and v > best_iou:
                best, best_iou = g, v
        if best is not None:
            taken.add(best)
    return len(taken), len(ps) - len(taken), len(gl) - len(taken)


def random_boxes(rng: np.random.Generator, n: int, size: int = 24) -> np.ndarray:
    xy = rng.integers(0, size, (n, 2))
    wh = rng.integers(2, 12, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float64)


def test_count_matches_equals_brute_force_on_random_cases() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        d, g = int(rng.integers(0, 9)), int(rng.integers(0, 7))
        pb, gb = random_boxes(rng, d), random_boxes(rng, g)
        ps = rng.choice([0.2, 0.4, 0.6, 0.8], d)  # ties on purpose
        pl, gl = rng.integers(0, 2, d), rng.integers(0, 2, g)
        thr = float(rng.choice([0.3, 0.5]))
        expected = brute_force_counts(pb.tolist(), ps.tolist(), pl.tolist(), gb.tolist(), gl.tolist(), thr)
        assert count_matches(pb, ps, pl, gb, gl, thr) == expected
        assert count_matches(torch.from_numpy(pb), torch.from_numpy(ps), torch.from_numpy(pl),
                             torch.from_numpy(gb), torch.from_numpy(gl), thr) == expected


def test_count_matches_hand_case() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    preds = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10], [50, 50, 60, 60]], dtype=float)
    scores, labels = np.array([0.9, 0.95, 0.5, 0.7]), np.array([0, 0, 1, 0])
    # 0.95 takes GT 0 (IoU 0.9), 0.9 duplicate → FP, class-1 box on class-0 GT 1 → FP, far box → FP.
    assert count_matches(preds, scores, labels, gt, np.array([0, 0])) == (1, 3, 1)
    assert count_matches(np.zeros((0, 4)), np.zeros(0), np.zeros(0), gt, np.array([0, 0])) == (0, 0, 2)


def hand_scene() -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """One image, one class: 3 GT boxes; 6 candidates with known TP/FP status (see the table below)."""
    g1, g2, g3 = [0, 0, 20, 20], [40, 0, 60, 20], [80, 0, 100, 20]
    candidates = [(g1, 0.9),                  # TP
                  ([0, 60, 20, 80], 0.8),     # FP, far from everything
                  (g2, 0.7),                  # TP
                  ([0, 0, 20, 16], 0.6),      # duplicate of g1, IoU 0.8: suppressed by NMS 0.5, not by 0.9
                  (g3, 0.4),                  # TP
                  ([60, 60, 80, 80], 0.3)]    # FP, below every threshold of the grid
    boxes = np.array([b for b, _ in candidates], dtype=np.float32)
    scores = np.array([[s] for _, s in candidates], dtype=np.float32)
    target = {"boxes": torch.tensor([g1, g2, g3], dtype=torch.float32), "labels": torch.zeros(3, dtype=torch.int64)}
    return [boxes], [scores], [target]


SCORES, IOUS = [0.35, 0.5, 0.65, 0.85], [0.5, 0.9]
# (score threshold, NMS IoU) → (TP, FP) worked out by hand from the candidate list.
HAND_TABLE = {(0.85, 0.5): (1, 0), (0.65, 0.5): (2, 1), (0.5, 0.5): (2, 1), (0.35, 0.5): (3, 1),
              (0.85, 0.9): (1, 0), (0.65, 0.9): (2, 1), (0.5, 0.9): (2, 2), (0.35, 0.9): (3, 2)}


def test_grid_matches_hand_table() -> None:
    grid = threshold_grid(*hand_scene(), score_thresholds=SCORES, iou_thresholds=IOUS, max_detections=100)
    assert len(grid) == len(HAND_TABLE)
    for cell in grid:
        tp, fp = HAND_TABLE[(cell["score_threshold"], cell["iou_threshold"])]
        p, r = Fraction(tp, tp + fp), Fraction(tp, 3)
        assert (cell["tp"], cell["fp"], cell["fn"]) == (tp, fp, 3 - tp)
        assert cell["precision"] == pytest.approx(float(p)) and cell["recall"] == pytest.approx(float(r))
        assert cell["f1"] == pytest.approx(float(2 * p * r / (p + r)))
    no_nms = threshold_grid(*hand_scene(), score_thresholds=SCORES, iou_thresholds=[None], max_detections=100)
    assert [(c["tp"], c["fp"]) for c in no_nms] == [HAND_TABLE[(s, 0.9)] for s in SCORES]  # nothing suppressed


def test_f1_objective_picks_the_hand_optimum() -> None:
    point = tune_detection_thresholds(*hand_scene(), score_thresholds=SCORES, iou_thresholds=IOUS,
                                      max_detections=100, objective="f1")
    # F1 per cell from the table: best is 3 TP, 1 FP → P 3/4, R 1, F1 6/7 at (0.35, NMS 0.5).
    assert (point.score_threshold, point.iou_threshold) == (0.35, 0.5)
    assert point.f1 == pytest.approx(6 / 7) and point.precision == pytest.approx(0.75) and point.recall == 1.0
    assert point.target_met and len(point.grid) == 8


@pytest.mark.parametrize(("target", "expected_cell", "met"), [
    (0.7, (0.35, 0.5), True),    # P 3/4 ≥ 0.7 with recall 1
    (0.8, (0.85, 0.5), True),    # only the 1-TP cells (P 1) qualify; recall 1/3; tie → first (IoU 0.5)
    (1.0, (0.85, 0.5), True),
])
def test_recall_at_precision_picks_the_hand_optimum(target: float, expected_cell, met: bool) -> None:
    grid = threshold_grid(*hand_scene(), score_thresholds=SCORES, iou_thresholds=IOUS, max_detections=100)
    point = choose_operating_point(grid, "recall_at_precision", target_precision=target)
    assert (point.score_threshold, point.iou_threshold) == expected_cell and point.target_met is met
    assert point.precision >= target


def test_recall_at_precision_falls_back_to_max_precision() -> None:
    point = tune_detection_thresholds(*hand_scene(), score_thresholds=[0.35, 0.5], iou_thresholds=IOUS,
                                      max_detections=100, objective="recall_at_precision", target_precision=0.9)
    assert not point.target_met
    assert (point.score_threshold, point.iou_threshold) == (0.35, 0.5) and point.precision == pytest.approx(0.75)


def test_grid_equals_select_detections_per_cell() -> None:
    """The one-pass grid gives exactly what a separate select_detections + count_matches per cell gives."""
    rng = np.random.default_rng(1)
    boxes, scores, targets = [], [], []
    for i in range(6):
        gt = random_boxes(rng, int(rng.integers(0, 5)), size=40)
        gt_labels = rng.integers(0, 3, len(gt))
        jitter = rng.normal(0, 2, (len(gt) * 6, 4)) if len(gt) else np.zeros((0, 4))
        cand = np.concatenate([np.repeat(gt, 6, axis=0) + jitter, random_boxes(rng, 30 - 6 * len(gt), size=40)])
        cand[:, 2:] = np.maximum(cand[:, 2:], cand[:, :2] + 1)
        # One confident class per candidate (the GT class for the jittered copies), background noise elsewhere.
        cls = np.concatenate([np.repeat(gt_labels, 6), rng.integers(0, 3, 30 - 6 * len(gt))])
        s = rng.random((30, 3)) * 0.1
        s[np.arange(30), cls] = rng.random(30)
        s = s.astype(np.float32)
        as_torch = i % 2 == 0  # numpy and torch inputs mixed
        boxes.append(torch.from_numpy(cand).float() if as_torch else cand.astype(np.float32))
        scores.append(torch.from_numpy(s) if as_torch else s)
        targets.append({"boxes": torch.from_numpy(gt).float(), "labels": torch.from_numpy(gt_labels)})
    score_grid, iou_grid, cap = [0.05, 0.3, 0.55, 0.8], [0.3, 0.6, None], 20
    grid = threshold_grid(boxes, scores, targets, score_thresholds=score_grid, iou_thresholds=iou_grid,
                          max_detections=cap)
    cells = {(c["score_threshold"], c["iou_threshold"]): (c["tp"], c["fp"], c["fn"]) for c in grid}
    for iou in iou_grid:
        for st in score_grid:
            total = np.zeros(3, dtype=int)
            for b, s, t in zip(boxes, scores, targets):
                det = select_detections(torch.as_tensor(b)[None], torch.as_tensor(s)[None], score_threshold=st,
                                        iou_threshold=iou, max_detections=cap)[0]
                total += count_matches(det["boxes"], det["scores"], det["labels"], t["boxes"], t["labels"])
            assert cells[(st, iou)] == tuple(total), (st, iou)
    assert len(set(cells.values())) >= 8  # thresholds, NMS and the cap all change the counts


def test_bad_inputs_raise_value_error() -> None:
    boxes, scores, _ = hand_scene()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    with pytest.raises(DataValidationError, match="no ground-truth objects"):  # a data fault: a clean exit
        threshold_grid(boxes, scores, empty, score_thresholds=[0.5], iou_thresholds=[0.5], max_detections=10)
    grid = threshold_grid(*hand_scene(), score_thresholds=[0.5], iou_thresholds=[0.5], max_detections=10)
    with pytest.raises(ValueError, match="objective"):
        choose_operating_point(grid, "map")
    with pytest.raises(ValueError, match="target_precision"):
        choose_operating_point(grid, "recall_at_precision")
