"""Per-task runners: what the train/evaluate/tune/export stages do for a model of that task.

A runner module exposes ``train``, ``evaluate``, ``tune`` and ``export``; each reads prepared arrays
and earlier outputs, writes its files into the model and report folders given by the stage, and returns
a :class:`StageOutcome` that the stage logs to MLflow. Stages stay generic: they pick the runner by
``models.<name>.task``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cvpipe.errors import ConfigError

if TYPE_CHECKING:
    import torch

RUNNERS = {
    "classification": "cvpipe.runners.classification",
    "detection": "cvpipe.runners.detection",
    "segmentation": "cvpipe.runners.segmentation",
    "instance_segmentation": "cvpipe.runners.instance_segmentation",
}


@dataclass
class StageOutcome:
    """Metrics (flat name → float) and files a stage produced, for MLflow."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as indented JSON (creating folders); returns the path, for artifact lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def save_trained(model: "torch.nn.Module", history: list[dict[str, float]], *, resumed_from_epoch: int,
                 model_dir: Path, report_dir: Path, train_config: dict, meta: dict, meta_keys: tuple[str, ...],
                 final_metric: str) -> StageOutcome:
    """What every train stage writes: model.pt (CPU weights, the train config, the data facts it needs to be
    rebuilt) and training.csv (the full history, epochs restored from a checkpoint included; a DVC plot)."""
    import pandas as pd
    import torch

    report_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(history).to_csv(report_dir / "training.csv", index=False)
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "train": train_config,
                "meta": {k: meta[k] for k in meta_keys}}, model_dir / "model.pt")
    final = history[-1]
    return StageOutcome(metrics={"final_train_loss": final["train_loss"],
                                 f"final_{final_metric}": final.get(final_metric, 0.0),
                                 "resumed_from_epoch": float(resumed_from_epoch)},
                        artifacts=[model_dir / "model.pt", report_dir / "training.csv"])


def export_latencies(model: "torch.nn.Module", session: object, example: "torch.Tensor", runs: int) -> dict[str, float]:
    """p50/p95 ms of one input through the PyTorch model on the CPU and through the onnxruntime session."""
    from cvpipe.device import CPU
    from cvpipe.export import onnx_latency_ms
    from cvpipe.tasks.classification import latency_ms

    torch_lat = latency_ms(model, example, CPU, runs)
    onnx_lat = onnx_latency_ms(session, example.numpy(), runs)
    return {"torch_latency_ms_p50": torch_lat["p50"], "torch_latency_ms_p95": torch_lat["p95"],
            "onnx_latency_ms_p50": onnx_lat["p50"], "onnx_latency_ms_p95": onnx_lat["p95"]}


def runner_for(task: str) -> ModuleType:
    if task not in RUNNERS:
        raise ConfigError(f"params.yaml: task {task!r} has no runner; supported: {sorted(RUNNERS)}")
    return importlib.import_module(RUNNERS[task])
