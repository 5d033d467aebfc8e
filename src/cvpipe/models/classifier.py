"""A compact ResNet-style image classifier, built with ``num_classes`` and random init.

Layout: Normalize → 3×3 stem (stride ``stem_stride``) → ``len(widths)`` stages of torchvision ``BasicBlock``s,
each stage after the first halving the resolution → global average pool → linear head.
Input float32 [B, 3, H, W] in 0..255 (any H, W ≥ 8); output logits [B, num_classes].

With ``backbone`` (a torchvision name, :mod:`cvpipe.models.backbones`) the stem and stages are replaced by that
network up to its stride-32 map (e.g. 1×1 on 32 px crops), which feeds the same pool and linear head; the input is
normalised with ImageNet's mean/std, and ``backbone_weights`` (path or URL of a torchvision state dict) starts it
pretrained. The parameters of ``self.backbone`` are what ``train.backbone_lr_factor`` scales (None by default).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import Conv2dNormActivation

from cvpipe.models.backbones import build_backbone, input_normalize


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    layers = [BasicBlock(in_ch, out_ch, stride, downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SmallResNet(nn.Module):
    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 32,
                 num_stages: int = 3, blocks_per_stage: int = 1, stem_stride: int = 2,
                 backbone: str | None = None, backbone_weights: str | None = None) -> None:
        super().__init__()
        self.normalize = input_normalize(backbone, mean, std)
        self.backbone = build_backbone(backbone, backbone_weights, strides=(32,))
        if self.backbone is not None:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(self.backbone.channels[-1], num_classes)
            return
        widths = [width * 2**i for i in range(num_stages)]
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
        if self.backbone is not None:
            x = self.backbone(self.normalize(x))[-1]  # [B, C, H/32, W/32]
        else:
            x = self.stages(self.stem(self.normalize(x)))  # [B, C, H/2^k, W/2^k]
        return self.head(torch.flatten(self.pool(x), 1))  # [B, num_classes]
