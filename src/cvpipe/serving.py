"""The registered model: an MLflow pyfunc that wraps the exported ONNX file with its pre- and post-processing.

``mlflow.pyfunc.load_model("models:/cvpipe-<model>@champion").predict(images)`` takes

- ``images``: uint8 [N, H, W, 3] RGB, any H × W (one size per call); or, for REST clients, a DataFrame with a
  column ``image`` holding base64-encoded JPEG/PNG/... files, any sizes mixed in one request (``mlflow models
  serve``: ``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}``). Images that are not
  already at the model's input size are letterboxed like the prepare stage (longer side scaled to the size, pad
  right and bottom with grey 114), classifier crops are resized to the crop size; boxes and masks are mapped
  back to each image's own pixel grid.

and returns, per task (thresholds are the tuned ones stored in the ONNX metadata; ``params`` overrides them; the
post-processing is the task's ``serve`` in :mod:`cvpipe.tasks`):

- classification: a DataFrame, one row per image: ``label`` (0-based class), ``class_name``, ``score`` (max
  softmax probability), ``accepted`` (score ≥ the tuned reject threshold).
- detection: a DataFrame, one row per image: ``boxes`` (list of [x1, y1, x2, y2] in input pixels), ``scores``,
  ``labels`` (0-based), ``class_names``; after the shared score filter, class-wise NMS and detection cap
  (:mod:`cvpipe.postprocess.detections`).
- segmentation: int64 [N, H, W] label maps (0 = background, k = class k), after the tuned mask threshold and
  component cleaning; for encoded images (sizes may differ) a DataFrame, one row per image: ``height``,
  ``width``, ``label_map_png`` (the label map as a base64 8- or 16-bit greyscale PNG).
- instance_segmentation: the detection columns plus ``masks``: one COCO RLE ({"size": [H, W], "counts": str},
  decode with ``pycocotools.mask.decode``) per instance on the input's pixel grid, after NMS and the YOLACT mask
  assembly with the tuned mask threshold (:mod:`cvpipe.postprocess.instance_masks`).

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

class OnnxVisionModel(mlflow.pyfunc.PythonModel):
    """pyfunc over ``artifacts["onnx"]`` for one task (see the module docstring for input and output); the
    task's post-processing comes from its :class:`cvpipe.tasks.base.Task` in the registry."""

    def __init__(self) -> None:
        self.task_name = ""
        self.session: Any = None
        self.meta: dict[str, Any] = {}

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_onnx(context.artifacts["onnx"], task=context.model_config["task"])

    def load_onnx(self, path: str | Path, *, task: str) -> None:
        from cvpipe.export import onnx_metadata, onnx_session
        from cvpipe.registry import get_task

        self.task = get_task(task)
        self.task_name = task
        self.session = onnx_session(path)
        self.meta = onnx_metadata(self.session)
        shape = self.session.get_inputs()[0].shape  # [batch, 3, H, W]
        self.input_size = (int(shape[2]), int(shape[3]))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def setting(self, params: dict[str, Any] | None, key: str) -> Any:
        """A run-time override from ``params`` when given (not the -1 'unset' default), else the tuned value."""
        value = (params or {}).get(key)
        if value is None or (isinstance(value, (int, float)) and value < 0):
            return self.meta.get(key)
        return value

    # No type hints here on purpose: MLflow reads predict's hints as a schema and would override the signature.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        from cvpipe.export import run_onnx

        if isinstance(model_input, pd.DataFrame):
            return self.task.combine_served(self.predict_images(decode_column(model_input), params), encoded=True)
        images = _as_images(model_input)
        batch, scales = self.to_input(images)
        outputs = run_onnx(self.session, batch, batch_size=64)
        return self.task.serve(outputs, lambda key: self.setting(params, key), image_size=tuple(images.shape[1:3]),
                               input_size=self.input_size, scales=scales, class_names=self.class_names,
                               meta=self.meta)

    def predict_images(self, images: list[np.ndarray], params: dict[str, Any] | None = None) -> list[Any]:
        """One answer per image for images of any sizes (uint8 [H, W, 3] each): one ONNX batch at the input size,
        then the task's post-processing per image on its own grid. Each answer is what :meth:`predict` gives for
        that image alone (a one-row DataFrame, or a [1, H, W] label map)."""
        from cvpipe.export import run_onnx

        if not images:
            return []
        inputs = [self.to_input(image[None]) for image in images]
        outputs = run_onnx(self.session, np.concatenate([batch for batch, _ in inputs]), batch_size=64)
        return [self.task.serve([out[i:i + 1] for out in outputs], lambda key: self.setting(params, key),
                                image_size=tuple(image.shape[:2]), input_size=self.input_size, scales=scales,
                                class_names=self.class_names, meta=self.meta)
                for i, (image, (_, scales)) in enumerate(zip(images, inputs))]

    def to_input(self, images: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """uint8 [N, H, W, 3] → float32 [N, 3, S, S] at the model's size; the letterbox scale per image."""
        from PIL import Image

        height, width = self.input_size
        if images.shape[1:3] == (height, width):
            resized, scales = images, [1.0] * len(images)
        elif self.task.resize_for_serving() == "resize":
            resized = np.stack([np.asarray(Image.fromarray(im).resize((width, height), Image.BILINEAR))
                                for im in images])
            scales = [1.0] * len(images)
        else:
            from cvpipe.data.prepare import letterbox

            boxed = [letterbox(Image.fromarray(im), height) for im in images]
            resized, scales = np.stack([b[0] for b in boxed]), [b[1] for b in boxed]
        return np.ascontiguousarray(resized.transpose(0, 3, 1, 2), dtype=np.float32), scales


def _as_images(model_input: Any) -> np.ndarray:
    """The pyfunc input as uint8 [N, H, W, 3]; a ValueError naming the problem otherwise. Integer arrays in
    0..255 (what JSON ``{"inputs": ...}`` becomes in the scoring server) are taken as uint8."""
    images = np.asarray(model_input)
    if images.ndim == 3 and images.shape[-1] == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3] RGB, got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError(f"images must be uint8 0..255, got dtype {images.dtype}")
        images = images.astype(np.uint8)
    return images


