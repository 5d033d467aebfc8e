"""A compact ResNet-style image classifier, built with ``num_classes`` and random init.

Layout: Normalize → 3×3 stem (stride ``stem_stride``) → ``len(widths)`` stages of torchvision ``BasicBlock``s,
each stage after the first halving the resolution → global average pool → linear head.
Input float32 [B, 3, H, W] in 0..255 (any H, W ≥ 8); output logits [B, num_classes].
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import Conv2dNormActivation

from cvpipe.models.preprocess import Normalize


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    layers = [BasicBlock(in_ch, out_ch, stride, downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 32,
                 num_stages: int = 3, blocks_per_stage: int = 1, stem_stride: int = 2) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(num_stages)]
        self.normalize = Normalize(mean, std)
        self.stem = Conv2dNormActivation(3, width, kernel_size=3, stride=stem_stride)
        stages, in_ch = [], width
        for i, ch in enumerate(widths):
            stages.append(_stage(in_ch, ch, blocks_per_stage, stride=1 if i == 0 else 2))
            in_ch = ch
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))  # [B, C, H/2^k, W/2^k]
        return self.head(torch.flatten(self.pool(x), 1))  # [B, num_classes]
