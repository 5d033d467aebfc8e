"""Segmentation metrics against hand-computed masks, brute force per-class sets, and the empty cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvpipe.metrics.segmentation import per_class_iou_dice, segmentation_scores, update_confusion

NAMES = ["a", "b"]  # K = 2 foreground classes → labels 0, 1, 2


def _scores(pred, target, names=NAMES):
    return segmentation_scores(update_confusion(None, np.array(pred), np.array(target), len(names)), names)


def test_hand_computed_scores_with_an_ignored_pixel():
    target = [[0, 1, 1],
              [0, 1, 2],
              [255, 2, 2]]
    pred = [[0, 1, 0],
            [1, 1, 2],
            [1, 2, 0]]
    # valid (t, p): (0,0) (1,1) (1,0) (0,1) (1,1) (2,2) (2,2) (2,0); the ignored pixel predicted 1 is not an FP
    # background: TP 1, FP 2, FN 1;  a: TP 2, FP 1, FN 1;  b: TP 2, FP 0, FN 1
    scores = _scores(pred, target)
    iou = {row["class"]: row["iou"] for row in scores["per_class"]}
    dice = {row["class"]: row["dice"] for row in scores["per_class"]}
    assert iou == pytest.approx({"background": 1 / 4, "a": 2 / 4, "b": 2 / 3})
    assert dice == pytest.approx({"background": 2 / 5, "a": 4 / 6, "b": 4 / 5})
    assert scores["miou"] == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert scores["dice"] == pytest.approx((4 / 6 + 4 / 5) / 2)
    assert scores["miou_with_background"] == pytest.approx((1 / 4 + 2 / 4 + 2 / 3) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 8)
    assert [row["support"] for row in scores["per_class"]] == [2, 3, 3]


def test_matches_brute_force_sets_on_random_masks():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(5, 17, 13))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 4, size=target.shape)
    iou, dice = per_class_iou_dice(update_confusion(None, pred, target, 3))
    valid = target != 255
    for c in range(4):
        p, t = (pred == c) & valid, (target == c) & valid
        assert iou[c] == pytest.approx((p & t).sum() / (p | t).sum())
        assert dice[c] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))


def test_accumulated_over_batches_equals_one_update_on_the_whole_split():
    rng = np.random.default_rng(1)
    target, pred = rng.integers(0, 3, size=(6, 8, 8)), rng.integers(0, 3, size=(6, 8, 8))
    confusion = None
    for i in range(0, 6, 4):
        confusion = update_confusion(confusion, pred[i:i + 4], target[i:i + 4], 2)
    np.testing.assert_array_equal(confusion, update_confusion(None, pred, target, 2))
    assert confusion.sum() == target.size


def test_split_level_iou_is_not_the_mean_of_per_image_iou():
    # image 1: a big object found exactly; image 2: a 1-px object missed. Split IoU of "a" = 9/10, mean = 0.5
    target = np.zeros((2, 4, 4), dtype=np.int64)
    target[0, :3, :3] = 1
    target[1, 0, 0] = 1
    pred = target.copy()
    pred[1, 0, 0] = 0
    per_image = [_scores(p, t, ["a"])["miou"] for p, t in zip(pred, target)]
    assert per_image == [1.0, 0.0]
    assert _scores(pred, target, ["a"])["miou"] == pytest.approx(9 / 10)


def test_empty_prediction_of_a_present_class_scores_zero_and_absent_class_is_nan():
    target = np.zeros((4, 4), dtype=np.int64)
    target[1:3, 1:3] = 1  # class a present, class b absent everywhere
    scores = _scores(np.zeros_like(target), target)
    a, b = scores["per_class"][1], scores["per_class"][2]
    assert a["iou"] == 0.0 and a["dice"] == 0.0
    assert math.isnan(b["iou"]) and math.isnan(b["dice"])
    assert scores["miou"] == 0.0 and scores["dice"] == 0.0  # the NaN class is left out, not counted as 0 or 1
    assert scores["miou_with_background"] == pytest.approx((12 / 16 + 0.0) / 2)


def test_empty_ground_truth_with_false_positives_scores_zero():
    target = np.zeros((4, 4), dtype=np.int64)
    pred = target.copy()
    pred[0, :2] = 2
    scores = _scores(pred, target)
    assert math.isnan(scores["per_class"][1]["iou"])
    assert scores["per_class"][2]["iou"] == 0.0
    assert scores["miou"] == 0.0
    assert scores["pixel_accuracy"] == pytest.approx(14 / 16)


def test_all_background_everywhere_has_no_foreground_score():
    target = np.zeros((3, 3), dtype=np.int64)
    scores = _scores(target, target)
    assert math.isnan(scores["miou"]) and math.isnan(scores["dice"])
    assert scores["miou_with_background"] == 1.0 and scores["pixel_accuracy"] == 1.0


def test_all_pixels_ignored_gives_nan_not_an_error():
    target = np.full((2, 2), 255)
    scores = _scores(np.ones((2, 2), dtype=np.int64), target)
    assert math.isnan(scores["pixel_accuracy"]) and math.isnan(scores["miou_with_background"])


def test_perfect_prediction_scores_one():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 3, size=(10, 10))
    scores = _scores(target, target)
    assert scores["miou"] == 1.0 and scores["dice"] == 1.0 and scores["pixel_accuracy"] == 1.0


@pytest.mark.parametrize("pred, target, message", [
    ([[3]], [[0]], "pred value 3"),
    ([[0]], [[7]], "target value 7"),
    ([[0, 0]], [[0]], "differ in shape"),
])
def test_bad_inputs_are_named(pred, target, message):
    with pytest.raises(ValueError, match=message):
        update_confusion(None, np.array(pred), np.array(target), 2)


def test_confusion_of_the_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(np.zeros((4, 4), dtype=np.int64), NAMES)
    with pytest.raises(ValueError, match="num_classes=2"):
        update_confusion(np.zeros((4, 4), dtype=np.int64), np.zeros(3), np.zeros(3), 2)
