"""Models and criteria from their registry entries: the layer above ``models/`` and ``losses/`` (neither imports
this module, so their dependency runs one way: a loss may use its model's geometry, never the reverse)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from cvpipe.config import checked_kwargs
from cvpipe.models.weights import load_pretrained
from cvpipe.registry import architecture, resolve


def build_model(task: str, train: Any, **data_facts: Any) -> nn.Module:
    """The architecture ``train.arch`` of ``task``, built with ``data_facts`` (num_classes, mean, std and the
    task's extras) plus ``train.model``; random init, then ``train.pretrained`` when set."""
    builder = resolve(architecture(train.arch, task).model)
    kwargs = checked_kwargs(builder, train.model, f"models.<name>.train.model ({train.arch})")
    model = builder(**data_facts, **kwargs)
    if train.pretrained:
        load_pretrained(model, train.pretrained)
    return model


def build_criterion(task: str, train: Any, **data_facts: Any) -> nn.Module:
    """The criterion of ``train.arch`` with ``train.loss``; of ``data_facts`` (num_classes, ...) it gets the ones
    its signature takes (SSD's MultiBox loss reads the class count from the outputs)."""
    criterion = resolve(architecture(train.arch, task).loss)
    accepted = inspect.signature(criterion).parameters
    kwargs = checked_kwargs(criterion, train.loss, f"models.<name>.train.loss ({train.arch})")
    return criterion(**{k: v for k, v in data_facts.items() if k in accepted}, **kwargs)
