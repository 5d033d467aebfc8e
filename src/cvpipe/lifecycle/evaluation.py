"""Score a registered model, as served, on the current prepared test split: per-image scores for the bootstrap.

The model is the registry's pyfunc (:mod:`cvpipe.serving`), so the numbers describe exactly what
``models:/<name>@champion`` returns, whatever split or input size the version was trained on: images at another
size are letterboxed by the pyfunc itself. What one bootstrap unit is (an object crop, a test image) and how it
is scored is the task's :meth:`cvpipe.tasks.base.Task.scorer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.lifecycle.bootstrap import Scorer
from cvpipe.config import check_promote_metric
from cvpipe.registry import get_task


def expected_class_names(task: str, prepared: Path, model: Any) -> list[str]:
    """The class names the current split's labels use, in the form this task's model reports them."""
    from cvpipe.data.prepare import load_meta

    names = list(load_meta(prepared)["class_names"])
    return ["foreground"] if model.meta.get("binary") else names


def test_inputs(task: str, prepared: Path) -> np.ndarray:
    """The test split's model inputs: classifier crops or whole images, uint8 [N, H, W, 3]."""
    from cvpipe.engine import model_inputs

    return np.asarray(model_inputs(get_task(task), prepared, "test"))


def scorer(pyfunc: Any, task: str, metric: str, prepared: Path) -> Scorer:
    """Run ``pyfunc`` (a loaded ``mlflow.pyfunc`` model) over the test split; a scorer of its per-image results."""
    check_promote_metric(task, metric)
    return get_task(task).scorer(pyfunc, metric, prepared)


def latency_ms(pyfunc: Any, task: str, prepared: Path, runs: int) -> float:
    """p50 ms of one ONNX session run on one test input (the graph only, as the export stage measures)."""
    from cvpipe.onnx_inference import onnx_latency_ms

    model = pyfunc.unwrap_python_model()
    batch, _ = model.to_input(test_inputs(task, prepared)[:1])
    return onnx_latency_ms(model.session, batch, runs)["p50"]
