"""The serving part of the task contract (:class:`ServedTask`): everything the registered pyfunc and
``cvpipe predict`` need from a task, on numpy arrays from onnxruntime. No torch here or in the modules that
implement it: a test imports them and checks that torch stays unloaded."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np


class ServedTask(ABC):
    """How one task's ONNX outputs become the served answer."""

    serving_params: ClassVar[dict[str, Any]] = {}  # run-time overrides of the pyfunc and their "unset" defaults

    @abstractmethod
    def serve(self, outputs: list[np.ndarray], settings: Callable[[str], Any], *, image_size: tuple[int, int],
              input_size: tuple[int, int], scales: list[float], class_names: list[str],
              meta: dict[str, Any]) -> Any:
        """The pyfunc's answer for one batch: ONNX ``outputs`` post-processed with ``settings(key)`` (tuned
        thresholds or run-time overrides), mapped back to the caller's ``image_size`` (letterbox ``scales``)."""

    @abstractmethod
    def output_schema(self) -> Any:
        """The pyfunc's MLflow output schema."""

    def resize_for_serving(self) -> str:
        """How served images of another size reach the input size: "letterbox" (scenes) or "resize" (crops)."""
        return "letterbox"

    def combine_served(self, answers: list[Any], *, encoded: bool) -> Any:
        """One answer for a request from :meth:`serve`'s per-image answers (each for one image); ``encoded``: the
        request sent encoded files (sizes may differ). Default: the one-row DataFrames stacked."""
        import pandas as pd

        if not answers:
            return pd.DataFrame(columns=self.output_schema().input_names())
        return pd.concat(answers, ignore_index=True)

    @abstractmethod
    def prediction_writer(self, out_dir: Path, class_names: list[str], *, overlays: bool) -> Any:
        """The :class:`cvpipe.prediction_writers.PredictionWriter` that ``cvpipe predict`` fills with this task's
        per-image answers."""
