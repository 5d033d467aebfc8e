"""The contract every detector follows, so training, evaluation, tuning and export treat them alike.

- Input: float32 images [B, 3, S, S], pixel values 0..255 (the model normalises internally).
- ``forward(images)`` returns a dict of raw head tensors (whatever the loss needs); all tensors, so the
  graph exports to ONNX.
- ``decode(outputs)`` turns them into dense candidates, also inside the graph:
  boxes [B, A, 4] xyxy in absolute pixels of the input, scores [B, A, K] class probabilities in 0..1
  (K foreground classes, no background column).
- ``uses_nms``: True for YOLO-style and SSD (class-wise NMS after decoding), False for DETR (one-to-one
  matching makes duplicates rare; keep queries above the score threshold).
- Targets for the losses: a list (one per image) of dicts with "boxes" [N_i, 4] float32 xyxy absolute
  pixels and "labels" [N_i] int64 class index 0..K-1. N_i may be 0.
- Losses return a dict of named terms plus "loss" (their weighted sum), like DETR's SetCriterion.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Detector(Protocol):
    num_classes: int
    uses_nms: bool

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...


class DecodedDetector(nn.Module):
    """Wraps a detector so ``forward`` returns (boxes [B, A, 4], scores [B, A, K]): the ONNX export graph."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.decode(self.detector(images))
