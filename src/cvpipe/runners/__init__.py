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

from cvpipe.errors import ConfigError

RUNNERS = {
    "classification": "cvpipe.runners.classification",
    "detection": "cvpipe.runners.detection",
    "segmentation": "cvpipe.runners.segmentation",
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


def runner_for(task: str) -> ModuleType:
    if task not in RUNNERS:
        raise ConfigError(f"params.yaml: task {task!r} has no runner; supported: {sorted(RUNNERS)}")
    return importlib.import_module(RUNNERS[task])
