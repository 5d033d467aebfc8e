"""The registered model: an MLflow pyfunc that wraps the exported ONNX file with its pre- and post-processing.

``mlflow.pyfunc.load_model("models:/cvpipe-<model>@champion").predict(images)`` takes

- ``images``: uint8 [N, H, W, 3] RGB, any H × W (one size per call); or, for REST clients, a DataFrame with a
  column ``image`` holding base64-encoded JPEG/PNG/... files, any sizes mixed in one request (``mlflow models
  serve``: ``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}``). Images that are not
  already at the model's input size are letterboxed like the prepare stage (longer side scaled to the size, pad
  right and bottom with grey 114), classifier crops are resized to the crop size; boxes and masks are mapped
  back to each image's own pixel grid.

and returns, per task (thresholds are the tuned ones stored in the ONNX metadata; ``params`` overrides them; the
post-processing is the task's ``serve`` in :mod:`cvpipe.tasks.serving`, numpy only):

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
  assembly with the tuned mask threshold (:mod:`cvpipe.postprocess.instance_masks_numpy`).

The model is logged from code (:mod:`cvpipe.serving_model`, MLflow's models-from-code: no pickle) with the task
in its ``model_config``, and ships the ``cvpipe`` package as ``code_paths``, so a plain
``mlflow.pyfunc.load_model`` works in an environment that has the pip requirements but not this repository.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow.pyfunc

from cvpipe.onnx_predictor import IMAGE_COLUMN, OnnxPredictor, decode_column  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


class OnnxVisionModel(OnnxPredictor, mlflow.pyfunc.PythonModel):
    """pyfunc over ``artifacts["onnx"]`` for one task (see the module docstring for input and output); the
    pre- and post-processing is :class:`cvpipe.onnx_predictor.OnnxPredictor`'s."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_onnx(context.artifacts["onnx"], task=context.model_config["task"])

    # No type hints here on purpose: MLflow reads predict's hints as a schema and would override the signature.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self.predict_input(model_input, params)


def signature(task: str) -> Any:
    """The task's output schema and its run-time threshold overrides. No input schema: the model takes two
    input forms (a uint8 tensor, or a DataFrame of base64 images) and MLflow enforces one schema only; the
    input is checked by :meth:`OnnxVisionModel.predict` with messages that name the problem."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from cvpipe.registry import get_serving

    implementation = get_serving(task)
    params = ParamSchema([ParamSpec(k, "double" if isinstance(v, float) else "long", v)
                          for k, v in implementation.serving_params.items()])
    return ModelSignature(inputs=None, outputs=implementation.output_schema(), params=params)


def pip_requirements() -> list[str]:
    """What the pyfunc imports at load and predict time, pinned to this environment's versions."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "onnxruntime", "numpy", "pandas", "pillow", "scipy",
                                                   "torch", "torchvision", "onnx", "tqdm")]
