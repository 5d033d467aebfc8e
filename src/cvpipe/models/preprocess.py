"""The one preprocessing step shared by PyTorch evaluation and the ONNX path.

Models take float32 [B, 3, H, W] pixel values in 0..255 and normalise inside the network
(:class:`Normalize`), so an exported graph needs nothing but this layout change.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (prepared arrays) → float32 [B, 3, H, W] in 0..255."""
    tensor = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    return tensor.permute(0, 3, 1, 2).float().contiguous()


class Normalize(nn.Module):
    """(x / 255 - mean) / std per channel, with mean/std of the train split stored as buffers."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
