"""COCO metrics through pycocotools on cases whose AP is known by hand, and the ``cvpipe coco-eval`` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cvpipe.cli import main
from cvpipe.metrics.detection import (STAT_KEYS, coco_evaluate, detections_to_coco, evaluate_detections,
                                      targets_to_coco)

# COCO's IoU thresholds 0.50, 0.55, ..., 0.95 as exact fractions (10 of them).
COCO_IOUS = [Fraction(1, 2) + Fraction(i, 20) for i in range(10)]


def gt_dict(boxes: list[tuple[int, int, list[float]]], num_categories: int = 2, num_images: int = 1,
            crowd: set[int] = frozenset()) -> dict:
    """COCO GT from (image_id, category_id, [x, y, w, h]); annotation indices in ``crowd`` are iscrowd."""
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": list(b), "area": b[2] * b[3],
             "iscrowd": int(i in crowd)} for i, (img, cat, b) in enumerate(boxes)]
    return {"images": [{"id": i + 1, "height": 200, "width": 200} for i in range(num_images)],
            "annotations": anns, "categories": [{"id": k + 1, "name": f"c{k + 1}"} for k in range(num_categories)]}


def pred(img: int, cat: int, box: list[float], score: float) -> dict:
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}


def class_row(result: dict, category_id: int) -> dict:
    return next(r for r in result["per_class"] if r["category_id"] == category_id)


def interpolated_ap(is_tp: list[bool], num_gt: int) -> float:
    """COCO's 101-point AP from the definition: mean over r = i/100 of max precision at recall ≥ r."""
    tp = np.cumsum(is_tp)
    precision = tp / np.arange(1, len(is_tp) + 1)
    recall = tp / num_gt
    points = [max([p for p, rc in zip(precision, recall) if rc >= i / 100], default=0.0) for i in range(101)]
    return float(np.mean(points))


def test_perfect_predictions_score_one() -> None:
    boxes = [(1, 1, [5, 5, 20, 20]), (1, 2, [40, 40, 50, 60]), (2, 1, [0, 0, 120, 110]), (2, 2, [100, 10, 8, 9])]
    gt = gt_dict(boxes, num_images=2)
    result = coco_evaluate(gt, [pred(img, cat, b, 0.9) for img, cat, b in boxes])
    for key in STAT_KEYS:
        assert result[key] == pytest.approx(1.0), key  # every area bucket has GT here
    assert [r["ap50_95"] for r in result["per_class"]] == pytest.approx([1.0, 1.0])
    assert result["pr_curve"]["precision"] == pytest.approx([1.0] * 101)
    assert len(result["pr_curve"]["recall"]) == 101
    assert result["summary"].count("Average Precision") == 6 and result["summary"].count("Average Recall") == 6


@pytest.mark.parametrize("height", [6.2, 7.7, 5.3])
def test_single_box_ap_counts_the_thresholds_its_iou_passes(height: float) -> None:
    # GT 10x10, prediction 10 x height sharing the top-left corner: IoU = height / 10.
    gt = gt_dict([(1, 1, [0, 0, 10, 10])], num_categories=1)
    result = coco_evaluate(gt, [pred(1, 1, [0, 0, 10, height], 0.8)])
    iou = Fraction(str(height)) / 10
    passed = sum(t <= iou for t in COCO_IOUS)  # 6.2 → 0.50, 0.55, 0.60 → 3 of 10
    assert result["map50_95"] == pytest.approx(passed / 10)
    assert result["map50"] == pytest.approx(1.0)
    assert result["map75"] == pytest.approx(float(iou >= Fraction(3, 4)))


def test_ranked_predictions_give_hand_computed_interpolated_ap() -> None:
    gt_boxes = [[0, 0, 20, 20], [50, 0, 20, 20], [100, 0, 20, 20]]
    gt = gt_dict([(1, 1, b) for b in gt_boxes], num_categories=1)
    far = [[0, 150, 20, 20], [150, 150, 20, 20]]  # no overlap with any GT
    preds = [pred(1, 1, gt_boxes[0], 0.9), pred(1, 1, far[0], 0.8), pred(1, 1, gt_boxes[1], 0.7),
             pred(1, 1, far[1], 0.6), pred(1, 1, gt_boxes[2], 0.5)]
    expected = interpolated_ap([True, False, True, False, True], num_gt=3)
    # PR points (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2), (1, 3/5): 34 grid points at 1, 33 at 2/3, 34 at 3/5.
    assert expected == pytest.approx((34 + 33 * 2 / 3 + 34 * 0.6) / 101)
    result = coco_evaluate(gt, preds)
    assert result["map50"] == pytest.approx(expected)
    assert result["map50_95"] == pytest.approx(expected)  # exact boxes: every IoU threshold passes
    assert class_row(result, 1)["ap50"] == pytest.approx(expected)
    assert np.mean(result["pr_curve"]["precision"]) == pytest.approx(expected)


