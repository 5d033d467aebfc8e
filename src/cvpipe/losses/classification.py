"""Loss of the classifier (:mod:`cvpipe.models.classifier`): cross-entropy with label smoothing.

Notation: logits z [B, K], label y in 0..K-1, p = softmax(z), smoothing ε. The target distribution puts
1 − ε + ε/K on y and ε/K on every other class (Szegedy et al. 2016, "Rethinking the Inception architecture"):

    L = (1/B) Σ_b [ −(1 − ε) log p_{b, y_b} − (ε/K) Σ_k log p_{b, k} ]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassificationLoss(nn.Module):
    """logits [B, K] + labels int64 [B] → {"loss"} (a scalar tensor)."""

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)}
