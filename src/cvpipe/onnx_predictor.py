"""An exported ONNX model with its task's pre- and post-processing, on numpy arrays: what the registered pyfunc
(:mod:`cvpipe.serving`) and ``cvpipe predict`` run. Neither torch nor MLflow is imported here or by the task's
serving module, so ``cvpipe predict`` on an ``.onnx`` file or a model folder starts in about a second
(``tests/test_predict.py`` checks that torch stays unloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.onnx_inference import onnx_metadata, onnx_session, run_onnx
from cvpipe.registry import get_serving


class OnnxPredictor:
    """An exported model with its task's pre- and post-processing (the served model's behaviour, see
    :mod:`cvpipe.serving`); the post-processing comes from the task's torch-free serving class in the registry."""

    def __init__(self) -> None:
        self.task_name = ""
        self.session: Any = None
        self.meta: dict[str, Any] = {}

    def load_onnx(self, path: str | Path, *, task: str | None = None) -> None:
        """Open ``path``; its task from the ONNX metadata unless given (a ValueError when it says none)."""
        if task is not None:
            self.task = get_serving(task)  # an unknown task fails before the file is opened
        try:
            self.session = onnx_session(path)
            self.meta = onnx_metadata(self.session)
        except Exception as exc:  # onnxruntime's error classes are not public API; say what failed, and where
            raise ValueError(f"{path} is not a readable cvpipe ONNX model ({type(exc).__name__}: {exc})") from None
        task = self.meta.get("task") if task is None else task
        if not task:
            raise ValueError(f"{path} does not say its task (exported by an older cvpipe): re-run `dvc repro "
                             f"export@<model>`, or load it through the registry (models:/...)")
        self.task = get_serving(task)
        self.task_name = task
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

    def predict_input(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """The served answer for either input form (uint8 [N, H, W, 3], or a DataFrame of base64 files)."""
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
        then the task's post-processing per image on its own grid. Each answer is what :meth:`predict_input` gives
        for that image alone (a one-row DataFrame, or a [1, H, W] label map)."""
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
