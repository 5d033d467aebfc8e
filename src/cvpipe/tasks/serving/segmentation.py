"""Serving a semantic segmenter: probabilities from the logits, the tuned mask threshold and component cleaning,
label maps back on each caller's pixel grid (int64 [N, H, W]; for encoded images, one base64 PNG per row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from cvpipe.postprocess.masks import labels_from_probabilities, probabilities_from_logits, unletterbox
from cvpipe.tasks.serving.base import ServedTask


class SegmentationServing(ServedTask):
    serving_params: ClassVar[dict[str, Any]] = {"mask_threshold": -1.0, "min_area": -1}

    def serve(self, outputs: list[np.ndarray], settings: Callable[[str], Any], *, image_size: tuple[int, int],
              input_size: tuple[int, int], scales: list[float], class_names: list[str],
              meta: dict[str, Any]) -> np.ndarray:
        labels = labels_from_probabilities(probabilities_from_logits(outputs[0]).astype(np.float32),
                                           threshold=settings("mask_threshold"),
                                           min_area=int(settings("min_area") or 0),
                                           fill_holes=bool(meta.get("fill_holes", False)))
        if all(s == 1.0 for s in scales) and labels.shape[1:] == tuple(image_size):
            return labels.astype(np.int64)
        return np.stack([unletterbox(m, scale, image_size) for m, scale in zip(labels, scales)]).astype(np.int64)

    def prediction_writer(self, out_dir: Path, class_names: list[str], *, overlays: bool) -> Any:
        from cvpipe.prediction_writers import SegmentationWriter

        return SegmentationWriter(out_dir, class_names, overlays=overlays)

    def combine_served(self, answers: list[Any], *, encoded: bool) -> Any:
        """Label maps [N, H, W]; for encoded images (sizes may differ) one row per image with the label map as a
        base64 PNG (8-bit, 16-bit above 255 classes)."""
        if not encoded:
            return np.concatenate(answers) if answers else np.zeros((0, 0, 0), np.int64)
        import base64
        import io

        from PIL import Image

        rows = {"height": [], "width": [], "label_map_png": []}
        for answer in answers:
            labels = np.asarray(answer)[0]
            buffer = io.BytesIO()
            Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(buffer, "PNG")
            rows["height"].append(int(labels.shape[0]))
            rows["width"].append(int(labels.shape[1]))
            rows["label_map_png"].append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return pd.DataFrame(rows)

    def output_schema(self) -> Any:
        from mlflow.types.schema import Schema, TensorSpec

        return Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))])
