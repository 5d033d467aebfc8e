"""torchvision's SSD300-VGG16 and SSDlite320-MobileNetV3-Large as cvpipe detectors (``ssd300_vgg16``, ``ssdlite320``).

Shared contract, weights and freezing: :mod:`cvpipe.models.zoo_detection`. Built by ``ssd300_vgg16`` /
``ssdlite320_mobilenet_v3_large`` (``weights=None, weights_backbone=None, num_classes=K + 1``: softmax over a
background column 0 and the user's classes, class k ↔ label k + 1, as torchvision's SSD and cvpipe's ``ssd``).

Layout (torchvision's):
    ssd300_vgg16  VGG16 to conv4_3 (stride 8, L2-normalised × learnt scale) → conv5 + dilated fc6/fc7 (stride 16)
                  → 4 extra blocks: 6 maps (38², 19², 10², 5², 3², 1² at 300 px); 3×3 conv heads per map with
                  4, 6, 6, 6, 4, 4 default boxes per location (scales 0.07 … 1.05 of the side, steps 8 … 300).
                  Its extra blocks end in unpadded 3×3 convs and its steps assume 300 px, so the network always runs
                  at 300 × 300: other inputs are bilinearly resized to it first, as torchvision's transform does
                  (``prepare.image_size: 300`` avoids the resize), and the default boxes are scaled back to the input.
    ssdlite320    MobileNetV3-Large (reduced tail) taps at strides 16 and 32 → 4 extra depthwise blocks: 6 maps;
                  depthwise-separable heads, 6 default boxes per location (scales 0.2 … 0.95 of the side, centred
                  on each map's cells). Every block pads, and the default boxes are fractions of the image, so it
                  runs at the input size S (``size`` resizes to a fixed side instead; torchvision's is 320).

``forward`` (images float32 [B, 3, S, S], 0..255; normalised with torchvision's constants: VGG x − 255·mean (Caffe
style, std 1/255), SSDlite x/127.5 − 1) → "cls_logits" [B, A, K+1] (background first), "bbox_regression"
[B, A, 4] (BoxCoder deltas, weights 10, 10, 5, 5), "default_boxes" [A, 4] xyxy px of the input, "image_size" [2].
``decode``: boxes = BoxCoder(10, 10, 5, 5) decoding clipped to the image [B, A, 4], scores = softmax over K + 1
without the background column [B, A, K]. The loss is cvpipe's MultiBox loss (:class:`cvpipe.losses.ssd.SSDMultiBoxLoss`:
torchvision's SSD loss, smooth-L1 + cross-entropy with 3:1 hard negatives, same box coding).

Class head (re-initialised, never loaded): ssd300_vgg16 ``head.classification_head.module_list.*`` (all six 3×3
convs); ssdlite320 the 1×1 projection ``head.classification_head.module_list.<i>.1`` of each level (its depthwise
3×3 part is class-independent and loads). ``trainable_backbone_layers`` (ssd300_vgg16 only, 0..5, default 4 with
weights as in torchvision) counts VGG's five conv stages from the deepest; SSDlite trains everything (torchvision's
default). No ``backbone_weights``: torchvision's ImageNet VGG16-features file is laid out for ``vgg16().features``
(conv5 sits under ``extra.0`` here) and an ImageNet MobileNetV3 implies the full tail, another layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

from cvpipe.errors import ConfigError
from cvpipe.matching.default_boxes import decode_offsets
from cvpipe.models.zoo_detection import ZooDetector, check_square, clip_to_image, one_image_anchors, size_tensor, \
    trainable_layers


@dataclass(frozen=True)
class Variant:
    constructor: Callable[..., nn.Module]
    mean: tuple[float, float, float]  # torchvision's transform constants for the model (fractions of 1)
    std: tuple[float, float, float]
    class_head: Callable[[int], tuple[str, ...]]  # number of feature maps → class-head key prefixes


VARIANTS = {
    "ssd300_vgg16": Variant(ssd300_vgg16, (0.48235, 0.45882, 0.40784), (1.0 / 255.0,) * 3,
                            lambda levels: ("head.classification_head.module_list.",)),
    "ssdlite320": Variant(ssdlite320_mobilenet_v3_large, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                          lambda levels: tuple(f"head.classification_head.module_list.{i}.1." for i in range(levels))),
}
VGG_SIZE = 300  # px, the side SSD300's extra blocks and steps are built for


def vgg_frozen_parameters(backbone: nn.Module, trainable: int) -> list[nn.Parameter]:
    """Parameters of VGG16's conv stages outside the deepest ``trainable`` (torchvision's ``_vgg_extractor`` rule).

    torchvision splits ``vgg16().features`` into ``backbone.features`` (to conv4_3) and the head of
    ``backbone.extra[0]`` (pool4 … conv5_3, before fc6/fc7): rejoined here in their original order."""
    trunk = [*backbone.features, *list(backbone.extra[0])[:-1]]
    stage_starts = [0] + [i for i, m in enumerate(trunk) if isinstance(m, nn.MaxPool2d)]  # [0, 4, 9, 16, 23]
    freeze_before = len(trunk) if trainable == 0 else stage_starts[len(stage_starts) - trainable]
    return [p for module in trunk[:freeze_before] for p in module.parameters()]


class ZooSSD(ZooDetector):
    """A torchvision SSD (backbone, head, default-box generator under torchvision's names); module docstring."""

    def __init__(self, variant: str, *, num_classes: int, weights: str | None = None,
                 trainable_backbone_layers: int | None = None, size: int | None = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown torchvision SSD {variant!r}; choose one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
        net = spec.constructor(weights=None, weights_backbone=None, num_classes=num_classes + 1)
        levels = len(net.anchor_generator.aspect_ratios)
        super().__init__(variant, num_classes=num_classes, mean=list(spec.mean), std=list(spec.std),
                         class_head=spec.class_head(levels))
        if size is not None and size < 32:
            raise ConfigError(f"params.yaml: model.size of {variant} must be ≥ 32 px or null, got {size}")
        self.size = size  # side the network runs at; None: the input's
        self.backbone, self.head, self.anchor_generator = net.backbone, net.head, net.anchor_generator
        if weights:
            self.load_weights(weights)
        if variant == "ssd300_vgg16":
            trainable = trainable_layers(trainable_backbone_layers, maximum=5, pretrained_default=4,
                                         pretrained=bool(weights), arch=variant)
            self.freeze(vgg_frozen_parameters(self.backbone, trainable))
        elif trainable_backbone_layers is not None:
            raise ConfigError(f"params.yaml: model.trainable_backbone_layers is not an option of {variant}")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_square(images, self.arch)
        side = int(images.shape[-1])
        x = self.normalize(images)
        if self.size is not None and self.size != side:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        features = list(self.backbone(x).values())  # one map per level
        head = self.head(features)
        boxes = one_image_anchors(self.anchor_generator, x, features).float() * (side / x.shape[-1])  # [A, 4]
        return {"cls_logits": head["cls_logits"], "bbox_regression": head["bbox_regression"], "default_boxes": boxes,
                "image_size": size_tensor(images)}

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ boxes [B, A, 4] xyxy px clipped to the image, scores [B, A, K] foreground probabilities."""
        boxes = decode_offsets(outputs["bbox_regression"].float(), outputs["default_boxes"])  # [B, A, 4]
        scores = outputs["cls_logits"].float().softmax(dim=-1)[..., 1:]  # [B, A, K], background dropped
        return clip_to_image(boxes, outputs["image_size"]), scores


def build_ssd300_vgg16(num_classes: int, mean: list[float], std: list[float], *, weights: str | None = None,
                       trainable_backbone_layers: int | None = None) -> ZooSSD:
    """SSD300-VGG16 for ``num_classes`` classes, run at 300 px; ``mean``/``std`` are not used (torchvision's)."""
    return ZooSSD("ssd300_vgg16", num_classes=num_classes, weights=weights,
                  trainable_backbone_layers=trainable_backbone_layers, size=VGG_SIZE)


def build_ssdlite320(num_classes: int, mean: list[float], std: list[float], *, weights: str | None = None,
                     size: int | None = None) -> ZooSSD:
    """SSDlite320-MobileNetV3-Large for ``num_classes`` classes, run at the input size (or ``size``); ``mean``/``std``
    are not used (torchvision's)."""
    return ZooSSD("ssdlite320", num_classes=num_classes, weights=weights, size=size)