def test_false_positive_of_another_class_leaves_this_class_alone() -> None:
    gt = gt_dict([(1, 1, [10, 10, 30, 30]), (1, 2, [100, 100, 30, 30])])
    base = [pred(1, 1, [10, 10, 30, 30], 0.6), pred(1, 2, [100, 100, 30, 30], 0.5)]
    intruder = pred(1, 2, [10, 10, 30, 30], 0.95)  # class 2 on top of the class-1 object, highest score
    without, with_fp = coco_evaluate(gt, base), coco_evaluate(gt, base + [intruder])
    assert class_row(with_fp, 1)["ap50_95"] == pytest.approx(class_row(without, 1)["ap50_95"]) == pytest.approx(1)
    assert class_row(with_fp, 2)["ap50"] == pytest.approx(interpolated_ap([False, True], num_gt=1))  # 0.5


def test_crowd_ground_truth_is_ignored() -> None:
    boxes = [(1, 1, [0, 0, 30, 30]), (1, 1, [60, 0, 30, 30]), (1, 1, [0, 60, 40, 40])]
    gt = gt_dict(boxes, num_categories=1, crowd={1, 2})
    # The crowd box at index 1 is never detected; a detection on crowd box 2 outranks the real one.
    preds = [pred(1, 1, [0, 60, 40, 40], 0.9), pred(1, 1, [0, 0, 30, 30], 0.8)]
    assert coco_evaluate(gt, preds)["map50_95"] == pytest.approx(1.0)
    # Sanity: the same boxes without the crowd flag give recall 2/3, so the flag is what made AP 1.
    not_crowd = coco_evaluate(gt_dict(boxes, num_categories=1), preds)
    assert not_crowd["map50"] == pytest.approx(interpolated_ap([True, True], num_gt=3))


def test_empty_predictions_give_zero_not_a_crash() -> None:
    gt = gt_dict([(1, 1, [0, 0, 20, 20])], num_categories=2)
    result = coco_evaluate(gt, [])
    assert result["map50_95"] == 0.0 and result["map50"] == 0.0 and result["ar100"] == 0.0
    assert result["map_large"] == -1.0  # no large GT: COCO's -1
    assert class_row(result, 1)["ap50_95"] == 0.0 and class_row(result, 2)["ap50_95"] == -1.0
    assert result["pr_curve"]["precision"] == [0.0] * 101


def test_segm_uses_mask_iou() -> None:
    gt_mask = np.zeros((40, 40), dtype=np.uint8)
    gt_mask[0:10, 0:10] = 1
    dt_mask = np.zeros_like(gt_mask)
    dt_mask[0:6, 0:10] = 1
    dt_mask[6, 0:6] = 1  # 66 pixels inside the 100-pixel GT: mask IoU 0.66
    def rle(m: np.ndarray) -> dict:
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": r["size"], "counts": r["counts"].decode("ascii")}
    gt = gt_dict([(1, 1, [0, 0, 10, 10])], num_categories=1)
    gt["annotations"][0]["segmentation"] = rle(gt_mask)
    # The prediction's bbox is the GT box: a box IoU would be 1.
    preds = [{**pred(1, 1, [0, 0, 10, 10], 0.9), "segmentation": rle(dt_mask)}]
    result = coco_evaluate(gt, preds, iou_type="segm")
    assert result["map50_95"] == pytest.approx(sum(t <= Fraction(66, 100) for t in COCO_IOUS) / 10)  # 4/10
    assert coco_evaluate(gt, preds, iou_type="bbox")["map50_95"] == pytest.approx(1.0)


def test_detections_to_coco_keeps_digits_and_maps_labels() -> None:
    dets = [{"boxes": np.array([[10.123456, 20.5, 30.987654321, 40.25]]), "scores": np.array([0.123456789]),
             "labels": np.array([1])},
            {"boxes": torch.tensor([[1.000001, 2.0, 3.5, 4.0]]), "scores": torch.tensor([0.5]),
             "labels": torch.tensor([0])}]
    out = detections_to_coco(dets, image_ids=[7, 9], category_ids=[3, 5])
    assert out[0]["bbox"] == [10.123456, 20.5, 30.987654321 - 10.123456, 40.25 - 20.5]
    assert out[0]["score"] == 0.123456789 and out[0]["category_id"] == 5 and out[0]["image_id"] == 7
    assert out[1]["bbox"][0] == float(np.float32(1.000001)) and out[1]["category_id"] == 3
    with pytest.raises(ValueError, match="label 2"):
        detections_to_coco([{"boxes": np.zeros((1, 4)), "scores": [1.0], "labels": [2]}], [1], [1, 2])


