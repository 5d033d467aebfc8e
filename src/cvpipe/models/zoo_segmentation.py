"""torchvision's semantic segmenters (model zoo) as cvpipe architectures, with their class head made for our classes.

Variants (:data:`VARIANTS`, built by the public ``torchvision.models.segmentation`` constructors with
``weights=None, weights_backbone=None, aux_loss=False``, so nothing is downloaded by building):

    architecture           backbone             torchvision constructor          final class layer(s)
    lraspp_mobilenet_v3    mobilenet_v3_large   lraspp_mobilenet_v3_large        classifier.low_classifier,
                                                                                 classifier.high_classifier
    deeplabv3              mobilenet_v3_large   deeplabv3_mobilenet_v3_large     classifier.4
                           resnet50             deeplabv3_resnet50               classifier.4
                           resnet101            deeplabv3_resnet101              classifier.4

Layout (S×S input, MobileNetV3 dilated in its last stage: output stride 16; ResNets dilated in layer3/4: 8):
    LR-ASPP    backbone → {"low": [B, 40, S/8, S/8], "high": [B, 960, S/16, S/16]}
               head: low_classifier(low) + high_classifier(upsample(cbr(high) · scale(high))) → [B, C, S/8, S/8]
    DeepLabV3  backbone → {"out": [B, 960 | 2048, S/s, S/s]} → ASPP (rates 12, 24, 36) → 3×3 conv → 1×1 conv
               (``classifier.4``) → [B, C, S/s, S/s]
    then bilinear upsampling (align_corners=False) to S×S, as torchvision's own ``forward`` returns ``["out"]``.

Contract (the U-Net's, :mod:`cvpipe.models.unet`, so :class:`cvpipe.tasks.segmentation.SegmentationTask` and
:class:`cvpipe.losses.segmentation.SegmentationLoss` take it unchanged):
    input  float32 [B, 3, H, W], pixel values 0..255; normalised inside with ImageNet's mean/std
           (:data:`cvpipe.models.backbones.IMAGENET_MEAN`/``STD``: what the zoo weights were trained with; the train
           split's ``mean``/``std`` are accepted and not used), so the exported graph takes raw pixels too;
    output logits float32 [B, C, H, W]: C = num_classes + 1 (channel 0 = background, k = class k) or, binary, C = 1.

Weights (both optional; with neither the network starts from torchvision's random init):
    ``weights``           path or http(s) URL of a state dict of the whole torchvision segmenter in its own key
                          layout, e.g. the COCO-with-VOC-labels files of torchvision's WeightsEnum entries. Loaded
                          strictly (:func:`cvpipe.models.weights.load_exact`) on every key but the final class
                          layer(s) above, whose shapes depend on the class count (kept at their new init), and
                          ``aux_classifier.*`` (the auxiliary FCN head of the aux-loss checkpoints: dropped). A file
                          of another variant is a ConfigError naming the missing / unexpected / mis-shaped keys.
    ``backbone_weights``  path or URL of an ImageNet state dict of the backbone's classification network in
                          torchvision's layout (``mobilenet_v3_large``, ``resnet50``, ``resnet101``), strict but for
                          its classifier (``classifier.*`` / ``fc.*``), as torchvision's ``weights_backbone`` does.
    Giving both is a ConfigError: the segmenter's file already holds a backbone.

New head. The final class layer(s) start with weights ~ N(0, 0.01²) and biases at the background prior π (the
U-Net's :data:`cvpipe.models.unet.BACKGROUND_PRIOR`, or the measured share in binary mode): background log π,
each class log((1 − π)/K); binary log((1 − π)/π). LR-ASPP sums two class layers, so one bias
(``high_classifier``) carries the prior and the other is zero. ``self.backbone`` is what
``train.backbone_lr_factor`` scales.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models import segmentation

from cvpipe.errors import ConfigError
from cvpipe.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from cvpipe.models.preprocess import Normalize
from cvpipe.models.unet import BACKGROUND_PRIOR
from cvpipe.models.weights import load_exact

AUX_PREFIX = "aux_classifier."  # the aux-loss checkpoints' extra FCN head: never built here, ignored in files


@dataclass(frozen=True)
class Variant:
    """One torchvision segmenter: its constructor, the classification network of its backbone (for
    ``backbone_weights``), the module names of its final class layer(s), and whether its head reads the whole
    feature dict (LR-ASPP: "low" and "high") or only ``features["out"]`` (DeepLabV3)."""

    constructor: Callable[..., nn.Module]
    classification_net: Callable[..., nn.Module]
    final_layers: tuple[str, ...]
    head_takes_dict: bool


VARIANTS: dict[str, Variant] = {
    "lraspp_mobilenet_v3_large": Variant(segmentation.lraspp_mobilenet_v3_large, models.mobilenet_v3_large,
                                         ("classifier.low_classifier", "classifier.high_classifier"), True),
    "deeplabv3_mobilenet_v3_large": Variant(segmentation.deeplabv3_mobilenet_v3_large, models.mobilenet_v3_large,
                                            ("classifier.4",), False),
    "deeplabv3_resnet50": Variant(segmentation.deeplabv3_resnet50, models.resnet50, ("classifier.4",), False),
    "deeplabv3_resnet101": Variant(segmentation.deeplabv3_resnet101, models.resnet101, ("classifier.4",), False),
}
DEEPLABV3_BACKBONES = ("mobilenet_v3_large", "resnet50", "resnet101")


class ZooSegmenter(nn.Module):
    """A torchvision segmenter (``backbone`` and ``classifier`` under torchvision's own names, so its state dict
    keys are the zoo file's plus ``normalize.mean/std``) behind the U-Net's contract; see the module docstring.
    Attributes ``variant``, ``num_classes`` (K), ``binary`` and ``out_channels`` (K + 1, or 1 when binary)."""

    def __init__(self, variant: str, *, num_classes: int, binary: bool = False, weights: str | None = None,
                 backbone_weights: str | None = None, background_prior: float = BACKGROUND_PRIOR) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown torchvision segmenter {variant!r}; choose one of {sorted(VARIANTS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if not 0.0 < background_prior < 1.0:
            raise ValueError(f"background_prior must be in (0, 1), got {background_prior}")
        if weights and backbone_weights:
            raise ConfigError(f"params.yaml: model.weights and model.backbone_weights are both set for {variant}; "
                              "the segmenter's weights already hold a backbone, give one of them")
        spec = VARIANTS[variant]
        self.variant, self.num_classes, self.binary = variant, num_classes, binary
        self.out_channels = 1 if binary else num_classes + 1
        self._head_takes_dict = spec.head_takes_dict
        self._final_layers = spec.final_layers
        kwargs = {} if spec.head_takes_dict else {"aux_loss": False}  # LR-ASPP rejects the argument altogether
        net = spec.constructor(weights=None, weights_backbone=None, num_classes=self.out_channels, **kwargs)
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.backbone = net.backbone  # IntermediateLayerGetter: normalised [B, 3, H, W] → OrderedDict of maps
        self.classifier = net.classifier
        if backbone_weights:
            self._load_backbone(spec, backbone_weights)
        self._init_final_layers(background_prior)
        if weights:
            load_exact(self, weights, ignore=(*(f"{name}." for name in self.final_layers), AUX_PREFIX, "normalize."),
                       what=f"model.weights ({variant})")

    @property
    def final_layers(self) -> tuple[str, ...]:
        """Module names of the layer(s) that output class logits (re-initialised, never loaded from a file)."""
        return self._final_layers

    def _load_backbone(self, spec: Variant, source: str) -> None:
        """ImageNet weights of the classification network, checked strictly there, then copied into the
        segmentation backbone (MobileNetV3: its ``features``; ResNet: all but ``fc``, same key names)."""
        net = spec.classification_net(weights=None)
        resnet = isinstance(net, models.ResNet)
        load_exact(net, source, ignore=("fc." if resnet else "classifier.",),
                   what=f"model.backbone_weights ({self.variant})")
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")} if resnet \
            else net.features.state_dict()
        self.backbone.load_state_dict(state)  # same tensors under the same names: a mismatch is a bug, not input

    def _init_final_layers(self, prior: float) -> None:
        """Weights ~ N(0, 0.01²); the last layer's bias at the background prior, the others' at 0."""
        with torch.no_grad():
            for name in self.final_layers:
                layer = self.get_submodule(name)
                nn.init.normal_(layer.weight, std=0.01)
                layer.bias.zero_()
            bias = self.get_submodule(self.final_layers[-1]).bias  # [C]
            if self.binary:
                bias.fill_(math.log((1 - prior) / prior))
            else:
                bias.fill_(math.log((1 - prior) / self.num_classes))
                bias[0] = math.log(prior)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float32 [B, 3, H, W] in 0..255 → logits [B, C, H, W] (C = out_channels)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        features = self.backbone(self.normalize(images))  # {"low", "high"} (LR-ASPP) or {"out"} (DeepLabV3)
        logits = self.classifier(features if self._head_takes_dict else features["out"])  # [B, C, H/s, W/s]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)  # [B, C, H, W]


def build_lraspp_mobilenet_v3(num_classes: int, mean: list[float], std: list[float], *, binary: bool = False,
                              weights: str | None = None, backbone_weights: str | None = None,
                              background_prior: float = BACKGROUND_PRIOR) -> ZooSegmenter:
    """LR-ASPP with a MobileNetV3-Large backbone (3.2 M parameters, the CPU choice). ``mean``/``std`` are not
    used: the input is normalised with ImageNet's statistics, those of the zoo weights."""
    return ZooSegmenter("lraspp_mobilenet_v3_large", num_classes=num_classes, binary=binary, weights=weights,
                        backbone_weights=backbone_weights, background_prior=background_prior)


def build_deeplabv3(num_classes: int, mean: list[float], std: list[float], *, backbone: str = "mobilenet_v3_large",
                    binary: bool = False, weights: str | None = None, backbone_weights: str | None = None,
                    background_prior: float = BACKGROUND_PRIOR) -> ZooSegmenter:
    """DeepLabV3 with ``backbone`` in :data:`DEEPLABV3_BACKBONES` (11 M, 42 M or 61 M parameters). ``mean``/``std``
    are not used: the input is normalised with ImageNet's statistics, those of the zoo weights."""
    if backbone not in DEEPLABV3_BACKBONES:
        raise ConfigError(f"params.yaml: model.backbone {backbone!r} is unknown for deeplabv3; choose one of "
                          f"{list(DEEPLABV3_BACKBONES)}")
    return ZooSegmenter(f"deeplabv3_{backbone}", num_classes=num_classes, binary=binary, weights=weights,
                        backbone_weights=backbone_weights, background_prior=background_prior)
