"""Serving a detector: the shared score filter, class-wise NMS (numpy, :mod:`cvpipe.postprocess.nms`, the same
keep list as torchvision's) and the detection cap with the tuned thresholds; boxes back on each caller's pixel
grid. One row per image: boxes, scores, labels, class_names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from cvpipe.postprocess.nms import select_detections
from cvpipe.tasks.serving.base import ServedTask


def append_detections(rows: dict[str, list], det: dict[str, np.ndarray], scale: float, class_names: list[str]) -> None:
    """One image's boxes (back on the caller's pixel grid), scores, labels and class names as row cells."""
    rows["boxes"].append((det["boxes"].astype(np.float64) / scale).tolist())
    rows["scores"].append(det["scores"].astype(np.float64).tolist())
    rows["labels"].append(det["labels"].astype(np.int64).tolist())
    rows["class_names"].append([class_names[i] for i in det["labels"]])


class DetectionServing(ServedTask):
    serving_params: ClassVar[dict[str, Any]] = {"score_threshold": -1.0, "nms_iou_threshold": -1.0,
                                                "max_detections": -1}
    with_masks = False  # instance masks in the targets and the answers

    def serve(self, outputs: list[np.ndarray], settings: Callable[[str], Any], *, image_size: tuple[int, int],
              input_size: tuple[int, int], scales: list[float], class_names: list[str],
              meta: dict[str, Any]) -> pd.DataFrame:
        iou = settings("nms_iou_threshold") if meta.get("uses_nms", True) else None
        dets = select_detections(outputs[0], outputs[1], score_threshold=float(settings("score_threshold")),
                                 iou_threshold=None if iou is None else float(iou),
                                 max_detections=int(settings("max_detections")))
        rows: dict[str, list] = {"boxes": [], "scores": [], "labels": [], "class_names": []}
        for det, scale in zip(dets, scales):
            append_detections(rows, det, scale, class_names)
        return pd.DataFrame(rows)

    def prediction_writer(self, out_dir: Path, class_names: list[str], *, overlays: bool) -> Any:
        from cvpipe.prediction_writers import DetectionWriter

        return DetectionWriter(out_dir, class_names, overlays=overlays, with_masks=self.with_masks)

    def output_schema(self) -> Any:
        from mlflow.types.schema import Array, ColSpec, DataType, Schema

        return Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                       ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "class_names")])
