"""A small anchor-free one-stage grid detector in the YOLOX / FCOS family, trained from scratch.

Why anchor-free: objects here are 16-46 px on 128 px images, one object per cell is the norm and the shapes
are roughly square, so anchors add hyper-parameters (sizes, ratios, IoU thresholds) and A× more outputs
without a benefit; YOLOX (Ge et al., 2021) showed anchor-free heads match anchor-based ones with fewer
outputs and a simpler export. Every grid cell predicts one box as distances to its sides (FCOS).

Layout: Normalize → stem (3×3, stride 2) → stages of [3×3 stride-2 conv + CSP block] down to the largest
stride → FPN top-down neck (1×1 laterals, nearest ×2 upsampling, add, 3×3 smoothing) → one head shared by all
levels, decoupled as in YOLOX: a classification tower → K class logits, and a regression tower → 4 box
parameters + 1 objectness logit. Default levels: strides 8 and 16 (16×16 and 8×8 cells at 128 px); an object
of 16-46 px spans 1-6 cells of one of them. Any input size S divisible by the largest stride works.

With ``backbone`` (a torchvision name, :mod:`cvpipe.models.backbones`) its taps at ``strides`` (each ≤ 32) replace
the stem and stages and feed the FPN's 1×1 laterals (which adapt their channels to ``neck_channels``); the input
is normalised with ImageNet's mean/std and ``backbone_weights`` (path or URL of a torchvision state dict) starts
it pretrained. ``self.backbone`` (None for the built-in network) is what ``train.backbone_lr_factor`` scales.

Outputs of ``forward`` (images float32 [B, 3, S, S], pixels 0..255), A = Σ_levels (S/s)²:
    "obj_logits" [B, A], "cls_logits" [B, A, K], "box_deltas" [B, A, 4] (raw l, t, r, b parameters),
    "points" [A, 2] location centres (x, y) px, "strides" [A] stride of each location's level (float).
Locations are ordered level by level (small stride first), row-major within a level.

``decode`` (all in the graph, exportable to ONNX):
    boxes  = (p_x − l, p_y − t, p_x + r, p_y + b),  (l, t, r, b) = exp(min(δ, 8)) · s   [B, A, 4] xyxy px
    scores = σ(obj) · σ(cls_k)                                                          [B, A, K]
i.e. P(object at this cell) × P(class k | object), the YOLO score; classes are independent sigmoids (a cell
never has to share probability mass between classes), as in YOLOv3+/YOLOX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from cvpipe.models.backbones import build_backbone, input_normalize
from cvpipe.models.scales import scaled

MAX_LOG_DISTANCE = 8.0  # clamp on δ before exp: e^8 · stride ≫ any image, and exp never overflows
PRIOR_PROB = 0.01  # initial σ(obj) and σ(cls) (RetinaNet's prior), so background does not swamp the first steps


def _conv(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> Conv2dNormActivation:
    return Conv2dNormActivation(in_ch, out_ch, kernel_size=kernel, stride=stride, activation_layer=nn.SiLU)


class Bottleneck(nn.Module):
    """x + 3×3(1×1(x)), channels unchanged (YOLOv5 bottleneck)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 1), _conv(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CSPBlock(nn.Module):
    """Cross Stage Partial block (Wang et al., 2020; YOLOv5 "C3"): half the channels pass ``depth`` bottlenecks,
    half bypass them, then concat and a 1×1 fuse. [B, in, H, W] → [B, out, H, W]."""

    def __init__(self, in_ch: int, out_ch: int, depth: int) -> None:
        super().__init__()
        hidden = out_ch // 2
        self.main = nn.Sequential(_conv(in_ch, hidden, 1), *[Bottleneck(hidden) for _ in range(depth)])
        self.bypass = _conv(in_ch, hidden, 1)
        self.fuse = _conv(2 * hidden, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.main(x), self.bypass(x)], dim=1))


