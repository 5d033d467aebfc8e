"""Serving a classifier: softmax over the logits, arg-max class, accepted when its probability reaches the
tuned reject threshold; crops of another size are resized (as prepare's object crops), not letterboxed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from cvpipe.tasks.serving.base import ServedTask


class ClassificationServing(ServedTask):
    serving_params: ClassVar[dict[str, Any]] = {"reject_threshold": -1.0}

    def resize_for_serving(self) -> str:
        return "resize"  # crops: plain resize, as the prepare stage's object crops

    def serve(self, outputs: list[np.ndarray], settings: Callable[[str], Any], *, image_size: tuple[int, int],
              input_size: tuple[int, int], scales: list[float], class_names: list[str],
              meta: dict[str, Any]) -> pd.DataFrame:
        from scipy.special import softmax

        probs = softmax(outputs[0], axis=1)
        labels, scores = probs.argmax(axis=1), probs.max(axis=1)
        threshold = settings("reject_threshold") or 0.0
        return pd.DataFrame({"label": labels.astype(np.int64), "class_name": [class_names[i] for i in labels],
                             "score": scores.astype(np.float64), "accepted": scores >= threshold})

    def prediction_writer(self, out_dir: Path, class_names: list[str], *, overlays: bool) -> Any:
        from cvpipe.prediction_writers import ClassificationWriter

        return ClassificationWriter(out_dir, class_names, overlays=overlays)

    def output_schema(self) -> Any:
        from mlflow.types.schema import ColSpec, DataType, Schema

        return Schema([ColSpec(DataType.long, "label"), ColSpec(DataType.string, "class_name"),
                       ColSpec(DataType.double, "score"), ColSpec(DataType.boolean, "accepted")])