def test_evaluate_detections_matches_hand_built_coco() -> None:
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    detections = [{"boxes": torch.tensor([[0.0, 0.0, 20.0, 12.4]]), "scores": torch.tensor([0.7]),
                   "labels": torch.tensor([1])},
                  {"boxes": torch.tensor([[5.0, 5.0, 9.0, 9.0]]), "scores": torch.tensor([0.9]),
                   "labels": torch.tensor([0])}]
    gt = targets_to_coco(targets, ["a", "b"])
    assert gt["annotations"] == [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 20.0, 20.0],
                                  "area": 400.0, "iscrowd": 0}]
    result = evaluate_detections(targets, detections, num_classes=2)
    assert class_row(result, 2)["ap50_95"] == pytest.approx(sum(t <= Fraction(62, 100) for t in COCO_IOUS) / 10)
    assert class_row(result, 1)["ap50_95"] == -1.0  # a lone FP of a class without GT


def test_prediction_outside_ground_truth_is_rejected() -> None:
    gt = gt_dict([(1, 1, [0, 0, 20, 20])], num_categories=1)
    with pytest.raises(ValueError, match="image_id 5"):
        coco_evaluate(gt, [pred(5, 1, [0, 0, 20, 20], 0.9)])
    with pytest.raises(ValueError, match="category_id 4"):
        coco_evaluate(gt, [pred(1, 4, [0, 0, 20, 20], 0.9)])


@pytest.fixture
def coco_files(tmp_path: Path) -> tuple[Path, Path, dict, list]:
    gt = gt_dict([(1, 1, [0, 0, 20, 20]), (2, 2, [30, 30, 40, 40])], num_images=2)
    preds = [pred(1, 1, [0, 0, 20, 13], 0.9), pred(2, 2, [30, 30, 40, 40], 0.8), pred(2, 1, [0, 0, 5, 5], 0.3)]
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "preds.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(preds))
    return gt_path, pred_path, gt, preds


def test_cli_prints_twelve_stats_and_writes_json(coco_files, tmp_path: Path, capsys) -> None:
    gt_path, pred_path, gt, preds = coco_files
    out = tmp_path / "out" / "metrics.json"
    assert main(["coco-eval", str(gt_path), str(pred_path), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    stat_lines = [line for line in stdout.splitlines() if line.lstrip().startswith("Average")]
    assert len(stat_lines) == 12
    assert "c1" in stdout and "c2" in stdout and "AP50:95" in stdout
    written = json.loads(out.read_text())
    expected = coco_evaluate(gt, preds)
    for key in STAT_KEYS:
        assert written[key] == pytest.approx(expected[key])
        assert f"= {expected[key]:0.3f}" in stat_lines[STAT_KEYS.index(key)]
    assert written["per_class"] == expected["per_class"] and written["iou_type"] == "bbox"


@pytest.mark.parametrize("case", ["missing_gt", "bad_json", "unknown_image", "not_a_list"])
def test_cli_user_errors_exit_2_and_name_the_file(case: str, coco_files, tmp_path: Path, capsys) -> None:
    gt_path, pred_path, _, _ = coco_files
    if case == "missing_gt":
        gt_path, culprit = tmp_path / "nope.json", tmp_path / "nope.json"
    elif case == "bad_json":
        pred_path.write_text("[{\"image_id\": 1,")
        culprit = pred_path
    elif case == "unknown_image":
        pred_path.write_text(json.dumps([pred(42, 1, [0, 0, 1, 1], 0.5)]))
        culprit = pred_path
    else:
        gt_path.write_text("[]")
        culprit = gt_path
    assert main(["coco-eval", str(gt_path), str(pred_path)]) == 2
    err = capsys.readouterr().err
    assert str(culprit) in err and "Traceback" not in err


def test_installed_cvpipe_script_runs(coco_files) -> None:
    gt_path, pred_path, _, _ = coco_files
    script = Path(sys.executable).parent / "cvpipe"
    if not script.exists():
        pytest.skip("cvpipe script not installed (pip install -e .)")
    done = subprocess.run([str(script), "coco-eval", str(gt_path), str(pred_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Average Precision") == 6
