"""The task contract: what a vision task supplies to the generic stage engine (:mod:`cvpipe.engine`), to
serving (:mod:`cvpipe.serving`) and to promotion (:mod:`cvpipe.lifecycle.evaluation`).

The engine owns everything that is the same for every task: building the model and criterion from the
registry, the training loop and its checkpoints, saving and loading trained models with their typed config,
the report files, latency, ONNX export with its parity gate, MLflow outcomes. A task owns what differs:
which prepared arrays it reads, how a batch reaches the criterion, its validation metric, its test metrics
and figures, its tuning grid, its export graph and parity check, the post-processing of served outputs and
the per-image scorer of the promotion bootstrap.

Inputs everywhere are uint8 RGB images [N, H, W, 3] from the prepared arrays (``input_array``: "images" for
whole scenes, "crops" for classifier crops); models take float32 [B, 3, H, W] pixels 0..255
(:func:`cvpipe.models.preprocess.to_model_input`) and normalise inside.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cvpipe.device import Runtime, eval_mode
from cvpipe.tasks.serving.base import ServedTask


@dataclass
class StageOutcome:
    """Metrics (flat name → float) and files a stage produced, for MLflow."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Trained:
    """A trained model as the engine loads it: the network (CPU, eval mode), its typed model config as it was
    trained (``cvpipe.task_config``), and the data facts saved with it (class names, mean/std, input size,
    data hash)."""

    model: nn.Module
    config: Any
    meta: dict[str, Any]


@dataclass(frozen=True)
class TrainData:
    """What the training loop iterates: a dataset of (input, target) items and its collate function (None: the
    default, stacking tensors)."""

    dataset: Dataset
    collate: Callable[[list[Any]], Any] | None = None
    # (inputs, targets) → (inputs, targets), applied by the engine to each batch on the training device after the
    # move (batched augmentation); None: the dataset's own per-sample transforms are all there is
    device_augment: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]] | None = None


@dataclass
class Evaluation:
    """A task's test-split results: ``metrics`` (flat, numeric; the engine adds latency and writes them to
    metrics.json) and the files it wrote under the report folder's ``evaluate/``."""

    metrics: dict[str, float]
    artifacts: list[Path]


@dataclass
class Tuning:
    """The operating point: ``thresholds`` (→ thresholds.json, the ONNX metadata, the served defaults),
    ``report`` (→ tune.json: validation choice and its test figures) and the grid files under ``tune/``."""

    thresholds: dict[str, Any]
    report: dict[str, Any]
    artifacts: list[Path]


@dataclass
class Parity:
    """ONNX vs PyTorch: figures for export.json and the broken tolerances (empty = the gate passes)."""

    figures: dict[str, Any]
    problems: list[str]


class Task(ServedTask):
    """One vision task's side of the stage contract (see the module docstring); the serving part (``serve``,
    ``output_schema``, ``combine_served``, ``prediction_writer``, ``serving_params``) is inherited from the task's
    torch-free :class:`cvpipe.tasks.serving.base.ServedTask`."""

    name: ClassVar[str]
    input_array: ClassVar[str] = "images"  # prepared array the model reads
    meta_keys: ClassVar[tuple[str, ...]] = ("class_names", "mean", "std", "image_size", "data_hash")
    final_metrics: ClassVar[tuple[str, ...]]  # validation metrics of the last epoch reported as final_<name>
    onnx_outputs: ClassVar[tuple[str, ...]] = ("logits",)

    # -- model ------------------------------------------------------------------------------------------------
    def class_names(self, config: Any, meta: dict[str, Any]) -> list[str]:
        """The classes the model predicts (and reports metrics for)."""
        return list(meta["class_names"])

    def resolve_config(self, config: Any, meta: dict[str, Any]) -> Any:
        """``config`` with the values it leaves to the data (e.g. a detector's ``strides: auto``) fixed from the
        prepared data's ``meta``; training stores the result, so a trained model never resolves again."""
        return config

    def model_arguments(self, config: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """The data facts the architecture's builder is called with, beside ``train.model``."""
        return {"num_classes": len(meta["class_names"]), "mean": meta["mean"], "std": meta["std"]}

    def criterion_arguments(self, config: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """The data facts offered to the criterion, beside ``train.loss``."""
        return {"num_classes": len(self.class_names(config, meta))}

    def check_model(self, model: nn.Module, config: Any) -> None:
        """Raise a ConfigError when the built architecture cannot serve this task."""

    def graph(self, model: nn.Module) -> nn.Module:
        """What one inference runs, as exported to ONNX and timed for latency (default: the model itself)."""
        return model

    # -- train --------------------------------------------------------------------------------------------------
    @abstractmethod
    def train_data(self, prepared: Path, config: Any) -> TrainData:
        """The augmented training split."""

    @abstractmethod
    def validator(self, prepared: Path, config: Any, runtime: Runtime) -> Callable[[nn.Module], dict[str, float]]:
        """model → validation metrics, run after every epoch."""

    # -- evaluate, tune, export ----------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, trained: Trained, model: nn.Module, prepared: Path, runtime: Runtime,
                 out_dir: Path) -> Evaluation:
        """Test-split metrics, tables and figures (files under ``out_dir``); ``model`` is on ``runtime``."""

    @abstractmethod
    def tune(self, trained: Trained, model: nn.Module, tune: Any, prepared: Path, runtime: Runtime,
             out_dir: Path) -> Tuning:
        """Choose the operating point on validation with the grid ``tune``; report it on test."""

    def onnx_metadata(self, trained: Trained) -> dict[str, Any]:
        """Facts stored in the ONNX file beside the thresholds (class names, input/output layout)."""
        return {"class_names": self.class_names(trained.config, trained.meta), "input": "float32 [B,3,H,W] 0..255"}

    @abstractmethod
    def parity(self, trained: Trained, graph: nn.Module, session: Any, inputs: torch.Tensor, prepared: Path,
               thresholds: dict[str, Any], tolerances: Any) -> Parity:
        """Compare the ONNX session with ``graph`` on ``inputs`` (test images) after the task's post-processing."""

    # -- serving and promotion -----------------------------------------------------------------------------------
    @abstractmethod
    def scorer(self, pyfunc: Any, metric: str, prepared: Path) -> Any:
        """A :class:`cvpipe.lifecycle.bootstrap.Scorer` of ``pyfunc``'s per-image results on the test split."""

    def init_arguments(self, config: Any, prepared: Path) -> dict[str, Any]:
        """Data facts the architecture's builder takes for its initialisation only (e.g. a class prior measured
        on the training split); a trained model is rebuilt without them, its weights replace the init."""
        return {}


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as indented JSON (creating folders); returns the path, for artifact lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def latency_ms(model: nn.Module, example: torch.Tensor, runtime: Runtime, runs: int) -> dict[str, float]:
    """p50/p95 wall time in ms of one forward pass on ``example`` (after warm-up)."""
    times = []
    with eval_mode(model):
        x = runtime.prepare_input(example)
        for i in range(runs + 3):
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            with runtime.autocast():
                model(x)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def numeric(report: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a report (booleans as 0/1), as MLflow metrics."""
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, str)}
