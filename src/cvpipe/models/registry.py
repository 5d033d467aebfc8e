"""From a params architecture name to its builder and its loss: the one place that knows them all."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from cvpipe.config import checked_kwargs
from cvpipe.errors import ConfigError
from cvpipe.models.weights import load_pretrained


def _yolo() -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    from cvpipe.losses.yolo import YoloLoss
    from cvpipe.models.yolo import build_yolo

    return build_yolo, YoloLoss


def _ssd() -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    from cvpipe.losses.ssd import SSDMultiBoxLoss
    from cvpipe.models.ssd import build_ssd

    return build_ssd, SSDMultiBoxLoss


def _detr() -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    from cvpipe.losses.detr import build_criterion as build_detr_criterion
    from cvpipe.models.detr import build_detr

    return build_detr, build_detr_criterion


def _yolact() -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    from cvpipe.losses.yolact import YolactLoss
    from cvpipe.models.yolact import build_yolact

    return build_yolact, YolactLoss


# detectors and instance segmenters (a detector that also predicts masks: ``predicts_masks = True``)
DETECTORS: dict[str, Callable[[], tuple[Callable[..., nn.Module], Callable[..., nn.Module]]]] = {
    "yolo": _yolo, "ssd": _ssd, "detr": _detr, "yolact": _yolact,
}


def _lookup(arch: str) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module]]:
    if arch not in DETECTORS:
        raise ConfigError(f"params.yaml: detector arch {arch!r} is unknown; choose one of {sorted(DETECTORS)}")
    return DETECTORS[arch]()


def build_detector(arch: str, meta: dict[str, Any], kwargs: dict[str, Any], pretrained: str | None = None) -> nn.Module:
    """The detector ``arch`` for the prepared data's classes and statistics, random init unless ``pretrained``."""
    build, _ = _lookup(arch)
    model = build(len(meta["class_names"]), meta["mean"], meta["std"],
                  **checked_kwargs(build, kwargs, f"models.<name>.train.model ({arch})"))
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def build_criterion(arch: str, model: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    """The loss of ``arch`` with the weights from params (its defaults follow the paper)."""
    _, criterion = _lookup(arch)
    kwargs = checked_kwargs(criterion, kwargs, f"models.<name>.train.loss ({arch})")
    if arch == "ssd":
        return criterion(**kwargs)
    return criterion(num_classes=model.num_classes, **kwargs)
