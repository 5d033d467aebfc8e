"""SSD: single-shot multibox detector (Liu et al. 2016), with a small CNN backbone sized for CPU training.

Layout (input S×S, e.g. S = 128): Normalize → stem of two stride-2 3×3 convs (S/4) → ``num_levels`` feature
maps, each one stride-2 conv + a torchvision ``BasicBlock``: S/8, S/16, S/32, S/64 (16², 8², 4², 2² at
S = 128). On every feature map k a 3×3 conv predicts, for each of its n_k default boxes per location,
K+1 class logits (index 0 = background, i.e. foreground class c is logit c + 1) and 4 offsets
(encoding in :mod:`cvpipe.matching.default_boxes`). Default boxes follow the SSD scale rule
s_k = s_min + (s_max − s_min)(k − 1)/(m − 1); with the defaults (s = 0.15..0.5, aspect ratio 2) at S = 128
the square boxes span 19–71 px, the elongated ones 14×27 to 45×90 px: 98% of the 9–58 px objects of the
synthetic scenes have a default box with IoU ≥ 0.5, ≈ 5 on average.

Outputs of ``forward`` (all tensors, so the graph exports to ONNX; default boxes depend only on the static
input size and become constants there):
- "cls_logits": [B, A, K+1] raw logits, background first;
- "bbox_regression": [B, A, 4] encoded offsets;
- "default_boxes": [A, 4] xyxy absolute pixels;
- "image_size": [2] (H, W) of the input, float.
``decode`` → boxes [B, A, 4] xyxy absolute pixels clipped to the image, scores [B, A, K] = softmax over
K+1 with the background column dropped.

With ``backbone`` (a torchvision name, :mod:`cvpipe.models.backbones`) the stem and the first min(num_levels, 3)
levels are that network's taps at strides 8, 16, 32, each through a 1×1 conv (+BN+ReLU) adapting its channels
to the level's (2w, 4w, 4w); levels beyond stride 32 stay SSD's extra blocks (stride-2 conv + ``BasicBlock``) on
top, and the heads are unchanged. The input is normalised with ImageNet's mean/std and ``backbone_weights`` (path
or URL of a torchvision state dict) starts it pretrained. ``self.backbone`` (None for the built-in network) is
what ``train.backbone_lr_factor`` scales.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import Conv2dNormActivation

from cvpipe.models.scales import scaled
from cvpipe.matching.default_boxes import DefaultBoxes, decode_offsets
from cvpipe.models.backbones import build_backbone, input_normalize


class SSDDetector(nn.Module):
    """See the module docstring. ``num_classes`` = K foreground classes; ``uses_nms`` = True."""

    uses_nms = True

    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 32,
                 num_levels: int = 4, aspect_ratios: tuple[float, ...] = (2.0,), min_scale: float = 0.15,
                 max_scale: float = 0.5, backbone: str | None = None, backbone_weights: str | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if num_levels < 1:
            raise ValueError(f"num_levels must be ≥ 1, got {num_levels}")
        self.num_classes = num_classes
        self.default_boxes = DefaultBoxes(aspect_ratios=[list(aspect_ratios)] * num_levels,
                                          min_scale=min_scale, max_scale=max_scale)
        self.normalize = input_normalize(backbone, mean, std)
        channels = [width * min(2 ** (k + 1), 4) for k in range(num_levels)]  # 2w, 4w, 4w, 4w
        self.backbone = build_backbone(backbone, backbone_weights, (8, 16, 32)[:num_levels])
        if self.backbone is not None:  # taps at S/8, S/16, S/32 → 1×1 adapters; the extra levels go on top
            self.adapters = nn.ModuleList(Conv2dNormActivation(c_in, ch, kernel_size=1)
                                          for c_in, ch in zip(self.backbone.channels, channels))
            tapped, in_ch = len(self.adapters), channels[len(self.adapters) - 1]
        else:
            self.stem = nn.Sequential(Conv2dNormActivation(3, width // 2, kernel_size=3, stride=2),
                                      Conv2dNormActivation(width // 2, width, kernel_size=3, stride=2))  # S/4
            tapped, in_ch = 0, width
        levels = []
        for ch in channels[tapped:]:
            levels.append(nn.Sequential(Conv2dNormActivation(in_ch, ch, kernel_size=3, stride=2), BasicBlock(ch, ch)))
            in_ch = ch
        self.levels = nn.ModuleList(levels)
        per_loc = self.default_boxes.boxes_per_location
        self.cls_heads = nn.ModuleList(nn.Conv2d(ch, n * (num_classes + 1), 3, padding=1)
                                       for ch, n in zip(channels, per_loc))
        self.box_heads = nn.ModuleList(nn.Conv2d(ch, n * 4, 3, padding=1) for ch, n in zip(channels, per_loc))
        pretrained = set(self.backbone.modules()) if self.backbone is not None else set()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in pretrained:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for head in [*self.cls_heads, *self.box_heads]:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    @staticmethod
    def _flatten(out: torch.Tensor, per_location: int) -> torch.Tensor:
        """[B, n·C, H, W] → [B, H·W·n, C], location-major like the default boxes."""
        b, _, h, w = out.shape
        return out.view(b, per_location, -1, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * per_location, -1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images float32 [B, 3, S, S] in 0..255 → raw head outputs (keys in the module docstring)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if self.backbone is not None:
            features = [adapt(f) for adapt, f in zip(self.adapters, self.backbone(self.normalize(images)))]
            x = features[-1]
        else:
            features, x = [], self.stem(self.normalize(images))
        for level in self.levels:
            x = level(x)
            features.append(x)
        cls, reg, grids = [], [], []
        for x, cls_head, box_head, n in zip(features, self.cls_heads, self.box_heads,
                                            self.default_boxes.boxes_per_location):  # x: [B, C_k, H_k, W_k]
            grids.append((int(x.shape[-2]), int(x.shape[-1])))
            cls.append(self._flatten(cls_head(x), n))  # [B, H_k·W_k·n, K+1]
            reg.append(self._flatten(box_head(x), n))  # [B, H_k·W_k·n, 4]
        height, width = int(images.shape[-2]), int(images.shape[-1])
        return {
            "cls_logits": torch.cat(cls, dim=1),
            "bbox_regression": torch.cat(reg, dim=1),
            "default_boxes": self.default_boxes(grids, (height, width), device=images.device),
            "image_size": torch.tensor([height, width], dtype=torch.float32, device=images.device),
        }

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ boxes [B, A, 4] xyxy absolute px clipped to the image, scores [B, A, K] foreground probabilities."""
        boxes = decode_offsets(outputs["bbox_regression"], outputs["default_boxes"])  # [B, A, 4]
        height, width = outputs["image_size"][0], outputs["image_size"][1]
        limits = torch.stack([width, height, width, height]).to(boxes.dtype)  # [4]
        boxes = torch.minimum(boxes.clamp(min=0.0), limits)
        scores = outputs["cls_logits"].softmax(dim=-1)[..., 1:]  # [B, A, K], background dropped
        return boxes, scores


def build_ssd(num_classes: int, mean: list[float], std: list[float], *, scale: str | None = None,
              width: int | None = None, num_levels: int = 4, aspect_ratios: tuple[float, ...] = (2.0,),
              min_scale: float = 0.15, max_scale: float = 0.5, backbone: str | None = None,
              backbone_weights: str | None = None) -> SSDDetector:
    """The SSD detector with random init (or ``backbone_weights`` in a torchvision ``backbone``). Arguments as in
    :class:`SSDDetector`; ``width`` from the ``scale`` preset (:mod:`cvpipe.models.scales`; default ``n``: 32)."""
    width = scaled("ssd", scale, width=width)["width"]
    return SSDDetector(num_classes=num_classes, mean=mean, std=std, width=width, num_levels=num_levels,
                       aspect_ratios=aspect_ratios, min_scale=min_scale, max_scale=max_scale, backbone=backbone,
                       backbone_weights=backbone_weights)