IMAGE_COLUMN = "image"


def decode_column(frame: pd.DataFrame) -> list[np.ndarray]:
    """The ``image`` column's base64-encoded files (JPEG, PNG, ...; bytes also accepted) as upright uint8
    [H, W, 3] RGB arrays; a ValueError naming the row and the problem otherwise."""
    import base64
    import binascii

    from cvpipe.image_io import decode_image

    if IMAGE_COLUMN not in frame.columns:
        raise ValueError(f"a DataFrame input needs a column {IMAGE_COLUMN!r} of base64-encoded image files; "
                         f"got columns {list(frame.columns)}")
    images = []
    for row, value in enumerate(frame[IMAGE_COLUMN]):
        try:
            data = value if isinstance(value, (bytes, bytearray)) else base64.b64decode(str(value), validate=True)
            images.append(decode_image(bytes(data)))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"row {row} of column {IMAGE_COLUMN!r}: {exc}") from None
    return images


def signature(task: str) -> Any:
    """The task's output schema and its run-time threshold overrides. No input schema: the model takes two
    input forms (a uint8 tensor, or a DataFrame of base64 images) and MLflow enforces one schema only; the
    input is checked by :meth:`OnnxVisionModel.predict` with messages that name the problem."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from cvpipe.registry import get_task

    implementation = get_task(task)
    params = ParamSchema([ParamSpec(k, "double" if isinstance(v, float) else "long", v)
                          for k, v in implementation.serving_params.items()])
    return ModelSignature(inputs=None, outputs=implementation.output_schema(), params=params)


def pip_requirements() -> list[str]:
    """What the pyfunc imports at load and predict time, pinned to this environment's versions."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "onnxruntime", "numpy", "pandas", "pillow", "scipy",
                                                   "torch", "torchvision", "onnx", "tqdm")]
