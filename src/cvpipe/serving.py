"""The registered model: an MLflow pyfunc that wraps the exported ONNX file with its pre- and post-processing.

``mlflow.pyfunc.load_model("models:/cvpipe-<model>@champion").predict(images)`` takes

- ``images``: uint8 [N, H, W, 3] RGB, any H × W (one size per call). Images that are not already at the
  model's input size are letterboxed like the prepare stage (longer side scaled to the size, pad right and
  bottom with grey 114), classifier crops are resized to the crop size; boxes and masks are mapped back to
  the caller's pixel grid.

and returns, per task (thresholds are the tuned ones stored in the ONNX metadata; ``params`` overrides them):

- classification: a DataFrame, one row per image: ``label`` (0-based class), ``class_name``, ``score`` (max
  softmax probability), ``accepted`` (score ≥ the tuned reject threshold).
- detection: a DataFrame, one row per image: ``boxes`` (list of [x1, y1, x2, y2] in input pixels), ``scores``,
  ``labels`` (0-based), ``class_names``; after the shared score filter, class-wise NMS and detection cap
  (:mod:`cvpipe.postprocess.detections`).
- segmentation: int64 [N, H, W] label maps (0 = background, k = class k), after the tuned mask threshold and
  component cleaning.
- instance_segmentation: the detection columns plus ``masks``: one COCO RLE ({"size": [H, W], "counts": str},
  decode with ``pycocotools.mask.decode``) per instance on the input's pixel grid, after NMS and the YOLACT mask
  assembly with the tuned mask threshold (:mod:`cvpipe.postprocess.instance_masks`).
- any other task (no post-processing here yet): the ONNX graph's raw outputs, {output name: array}, for images
  at the model's input size.

The model is logged from code (:mod:`cvpipe.serving_model`, MLflow's models-from-code: no pickle) with the task
in its ``model_config``, and ships the ``cvpipe`` package as ``code_paths``, so a plain
``mlflow.pyfunc.load_model`` works in an environment that has the pip requirements but not this repository.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TASKS = ("classification", "detection", "segmentation", "instance_segmentation")
# Run-time overrides accepted in ``predict(..., params=...)`` and their signature defaults (None: use the
# tuned value from the ONNX metadata).
PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"reject_threshold": -1.0},
    "detection": {"score_threshold": -1.0, "nms_iou_threshold": -1.0, "max_detections": -1},
    "segmentation": {"mask_threshold": -1.0, "min_area": -1},
    "instance_segmentation": {"score_threshold": -1.0, "nms_iou_threshold": -1.0, "max_detections": -1,
                              "mask_threshold": -1.0},
}


class OnnxVisionModel(mlflow.pyfunc.PythonModel):
    """pyfunc over ``artifacts["onnx"]`` for one task (see the module docstring for input and output)."""

    def __init__(self) -> None:
        self.task = ""
        self.session: Any = None
        self.meta: dict[str, Any] = {}

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_onnx(context.artifacts["onnx"], task=context.model_config["task"])

    def load_onnx(self, path: str | Path, *, task: str) -> None:
        from cvpipe.export import onnx_metadata, onnx_session

        if not task:
            raise ValueError("task must be a non-empty task name")
        self.task = task
        self.session = onnx_session(path)
        self.meta = onnx_metadata(self.session)
        shape = self.session.get_inputs()[0].shape  # [batch, 3, H, W]
        self.input_size = (int(shape[2]), int(shape[3]))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def _setting(self, params: dict[str, Any] | None, key: str) -> Any:
        """A run-time override from ``params`` when given (not the -1 'unset' default), else the tuned value."""
        value = (params or {}).get(key)
        if value is None or (isinstance(value, (int, float)) and value < 0):
            return self.meta.get(key)
        return value

    # No type hints here on purpose: MLflow reads predict's hints as a schema and would override the signature.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        images = _as_images(model_input)
        from cvpipe.export import run_onnx

        if self.task not in TASKS:
            batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
            names = [o.name for o in self.session.get_outputs()]
            return dict(zip(names, run_onnx(self.session, batch, batch_size=64)))
        batch, scales = self.to_input(images)
        outputs = run_onnx(self.session, batch, batch_size=64)
        if self.task == "classification":
            return self._classify(outputs[0], params)
        if self.task == "detection":
            return self._detect(outputs[0], outputs[1], scales, params)
        if self.task == "instance_segmentation":
            return self._instances(outputs, images.shape[1:3], scales, params)
        return self._segment(outputs[0], images.shape[1:3], scales, params)

    def to_input(self, images: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """uint8 [N, H, W, 3] → float32 [N, 3, S, S] at the model's size; the letterbox scale per image."""
        from PIL import Image

        height, width = self.input_size
        if images.shape[1:3] == (height, width):
            resized, scales = images, [1.0] * len(images)
        elif self.task == "classification":  # crops: plain resize, as the prepare stage's object crops
            resized = np.stack([np.asarray(Image.fromarray(im).resize((width, height), Image.BILINEAR))
                                for im in images])
            scales = [1.0] * len(images)
        else:
            from cvpipe.data.prepare import letterbox

            boxed = [letterbox(Image.fromarray(im), height) for im in images]
            resized, scales = np.stack([b[0] for b in boxed]), [b[1] for b in boxed]
        return np.ascontiguousarray(resized.transpose(0, 3, 1, 2), dtype=np.float32), scales

    def _classify(self, logits: np.ndarray, params: dict[str, Any] | None) -> pd.DataFrame:
        from scipy.special import softmax

        probs = softmax(logits, axis=1)
        labels = probs.argmax(axis=1)
        scores = probs.max(axis=1)
        threshold = self._setting(params, "reject_threshold") or 0.0
        names = self.class_names
        return pd.DataFrame({"label": labels.astype(np.int64), "class_name": [names[i] for i in labels],
                             "score": scores.astype(np.float64), "accepted": scores >= threshold})

    def _detect(self, boxes: np.ndarray, scores: np.ndarray, scales: list[float],
                params: dict[str, Any] | None) -> pd.DataFrame:
        from cvpipe.postprocess.detections import select_detections_numpy

        iou = self._setting(params, "nms_iou_threshold") if self.meta.get("uses_nms", True) else None
        dets = select_detections_numpy(boxes, scores, score_threshold=float(self._setting(params, "score_threshold")),
                                       iou_threshold=None if iou is None else float(iou),
                                       max_detections=int(self._setting(params, "max_detections")))
        rows: dict[str, list] = {"boxes": [], "scores": [], "labels": [], "class_names": []}
        for det, scale in zip(dets, scales):
            self._append_detections(rows, det, scale)
        return pd.DataFrame(rows)

    def _append_detections(self, rows: dict[str, list], det: dict[str, np.ndarray], scale: float) -> None:
        """One image's boxes (back on the caller's pixel grid), scores, labels and class names as row cells."""
        rows["boxes"].append((det["boxes"].astype(np.float64) / scale).tolist())
        rows["scores"].append(det["scores"].astype(np.float64).tolist())
        rows["labels"].append(det["labels"].astype(np.int64).tolist())
        rows["class_names"].append([self.class_names[i] for i in det["labels"]])

    def _instances(self, outputs: list[np.ndarray], size: tuple[int, int], scales: list[float],
                   params: dict[str, Any] | None) -> pd.DataFrame:
        from cvpipe.data.masks import encode_mask
        from cvpipe.tasks.instance_segmentation import decode_rles, dense_from_arrays, select_instances

        found = select_instances(dense_from_arrays(*outputs, image_size=self.input_size),
                                 score_threshold=float(self._setting(params, "score_threshold")),
                                 iou_threshold=float(self._setting(params, "nms_iou_threshold")),
                                 max_detections=int(self._setting(params, "max_detections")),
                                 mask_threshold=float(self._setting(params, "mask_threshold")))
        rows: dict[str, list] = {"boxes": [], "scores": [], "labels": [], "class_names": [], "masks": []}
        for inst, scale in zip(found, scales):
            rles = inst["segmentations"]
            if tuple(size) != tuple(self.input_size):  # masks back onto the caller's grid, like the label maps
                rles = [encode_mask(_unletterbox(m.astype(np.uint8), scale, size) > 0)
                        for m in decode_rles(rles, self.input_size)]
            self._append_detections(rows, inst, scale)
            rows["masks"].append([{"size": [int(v) for v in r["size"]], "counts": r["counts"]} for r in rles])
        return pd.DataFrame(rows)

    def _segment(self, logits: np.ndarray, size: tuple[int, int], scales: list[float],
                 params: dict[str, Any] | None) -> np.ndarray:
        from scipy.special import expit, softmax

        from cvpipe.tasks.segmentation import labels_from_probabilities

        logits = logits.astype(np.float64)
        probs = expit(logits) if logits.shape[1] == 1 else softmax(logits, axis=1)
        labels = labels_from_probabilities(probs.astype(np.float32), threshold=self._setting(params, "mask_threshold"),
                                           min_area=int(self._setting(params, "min_area") or 0),
                                           fill_holes=bool(self.meta.get("fill_holes", False)))
        if all(s == 1.0 for s in scales) and labels.shape[1:] == tuple(size):
            return labels.astype(np.int64)
        return np.stack([_unletterbox(m, scale, size) for m, scale in zip(labels, scales)]).astype(np.int64)


