"""Score a registered model, as served, on the current prepared test split: per-image scores for the bootstrap.

The model is the registry's pyfunc (:mod:`cvpipe.serving`), so the numbers describe exactly what
``models:/<name>@champion`` returns, whatever split or input size the version was trained on: images at another
size are letterboxed by the pyfunc itself. Per task, the unit the bootstrap resamples:

- classification: one object crop (``top1`` = arg-max label equals the crop's label, reject threshold ignored).
- detection: one test image; detections at COCO's protocol (score ≥ 0.001, 100 per image, the version's own tuned
  NMS IoU), scored by pycocotools.
- segmentation: one test image's confusion matrix of the served (thresholded and cleaned) label map.
- instance_segmentation: one test image; instances at COCO's protocol (score ≥ 0.001, 100 per image, the
  version's tuned NMS IoU and mask threshold), mask AP by pycocotools (``iouType="segm"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.lifecycle.bootstrap import AccuracyScorer, CocoScorer, ConfusionScorer, Scorer

METRICS = {"classification": ("top1",), "detection": ("map50_95", "map50", "map75"), "segmentation": ("miou", "dice"),
           "instance_segmentation": ("mask_map50_95", "mask_map50", "mask_map75")}
COCO_PROTOCOL = {"score_threshold": 0.001, "max_detections": 100}


def check_metric(task: str, metric: str) -> None:
    if metric not in METRICS.get(task, ()):
        raise ValueError(f"promote.metric.{task}: {metric!r} cannot be bootstrapped; choose one of "
                         f"{list(METRICS.get(task, ()))}")


def expected_class_names(task: str, prepared: Path, model: Any) -> list[str]:
    """The class names the current split's labels use, in the form this task's model reports them."""
    from cvpipe.data.prepare import load_meta

    names = list(load_meta(prepared)["class_names"])
    if task == "segmentation" and model.meta.get("binary"):
        return ["foreground"]
    return names


def test_inputs(task: str, prepared: Path) -> np.ndarray:
    """The test split's model inputs: classifier crops or whole images, uint8 [N, H, W, 3]."""
    from cvpipe.data.arrays import load_array

    return np.asarray(load_array(prepared, "test", "crops" if task == "classification" else "images"))


def scorer(pyfunc: Any, task: str, metric: str, prepared: Path) -> Scorer:
    """Run ``pyfunc`` (a loaded ``mlflow.pyfunc`` model) over the test split; a scorer of its per-image results."""
    from cvpipe.data.arrays import load_array

    check_metric(task, metric)
    inputs = test_inputs(task, prepared)
    if task == "classification":
        labels = np.asarray(load_array(prepared, "test", "crop_labels"))
        predicted = pyfunc.predict(inputs)["label"].to_numpy()
        return AccuracyScorer(predicted == labels)
    if task in ("detection", "instance_segmentation"):
        from cvpipe.metrics.detection import detections_to_coco
        from cvpipe.tasks.detection import load_ground_truth

        gt = load_ground_truth(prepared, "test")
        table = pyfunc.predict(inputs, params=COCO_PROTOCOL)
        dets = [{"boxes": np.asarray(row.boxes, dtype=np.float64).reshape(-1, 4),
                 "scores": np.asarray(row.scores, dtype=np.float64), "labels": np.asarray(row.labels, dtype=np.int64),
                 **({"segmentations": list(row.masks)} if task == "instance_segmentation" else {})}
                for row in table.itertuples()]
        image_ids = [im["id"] for im in sorted(gt["images"], key=lambda im: im["index"])]
        results = detections_to_coco(dets, image_ids, [c["id"] for c in gt["categories"]])
        if task == "instance_segmentation":
            return CocoScorer(gt, results, metric.removeprefix("mask_"), iou_type="segm")
        return CocoScorer(gt, results, metric)
    from cvpipe.data.prepare import IGNORE_INDEX
    from cvpipe.metrics.segmentation import update_confusion
    from cvpipe.tasks.segmentation import split_targets

    model = pyfunc.unwrap_python_model()
    targets = split_targets(prepared, "test", bool(model.meta.get("binary")))
    labels = pyfunc.predict(inputs)
    num_classes = len(model.class_names)
    confusions = np.stack([update_confusion(None, p, t, num_classes, ignore_index=IGNORE_INDEX)
                           for p, t in zip(labels, targets)])
    return ConfusionScorer(confusions, metric)


def latency_ms(pyfunc: Any, task: str, prepared: Path, runs: int) -> float:
    """p50 ms of one ONNX session run on one test input (the graph only, as the export stage measures)."""
    from cvpipe.export import onnx_latency_ms

    model = pyfunc.unwrap_python_model()
    batch, _ = model.to_input(test_inputs(task, prepared)[:1])
    return onnx_latency_ms(model.session, batch, runs)["p50"]
