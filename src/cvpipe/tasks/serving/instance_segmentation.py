"""Serving an instance segmenter: the detector's selection, then YOLACT's mask assembly in numpy
(:mod:`cvpipe.postprocess.instance_masks_numpy`) with the tuned mask threshold; masks as COCO RLE on each
caller's pixel grid."""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from cvpipe.postprocess.instances import decode_rles, dense_from_arrays, select_instances
from cvpipe.tasks.serving.detection import DetectionServing, append_detections


class InstanceSegmentationServing(DetectionServing):
    serving_params: ClassVar[dict[str, Any]] = {"score_threshold": -1.0, "nms_iou_threshold": -1.0,
                                                "max_detections": -1, "mask_threshold": -1.0}
    with_masks = True

    def serve(self, outputs: list[np.ndarray], settings: Callable[[str], Any], *, image_size: tuple[int, int],
              input_size: tuple[int, int], scales: list[float], class_names: list[str],
              meta: dict[str, Any]) -> pd.DataFrame:
        from cvpipe.data.masks import encode_mask
        from cvpipe.postprocess.masks import unletterbox

        found = select_instances(dense_from_arrays(*outputs, image_size=input_size),
                                 score_threshold=float(settings("score_threshold")),
                                 iou_threshold=float(settings("nms_iou_threshold")),
                                 max_detections=int(settings("max_detections")),
                                 mask_threshold=float(settings("mask_threshold")), torch_free=True)
        rows: dict[str, list] = {"boxes": [], "scores": [], "labels": [], "class_names": [], "masks": []}
        for inst, scale in zip(found, scales):
            rles = inst["segmentations"]
            if tuple(image_size) != tuple(input_size):  # masks back onto the caller's grid, like the label maps
                rles = [encode_mask(unletterbox(m.astype(np.uint8), scale, image_size) > 0)
                        for m in decode_rles(rles, input_size)]
            append_detections(rows, inst, scale, class_names)
            rows["masks"].append([{"size": [int(v) for v in r["size"]], "counts": r["counts"]} for r in rles])
        return pd.DataFrame(rows)

    def output_schema(self) -> Any:
        from mlflow.types.schema import Array, ColSpec, DataType, Object, Property, Schema

        rle = Object([Property("size", Array(DataType.long)), Property("counts", DataType.string)])
        return Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                       ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "class_names"),
                       ColSpec(Array(rle), "masks")])
