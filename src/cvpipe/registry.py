"""The one place that maps params names to code: task names to their :class:`cvpipe.tasks.base.Task` and typed
config, architecture names (``models.<name>.train.arch``) to their model builder and criterion.

Entries are ``"module:attribute"`` strings, imported only when used, so reading params (and failing on a bad
one) never pays for torch. Adding an architecture of an existing task is one model file, one loss file and
one line in :data:`ARCHITECTURES`; adding a task is one task file, its torch-free serving file
(``cvpipe/tasks/serving/``), its config classes and one line in :data:`TASKS`. Nothing else dispatches on task or
architecture names.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cvpipe.errors import ConfigError


@dataclass(frozen=True)
class TaskEntry:
    implementation: str  # "module:Class" of the Task
    config: str  # "module:Class" of the typed models.<name> section
    serving: str  # "module:Class" of its torch-free serving side (a base class of the Task)


@dataclass(frozen=True)
class Architecture:
    task: str  # the task whose contract the model follows
    model: str  # "module:callable" (num_classes, mean, std, **train.model) → nn.Module
    loss: str  # "module:callable" (**train.loss, num_classes when it takes it) → criterion returning named terms


TASKS: dict[str, TaskEntry] = {
    "classification": TaskEntry("cvpipe.tasks.classification:ClassificationTask", "cvpipe.task_config:ClassifierConfig",
                                "cvpipe.tasks.serving.classification:ClassificationServing"),
    "detection": TaskEntry("cvpipe.tasks.detection:DetectionTask", "cvpipe.task_config:DetectorConfig",
                           "cvpipe.tasks.serving.detection:DetectionServing"),
    "segmentation": TaskEntry("cvpipe.tasks.segmentation:SegmentationTask", "cvpipe.task_config:SegmenterConfig",
                              "cvpipe.tasks.serving.segmentation:SegmentationServing"),
    "instance_segmentation": TaskEntry("cvpipe.tasks.instance_segmentation:InstanceSegmentationTask",
                                       "cvpipe.task_config:InstanceSegmenterConfig",
                                       "cvpipe.tasks.serving.instance_segmentation:InstanceSegmentationServing"),
}

ARCHITECTURES: dict[str, Architecture] = {
    "small_resnet": Architecture("classification", "cvpipe.models.classifier:SmallResNet",
                                 "cvpipe.losses.classification:ClassificationLoss"),
    "yolo": Architecture("detection", "cvpipe.models.yolo:build_yolo", "cvpipe.losses.yolo:YoloLoss"),
    "ssd": Architecture("detection", "cvpipe.models.ssd:build_ssd", "cvpipe.losses.ssd:SSDMultiBoxLoss"),
    "detr": Architecture("detection", "cvpipe.models.detr:build_detr", "cvpipe.losses.detr:build_criterion"),
    "retinanet": Architecture("detection", "cvpipe.models.zoo_fpn:build_retinanet",
                              "cvpipe.losses.retinanet:RetinaNetLoss"),
    "fcos": Architecture("detection", "cvpipe.models.zoo_fpn:build_fcos", "cvpipe.losses.fcos:FCOSLoss"),
    "ssdlite320": Architecture("detection", "cvpipe.models.zoo_ssd:build_ssdlite320",
                               "cvpipe.losses.ssd:SSDMultiBoxLoss"),
    "ssd300_vgg16": Architecture("detection", "cvpipe.models.zoo_ssd:build_ssd300_vgg16",
                                 "cvpipe.losses.ssd:SSDMultiBoxLoss"),
    "unet": Architecture("segmentation", "cvpipe.models.unet:build_unet", "cvpipe.losses.segmentation:SegmentationLoss"),
    "lraspp_mobilenet_v3": Architecture("segmentation", "cvpipe.models.zoo_segmentation:build_lraspp_mobilenet_v3",
                                        "cvpipe.losses.segmentation:SegmentationLoss"),
    "deeplabv3": Architecture("segmentation", "cvpipe.models.zoo_segmentation:build_deeplabv3",
                              "cvpipe.losses.segmentation:SegmentationLoss"),
    "yolact": Architecture("instance_segmentation", "cvpipe.models.yolact:build_yolact",
                           "cvpipe.losses.yolact:YolactLoss"),
}


def resolve(reference: str) -> Any:
    """The object a ``"module:attribute"`` entry names."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def task_entry(task: str, where: str = "task") -> TaskEntry:
    if task not in TASKS:
        raise ConfigError(f"params.yaml: {where}.task {task!r} is unknown; choose one of {sorted(TASKS)}")
    return TASKS[task]


def task_config_class(task: str, where: str = "task") -> type:
    return resolve(task_entry(task, where).config)


def get_task(task: str) -> Any:
    """The :class:`cvpipe.tasks.base.Task` implementation of ``task`` (an instance)."""
    return resolve(task_entry(task).implementation)()


def get_serving(task: str) -> Any:
    """The torch-free serving side of ``task`` (a :class:`cvpipe.tasks.serving.base.ServedTask` instance), for the
    served model and ``cvpipe predict``."""
    return resolve(task_entry(task).serving)()


def architecture(arch: str, task: str, where: str = "models.<name>.train") -> Architecture:
    """The registered ``arch``, checked to follow ``task``'s contract."""
    if arch not in ARCHITECTURES:
        candidates = sorted(a for a, entry in ARCHITECTURES.items() if entry.task == task)
        raise ConfigError(f"params.yaml: {where}.arch {arch!r} is unknown for task {task!r}; choose one of {candidates}")
    entry = ARCHITECTURES[arch]
    if entry.task != task:
        raise ConfigError(f"params.yaml: {where}.arch {arch!r} is a {entry.task} architecture, not {task}")
    return entry


def code_modules(task: str, arch: str) -> list[str]:
    """The modules a model of ``task``/``arch`` is built from (the roots of its code fingerprint)."""
    entry = architecture(arch, task)
    return [reference.partition(":")[0] for reference in (task_entry(task).implementation, entry.model, entry.loss)]


@contextlib.contextmanager
def registered(name: str, entry: Architecture) -> Iterator[None]:
    """``entry`` registered as architecture ``name`` for the duration of the block (plug-ins, tests)."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is already registered")
    ARCHITECTURES[name] = entry
    try:
        yield
    finally:
        del ARCHITECTURES[name]
