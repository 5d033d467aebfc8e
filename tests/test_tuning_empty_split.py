"""A split without ground-truth objects: every tuner refuses it with a DataValidationError naming the split
(the stage exits 1 with that message), never an IndexError or ValueError from the arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvpipe.errors import CvpipeError, DataValidationError
from cvpipe.tuning.detection_thresholds import threshold_grid, tune_detection_thresholds
from cvpipe.tuning.instance_thresholds import tune_instance_thresholds
from cvpipe.tuning.reject_threshold import choose_reject_threshold

NO_OBJECTS = "the validation split \\('val'\\) holds no ground-truth objects"


def test_classifier_reject_threshold_on_a_split_without_crops():
    with pytest.raises(DataValidationError, match=f"{NO_OBJECTS}: .*no reject threshold can be chosen") as caught:
        choose_reject_threshold(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), 0.9)
    assert isinstance(caught.value, CvpipeError)  # run_stage: message and exit 1, no traceback


def test_detector_thresholds_on_a_split_whose_images_hold_no_boxes():
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 9.0, 9.0]])] * 2  # detections on two images...
    scores = [torch.tensor([[0.9, 0.1], [0.4, 0.7]])] * 2
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2  # ...no boxes
    grid = dict(score_thresholds=[0.3, 0.5], iou_thresholds=[0.5], max_detections=10)
    with pytest.raises(DataValidationError, match=f"{NO_OBJECTS} in its 2 images: .*no score threshold"):
        tune_detection_thresholds(boxes, scores, targets, **grid)
    with pytest.raises(DataValidationError, match="the test split \\('test'\\) holds no ground-truth objects"):
        threshold_grid(boxes, scores, targets, split="test", **grid)


def test_instance_thresholds_on_a_split_without_instances():
    detections = [{"scores": np.array([0.8]), "labels": np.array([0]),
                   "rles": {0.5: [{"size": [4, 4], "counts": [0, 16]}]}}]
    ground_truth = [{"labels": np.zeros(0, np.int64), "rles": []}]
    with pytest.raises(DataValidationError, match=f"{NO_OBJECTS} in its 1 images: .*no score threshold or mask"):
        tune_instance_thresholds(detections, ground_truth, score_thresholds=[0.5], mask_thresholds=[0.5])
