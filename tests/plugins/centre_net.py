"""A tiny extra detector for the registry test: one stride-8 grid, each cell predicts K class logits and its
distances to the box sides (FCOS-style, without objectness or FPN). Follows the detector contract of
:mod:`cvpipe.models.detector`: ``forward`` → raw tensors, ``decode`` → boxes [B, A, 4] xyxy px and scores
[B, A, K] = σ(class logits); ``uses_nms`` True.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from cvpipe.models.preprocess import Normalize

STRIDE = 8


class CentreNet(nn.Module):
    uses_nms = True

    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(*(Conv2dNormActivation(c_in, c_out, kernel_size=3, stride=2)
                                    for c_in, c_out in ((3, width), (width, 2 * width), (2 * width, 2 * width))))
        self.cls = nn.Conv2d(2 * width, num_classes, 1)
        self.box = nn.Conv2d(2 * width, 4, 1)
        nn.init.constant_(self.cls.bias, -4.0)  # σ ≈ 0.02: background does not swamp the first steps

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.body(self.normalize(images))  # [B, C, S/8, S/8]
        height, width = feature.shape[-2:]
        ys = (torch.arange(height, device=images.device, dtype=torch.float32) + 0.5) * STRIDE
        xs = (torch.arange(width, device=images.device, dtype=torch.float32) + 0.5) * STRIDE
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return {"cls_logits": self.cls(feature).flatten(2).transpose(1, 2),  # [B, A, K]
                "box_deltas": self.box(feature).flatten(2).transpose(1, 2),  # [B, A, 4] log(l, t, r, b / stride)
                "points": torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)}  # [A, 2]

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        distances = torch.exp(outputs["box_deltas"].clamp(max=6.0)) * STRIDE
        points = outputs["points"]
        boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
        return boxes, torch.sigmoid(outputs["cls_logits"])


def build_centre_net(num_classes: int, mean: list[float], std: list[float], *, width: int = 8) -> CentreNet:
    return CentreNet(num_classes=num_classes, mean=mean, std=std, width=width)
