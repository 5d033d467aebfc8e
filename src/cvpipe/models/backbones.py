"""torchvision classification networks as multi-scale backbones, optionally started from pretrained weights.

Names (:data:`BACKBONES`): resnet18, resnet34, resnet50, mobilenet_v3_small, mobilenet_v3_large. The network is
built with ``weights=None`` (nothing is downloaded); ``weights`` (a path or http(s) URL, read by
:func:`cvpipe.models.weights.read_state_dict`) must hold a state dict in torchvision's own key layout, e.g.
``torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict()``. Loading is strict on every key of the
network except its classification head (``fc.*`` for ResNets, ``classifier.*`` for MobileNetV3: ignored on both
sides); another layout (resnet34 weights for a resnet18, a detection checkpoint) is a ConfigError naming the file
and the first missing / unexpected / mis-shaped keys.

Taps. For each requested output stride s ∈ {2, 4, 8, 16, 32}, the deepest feature map at that resolution:
    ResNet       2: relu(bn1(conv1)) (64 ch)   4: layer1   8: layer2   16: layer3   32: layer4
                 (64, 128, 256, 512 channels × block expansion: ×1 for resnet18/34, ×4 for resnet50)
    MobileNetV3  the last block of ``features`` at each stride (small: 16, 16, 24, 48, 576 channels;
                 large: 16, 24, 40, 112, 960; the stride-32 tap includes the final 1×1 conv of ``features``)
Layers deeper than the largest requested stride are dropped (never run, not in the state dict). The kept modules
keep torchvision's names, so the keys of ``model.backbone.state_dict()`` are a subset of the file's.

Which architecture reads which taps (each adapts the channels to its own neck/head with 1×1 convs):
    classifier (SmallResNet)  32 → global average pool → linear head
    YOLO / YOLACT             ``strides`` (default 8, 16) → the FPN's 1×1 laterals to ``neck_channels``
    SSD                       the first ``num_levels`` of 8, 16, 32 → 1×1 adapters to SSD's level channels; levels
                              beyond stride 32 are SSD's own extra stride-2 blocks on top
    DETR                      2^``backbone_stages`` → the 1×1 input projection to ``d_model``
    U-Net                     2, 4, …, 2^``depth`` → 1×1 adapters to the decoder's widths (the full-resolution skip
                              stays the U-Net's own first DoubleConv)

Normalisation. A model with a torchvision backbone keeps taking 0..255 input and normalising inside, but with
ImageNet's mean/std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`, what torchvision's weights were trained with)
instead of the train split's statistics; also without ``weights``, so a model from scratch and a pretrained one
see the same input.

``forward``: normalised float32 [B, 3, H, W] → one map per requested stride s, [B, C_s, ⌈H/s⌉, ⌈W/s⌉] (padded
stride-2 convolutions round up), in the order of ``strides``; ``channels`` gives the C_s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision import models

from cvpipe.errors import ConfigError
from cvpipe.models.preprocess import Normalize
from cvpipe.models.weights import load_exact

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
BACKBONES = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50,
             "mobilenet_v3_small": models.mobilenet_v3_small, "mobilenet_v3_large": models.mobilenet_v3_large}
TAP_STRIDES = (2, 4, 8, 16, 32)


class Backbone(nn.Module):
    """The taps of torchvision network ``name`` at ``strides`` (see the module docstring)."""

    def __init__(self, name: str, strides: Sequence[int], weights: str | None = None) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"params.yaml: model.backbone {name!r} is unknown; choose one of {sorted(BACKBONES)} "
                              "or null (the built-in network)")
        strides = tuple(int(s) for s in strides)
        if not strides or any(s not in TAP_STRIDES for s in strides) or list(strides) != sorted(set(strides)):
            raise ConfigError(f"backbone {name}: strides {strides} must be increasing values of {TAP_STRIDES}")
        net = BACKBONES[name](weights=None)
        resnet = name.startswith("resnet")
        if weights:
            load_exact(net, weights, ignore=("fc." if resnet else "classifier.",), what=f"backbone_weights ({name})")
        self.name, self.strides = name, strides
        segments = self._resnet(net, strides[-1]) if resnet else self._mobilenet(net, strides[-1])
        channels = dict((stride, ch) for stride, _, ch in segments)
        self.channels = tuple(channels[s] for s in strides)
        self._segments = [(stride, modules) for stride, modules, _ in segments]  # plain list: run order, not registered

    def _resnet(self, net: models.ResNet, deepest: int) -> list[tuple[int, list[nn.Module], int]]:
        expansion = net.layer1[0].expansion
        plan = [(2, ["conv1", "bn1", "relu"], 64), (4, ["maxpool", "layer1"], 64 * expansion),
                (8, ["layer2"], 128 * expansion), (16, ["layer3"], 256 * expansion), (32, ["layer4"], 512 * expansion)]
        segments = []
        for stride, names, channels in plan:
            if stride > deepest:
                break
            for attr in names:
                self.add_module(attr, getattr(net, attr))
            segments.append((stride, [getattr(self, attr) for attr in names], channels))
        return segments

    def _mobilenet(self, net: models.MobileNetV3, deepest: int) -> list[tuple[int, list[nn.Module], int]]:
        stride, last = 1, {}  # output stride → index of the last block of features at that stride
        for i, block in enumerate(net.features):
            stride *= max(m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d))
            last[stride] = i
        self.features = net.features[:last[deepest] + 1]  # keeps the keys "0", "1", ...: torchvision's layout
        segments, start = [], 0
        for stride in TAP_STRIDES[:TAP_STRIDES.index(deepest) + 1]:
            blocks = list(self.features)[start:last[stride] + 1]
            segments.append((stride, blocks, blocks[-1].out_channels))
            start = last[stride] + 1
        return segments

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """normalised [B, 3, H, W] → [[B, C_s, ⌈H/s⌉, ⌈W/s⌉] for s in strides]."""
        taps = {}
        for stride, modules in self._segments:
            for module in modules:
                x = module(x)
            taps[stride] = x
        return [taps[s] for s in self.strides]


def build_backbone(name: str | None, weights: str | None, strides: Sequence[int]) -> Backbone | None:
    """The torchvision backbone ``name`` (None: the architecture keeps its built-in network)."""
    if name is None:
        if weights:
            raise ConfigError(f"params.yaml: model.backbone_weights {weights!r} needs model.backbone (one of "
                              f"{sorted(BACKBONES)}); the built-in network has no torchvision layout")
        return None
    return Backbone(name, strides, weights)


def input_normalize(backbone: str | None, mean: list[float], std: list[float]) -> Normalize:
    """The model's input normalisation: the train split's ``mean``/``std`` for the built-in networks, ImageNet's
    for a torchvision backbone."""
    return Normalize(mean, std) if backbone is None else Normalize(IMAGENET_MEAN, IMAGENET_STD)
