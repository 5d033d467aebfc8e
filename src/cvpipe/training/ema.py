"""Exponential moving average of a model's weights (``train.ema_decay``), the weights YOLOv5+, DETR variants and
timm evaluate and ship.

After every optimizer step t (1, 2, ...), for each floating-point tensor v of the model's state (parameters and
BatchNorm running statistics):

    d_t = min(decay, (1 + t) / (10 + t))          TensorFlow's num_updates warm-up: early averages forget fast
    ē_t = d_t · ē_{t−1} + (1 − d_t) · v_t         ē_0 = v_0

Integer buffers (BatchNorm's step counter) are copied. The average smooths the last ~1 / (1 − decay) steps of
the noisy end of training; validation, the checkpoint's ``model`` entry and model.pt then hold ē, the raw
weights stay with the optimizer (checkpoint entry ``ema_source``) so a resumed run continues both.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """The averaged copy ``module`` (eval mode, no gradients) of the model given at construction."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def factor(self) -> float:
        """d_t of the module docstring for the next update."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.factor()
        source = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = source[name].detach()
            if average.dtype.is_floating_point:
                average.mul_(d).add_(value.to(average.dtype), alpha=1.0 - d)
            else:
                average.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
