"""U-Net for semantic segmentation (Ronneberger, Fischer & Brox, 2015), sized for small CPU training.

Layout (``depth`` = number of 2× downsamplings, ``w`` = ``base_channels``):

    Normalize
    encoder   level 0: DoubleConv(3 → w)                       at H × W          → skip 0
              level i: MaxPool 2×2 → DoubleConv(w·2^(i−1) → w·2^i)  at H/2^i     → skip i   (i = 1..depth−1)
    bottleneck         MaxPool 2×2 → DoubleConv(w·2^(depth−1) → w·2^depth)  at H/2^depth
    decoder   level i (i = depth−1..0): ConvTranspose 2×2 stride 2 (c → c/2), pad to skip i's size,
              concat [skip i, up] (c/2 + c/2 channels) → DoubleConv(c → c/2)
    head      1×1 conv → logits (bias initialised at a 0.9 background prior, :data:`BACKGROUND_PRIOR`)

DoubleConv = two (3×3 conv, padding 1 → BatchNorm → ReLU), torchvision ``Conv2dNormActivation``. Unlike the
paper's unpadded convolutions (output smaller than the input, overlap-tile inference) the convolutions are
padded, as in most modern U-Nets, so the output has exactly the input's spatial size.

Sizes that are not multiples of 2^depth: max-pooling floors, so a level of size s is pooled to ⌊s/2⌋ and the
transposed convolution brings it back to 2⌊s/2⌋ ∈ {s − 1, s}. Pooled cell j covers input rows 2j, 2j+1 and the
transposed conv writes exactly rows 2j, 2j+1, so the upsampled map is pixel-aligned with the skip and only the
last row/column (dropped by the floor) is missing: we zero-pad that one row/column at the bottom/right. The
skip features still carry that row, so nothing is lost. Interpolating the upsampled map to the skip's size
instead would stretch it by s/(s−1) and misalign the two inputs of the concatenation by up to half a pixel per
level, and cropping the skip (the paper's choice) would shrink the output. Any H, W ≥ 2^depth works.

Input  float32 [B, 3, H, W], pixel values 0..255 (see :mod:`cvpipe.models.preprocess`).
Output logits float32 [B, C, H, W]:
    multi-class (``binary=False``): C = num_classes + 1, channel 0 = background, channel k = class k
        (the values of ``semantic.npy``); probabilities = softmax over C, labels = argmax.
    binary (``binary=True``): C = 1, foreground (any class) vs background; probability = sigmoid.

Pretrained encoder: with ``backbone`` (a torchvision name, :mod:`cvpipe.models.backbones`; ``depth`` ≤ 5) the
encoder levels 1..depth−1 and the bottleneck are that network's taps at strides 2, 4, …, 2^depth, each through a
1×1 conv (+BN+ReLU) adapting its channels to w·2^i, so the decoder is unchanged; level 0 (full resolution) stays
``inc``. Its stride-2 convolutions round up (⌈s/2⌉), so an upsampled map may be one row/column larger than its
skip: the zero-padding of ``Up`` is then a crop of that last row/column. The input is normalised with ImageNet's
mean/std and ``backbone_weights`` (path or URL of a torchvision state dict) loads the encoder.
``self.backbone`` (None for the built-in encoder) is what ``train.backbone_lr_factor`` scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from cvpipe.models.backbones import build_backbone, input_normalize

BACKGROUND_PRIOR = 0.9  # initial P(background) per pixel, ≈ its share in the scenes (RetinaNet's prior trick)


class DoubleConv(nn.Sequential):
    """(3×3 conv → BN → ReLU) × 2, padding 1: [B, in_ch, H, W] → [B, out_ch, H, W]."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(Conv2dNormActivation(in_ch, out_ch, kernel_size=3),
                         Conv2dNormActivation(out_ch, out_ch, kernel_size=3))