def _as_images(model_input: Any) -> np.ndarray:
    """The pyfunc input as uint8 [N, H, W, 3]; a ValueError naming the problem otherwise."""
    if isinstance(model_input, pd.DataFrame):
        raise ValueError("cvpipe models take a uint8 array [N, H, W, 3] of RGB images, not a DataFrame")
    images = np.asarray(model_input)
    if images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3] RGB, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 0..255, got dtype {images.dtype}")
    return images


def _unletterbox(labels: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """A label map on the letterboxed square back onto the original H × W grid (nearest neighbour)."""
    from PIL import Image

    height, width = size
    inner = labels[: max(1, round(height * scale)), : max(1, round(width * scale))]
    return np.asarray(Image.fromarray(inner.astype(np.int32)).resize((width, height), Image.NEAREST))


def output_schema(task: str) -> Any:
    """The pyfunc's output schema per task (MLflow does not infer nested lists from an example reliably); None for
    a task served as raw outputs."""
    from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

    if task == "classification":
        return Schema([ColSpec(DataType.long, "label"), ColSpec(DataType.string, "class_name"),
                       ColSpec(DataType.double, "score"), ColSpec(DataType.boolean, "accepted")])
    if task == "detection":
        return Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                       ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "class_names")])
    if task == "segmentation":
        return Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))])
    if task == "instance_segmentation":
        from mlflow.types.schema import Object, Property

        rle = Object([Property("size", Array(DataType.long)), Property("counts", DataType.string)])
        return Schema([ColSpec(Array(Array(DataType.double)), "boxes"), ColSpec(Array(DataType.double), "scores"),
                       ColSpec(Array(DataType.long), "labels"), ColSpec(Array(DataType.string), "class_names"),
                       ColSpec(Array(rle), "masks")])
    return None


def signature(task: str) -> Any:
    """Input uint8 [-1, -1, -1, 3], the task's output schema, and its run-time threshold overrides."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    params = ParamSchema([ParamSpec(k, "double" if isinstance(v, float) else "long", v)
                          for k, v in PARAM_DEFAULTS.get(task, {}).items()]) if task in PARAM_DEFAULTS else None
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=output_schema(task), params=params)


def pip_requirements() -> list[str]:
    """What the pyfunc imports at load and predict time, pinned to this environment's versions."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "onnxruntime", "numpy", "pandas", "pillow", "scipy",
                                                   "torch", "torchvision", "onnx", "tqdm")]