class YoloDetector(nn.Module):
    """See the module docstring for the layout, outputs and decoding."""

    uses_nms = True

    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 16, depth: int = 1,
                 strides: tuple[int, ...] = (8, 16), neck_channels: int | None = None, head_convs: int = 1,
                 backbone: str | None = None, backbone_weights: str | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if not strides or list(strides) != sorted(set(strides)) or any(
                s < 4 or s & (s - 1) for s in strides) or any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"strides must be consecutive powers of two ≥ 4 in increasing order, got {strides}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        neck_channels = neck_channels or 4 * width
        self.normalize = input_normalize(backbone, mean, std)
        self.backbone = build_backbone(backbone, backbone_weights, self.strides)
        if self.backbone is not None:
            level_channels = list(self.backbone.channels)
        else:
            self.stem = _conv(3, width, 3, stride=2)
            # stride 2^(i+1) has width · 2^i channels; keep the stages down to the largest stride
            num_down = int(math.log2(self.strides[-1])) - 1
            channels = [width * 2**i for i in range(num_down + 1)]  # channels[i] at stride 2^(i+1)
            self.stages = nn.ModuleList(
                nn.Sequential(_conv(channels[i], channels[i + 1], 3, stride=2),
                              CSPBlock(channels[i + 1], channels[i + 1], depth))
                for i in range(num_down))
            level_channels = [channels[int(math.log2(s)) - 1] for s in self.strides]
        self.laterals = nn.ModuleList(_conv(c, neck_channels, 1) for c in level_channels)
        self.smooth = nn.ModuleList(_conv(neck_channels, neck_channels, 3) for _ in self.strides)
        self.cls_tower = nn.Sequential(*[_conv(neck_channels, neck_channels, 3) for _ in range(head_convs)])
        self.reg_tower = nn.Sequential(*[_conv(neck_channels, neck_channels, 3) for _ in range(head_convs)])
        self.cls_pred = nn.Conv2d(neck_channels, num_classes, 1)
        self.box_pred = nn.Conv2d(neck_channels, 4, 1)
        self.obj_pred = nn.Conv2d(neck_channels, 1, 1)
        prior_bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        nn.init.constant_(self.cls_pred.bias, prior_bias)
        nn.init.constant_(self.obj_pred.bias, prior_bias)
        nn.init.normal_(self.box_pred.weight, std=0.01)
        nn.init.constant_(self.box_pred.bias, 0.0)  # initial box: one stride to each side

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone + FPN: one [B, neck, S/s, S/s] map per stride in ``self.strides``."""
        if self.backbone is not None:
            levels = self.backbone(self.normalize(x))  # [B, C_s, S/s, S/s] per stride
        else:
            x = self.stem(self.normalize(x))  # [B, width, S/2, S/2]
            by_stride: dict[int, torch.Tensor] = {}
            stride = 2
            for stage in self.stages:
                x = stage(x)
                stride *= 2
                by_stride[stride] = x
            levels = [by_stride[s] for s in self.strides]
        laterals = [lat(level) for lat, level in zip(self.laterals, levels)]
        outs = [self.smooth[-1](laterals[-1])]
        for i in range(len(self.strides) - 2, -1, -1):  # top-down: coarse to fine
            up = F.interpolate(outs[0], scale_factor=2.0, mode="nearest")
            outs.insert(0, self.smooth[i](laterals[i] + up))
        return outs

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_with_features(images)[0]

    def forward_with_features(self, images: torch.Tensor
                              ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The head outputs of ``forward`` plus the FPN maps and the regression-tower maps, one per level
        (what a head added on top, such as YOLACT's mask coefficients and protonet, reads)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
        obj, cls, box, points, strides, reg_feats = [], [], [], [], [], []
        features = self._features(images)
        for feature, stride in zip(features, self.strides):
            height, width = feature.shape[-2:]
            cls_feat, reg_feat = self.cls_tower(feature), self.reg_tower(feature)
            reg_feats.append(reg_feat)
            cls.append(self.cls_pred(cls_feat).flatten(2).transpose(1, 2))  # [B, H*W, K]
            box.append(self.box_pred(reg_feat).flatten(2).transpose(1, 2))  # [B, H*W, 4]
            obj.append(self.obj_pred(reg_feat).flatten(2).squeeze(1))  # [B, H*W]
            ys = (torch.arange(height, device=images.device, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(width, device=images.device, dtype=torch.float32) + 0.5) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))  # [H*W, 2]
            strides.append(torch.full((height * width,), float(stride), device=images.device))
        outputs = {"obj_logits": torch.cat(obj, 1), "cls_logits": torch.cat(cls, 1), "box_deltas": torch.cat(box, 1),
                   "points": torch.cat(points, 0), "strides": torch.cat(strides, 0)}
        return outputs, features, reg_feats

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ boxes [B, A, 4] xyxy absolute px, scores [B, A, K] = σ(obj) · σ(cls) in 0..1."""
        boxes = deltas_to_boxes(outputs["box_deltas"], outputs["points"], outputs["strides"])
        scores = torch.sigmoid(outputs["obj_logits"]).unsqueeze(-1) * torch.sigmoid(outputs["cls_logits"])
        return boxes, scores


def deltas_to_boxes(deltas: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """FCOS box decoding: deltas [B, A, 4] (log of l, t, r, b in strides), points [A, 2], strides [A]
    → boxes [B, A, 4] xyxy px = (p_x − l, p_y − t, p_x + r, p_y + b), distances = exp(min(δ, 8)) · s."""
    distances = torch.exp(deltas.clamp(max=MAX_LOG_DISTANCE)) * strides.view(1, -1, 1)  # [B, A, 4]
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def build_yolo(num_classes: int, mean: list[float], std: list[float], *, scale: str | None = None,
               width: int | None = None, depth: int | None = None, strides: tuple[int, ...] = (8, 16),
               neck_channels: int | None = None, head_convs: int | None = None, backbone: str | None = None,
               backbone_weights: str | None = None) -> YoloDetector:
    """The YOLO-style detector with random init (or ``backbone_weights`` in a torchvision ``backbone``);
    ``width``, ``depth`` and ``head_convs`` come from the ``scale`` preset (:mod:`cvpipe.models.scales`; default
    ``n``: 16, 1, 1) where not given; ``neck_channels`` defaults to 4 · width."""
    size = scaled("yolo", scale, width=width, depth=depth, head_convs=head_convs)
    return YoloDetector(num_classes=num_classes, mean=mean, std=std, strides=tuple(strides),
                        neck_channels=neck_channels, backbone=backbone, backbone_weights=backbone_weights, **size)