class Up(nn.Module):
    """Decoder step: transposed conv ×2 (in_ch → in_ch/2), zero-pad to the skip's size, concat, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch // 2 + out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # [B, in_ch/2, 2⌊h/2⌋, 2⌊w/2⌋]
        pad_h, pad_w = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]  # -1, 0 or 1, see module doc
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.conv(torch.cat([skip, x], dim=1))  # [B, out_ch, h_skip, w_skip]


class UNet(nn.Module):
    """See the module docstring. Attributes ``num_classes`` (foreground classes K), ``binary``,
    ``out_channels`` (K + 1, or 1 when binary) and ``min_size`` (2^depth, the smallest H or W)."""

    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], base_channels: int = 16,
                 depth: int = 3, binary: bool = False, backbone: str | None = None,
                 backbone_weights: str | None = None, background_prior: float = BACKGROUND_PRIOR) -> None:
        super().__init__()
        if not 0.0 < background_prior < 1.0:
            raise ValueError(f"background_prior must be in (0, 1), got {background_prior}")
        self.background_prior = background_prior
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if depth < 1:
            raise ValueError(f"depth must be ≥ 1, got {depth}")
        if base_channels < 1:
            raise ValueError(f"base_channels must be ≥ 1, got {base_channels}")
        if backbone is not None and depth > 5:
            raise ValueError(f"depth must be ≤ 5 with a torchvision backbone (stride 32), got {depth}")
        self.num_classes, self.binary = num_classes, binary
        self.out_channels = 1 if binary else num_classes + 1
        self.min_size = 2**depth
        widths = [base_channels * 2**i for i in range(depth + 1)]  # level 0 .. bottleneck
        self.normalize = input_normalize(backbone, mean, std)
        self.inc = DoubleConv(3, widths[0])
        self.backbone = build_backbone(backbone, backbone_weights, [2**i for i in range(1, depth + 1)])
        if self.backbone is not None:  # taps at strides 2..2^depth → 1×1 adapters to widths 1..depth
            self.adapters = nn.ModuleList(Conv2dNormActivation(c, w, kernel_size=1)
                                          for c, w in zip(self.backbone.channels, widths[1:]))
        else:
            self.pool = nn.MaxPool2d(2)  # floor mode: a size-s level pools to ⌊s/2⌋
            self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], self.out_channels, kernel_size=1)
        pretrained = set(self.backbone.modules()) if self.backbone is not None else set()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m not in pretrained:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._init_head()

    def _init_head(self) -> None:
        """Small head weights and biases at the background prior, so the first steps do not spend themselves
        learning that most pixels are background (the initial CE is then ≈ the prior's entropy, not ≈ log C)."""
        nn.init.normal_(self.head.weight, std=0.1)
        with torch.no_grad():
            prior = self.background_prior
            if self.binary:
                self.head.bias.fill_(math.log((1 - prior) / prior))
            else:
                self.head.bias.fill_(math.log((1 - prior) / self.num_classes))
                self.head.bias[0] = math.log(prior)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float32 [B, 3, H, W] in 0..255 → logits [B, C, H, W] (C = out_channels)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] < self.min_size or images.shape[-1] < self.min_size:
            raise ValueError(f"images of {tuple(images.shape[-2:])} px are smaller than 2^depth = {self.min_size}")
        normalized = self.normalize(images)
        x = self.inc(normalized)  # [B, w, H, W]
        if self.backbone is not None:
            # [B, w·2^i, ⌈H/2^i⌉, ⌈W/2^i⌉] for i = 1..depth
            encoded = [adapt(f) for adapt, f in zip(self.adapters, self.backbone(normalized))]
            skips, x = [x, *encoded[:-1]], encoded[-1]
        else:
            skips = []
            for down in self.down:
                skips.append(x)
                x = down(self.pool(x))  # [B, w·2^(i+1), ⌊h/2⌋, ⌊w/2⌋]
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
        return self.head(x)  # [B, C, H, W]


def build_unet(num_classes: int, mean: list[float], std: list[float], *, base_channels: int = 16, depth: int = 3,
               binary: bool = False, backbone: str | None = None, backbone_weights: str | None = None,
               background_prior: float = BACKGROUND_PRIOR) -> UNet:
    """The U-Net with random init (Kaiming for convolutions, BN at identity, head at the background prior), or with
    a torchvision ``backbone`` encoder started from ``backbone_weights``. ``background_prior``: the initial
    P(background) per pixel (binary training measures it on the training masks)."""
    return UNet(num_classes=num_classes, mean=mean, std=std, base_channels=base_channels, depth=depth, binary=binary,
                backbone=backbone, backbone_weights=backbone_weights, background_prior=background_prior)
