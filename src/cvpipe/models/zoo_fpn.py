"""torchvision's RetinaNet v2 and FCOS on ResNet50-FPN as cvpipe detectors (``retinanet``, ``fcos``).

Shared contract, weights and freezing: :mod:`cvpipe.models.zoo_detection`. Built by
``retinanet_resnet50_fpn_v2`` / ``fcos_resnet50_fpn`` (``weights=None, weights_backbone=None, num_classes=K``).

Layout (torchvision's; input S×S, run at S): ResNet50 trunk (``backbone.body``: conv1, layer1..layer4) → FPN
(``backbone.fpn``) on C3-C5 plus P6, P7 from stride-2 convs (RetinaNet v2 from C5, FCOS from P5) → 256-channel
maps at strides 8, 16, 32, 64, 128 with ⌈S/s⌉² cells (S = 64: 8², 4², 2², 1², 1²; S = 128: 16² … 1²) → one head
shared by the levels, two branches of 4 × (3×3 conv, GroupNorm(32), ReLU):
    retinanet  n = 9 anchors per location: sides σ·{1, 2^{1/3}, 2^{2/3}} × ratios {0.5, 1, 2}, σ = ``anchor_sizes``
               per level (torchvision's 32, 64, 128, 256, 512: P3 anchors are 32-50 px; at 64 px the 14-28 px
               objects of the test scenes get their best anchor through the low-quality matches of the loss)
    fcos       n = 1 "anchor" per location: a square of side s (8 … 128) standing for the point at its centre
Anchor centres are torchvision's: (j·s, i·s) for cell (i, j), s = S // cells (AnchorGenerator).

``forward`` (images float32 [B, 3, S, S], 0..255) → A = Σ_levels cells · n:
    "cls_logits" [B, A, K]; "bbox_regression" [B, A, 4]; "anchors" [A, 4] xyxy px; "image_size" [2] (H, W);
    fcos also "bbox_ctrness" [B, A, 1] (centerness logit) and "num_anchors_per_level" [5] int64 (for its matching).
``decode`` (torchvision's ``postprocess_detections`` before its score filter, top-k and NMS, which cvpipe's
post-processing does):
    retinanet  boxes = BoxCoder(1, 1, 1, 1): (c_a + δ_xy · wh_a, wh_a · exp(min(δ_wh, log(1000/16)))) as xyxy,
               scores = σ(z)                                                            [B, A, 4], [B, A, K]
    fcos       boxes = (c_x − l·w_a, c_y − t·h_a, c_x + r·w_a, c_y + b·h_a) (BoxLinearCoder, size-normalised),
               scores = √(σ(z_k) · σ(ctr))
    boxes clipped to the image.

Labels: sigmoid classifiers with K outputs, class k ↔ label k (torchvision's COCO files have 91 outputs with
unused ids; our head has the user's K). The class head ``head.classification_head.cls_logits`` is re-initialised
(weights N(0, 0.01²), bias −log((1 − π)/π), π = 0.01) and never loaded from a file.

Weights: ``weights`` (the whole detector, e.g. the COCO files named in the README) or ``backbone_weights`` (an
ImageNet ``resnet50`` state dict for the trunk, strict but for ``fc.*``: torchvision's ``weights_backbone``), not
both. With either, every trunk BatchNorm is frozen (torchvision uses ``FrozenBatchNorm2d`` in its pretrained ResNet
detectors; statistics of small CPU batches would replace the loaded ones) and only the deepest
``trainable_backbone_layers`` of (conv1, layer1, layer2, layer3, layer4) train (0..5; default 3 with weights, 5
without); FPN and head always train.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator

from cvpipe.errors import ConfigError
from cvpipe.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from cvpipe.models.weights import load_exact
from cvpipe.models.zoo_detection import (ZooDetector, check_square, clip_to_image, decode_with, one_image_anchors,
                                         size_tensor, trainable_layers)

RESNET_UNITS = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trainable units, deepest first (torchvision)
CLASS_HEAD = ("head.classification_head.cls_logits.",)
RETINANET_ANCHOR_SIZES = (32, 64, 128, 256, 512)  # px, base side per level P3..P7 (torchvision's)


def frozen_trunk_parameters(body: nn.Module, trainable: int, pretrained: bool) -> list[nn.Parameter]:
    """Trunk parameters outside the deepest ``trainable`` units (torchvision's ``_resnet_fpn_extractor`` rule;
    with 5, ``bn1`` trains too), plus every BatchNorm parameter when ``pretrained``."""
    units = RESNET_UNITS[:trainable] + (("bn1",) if trainable == len(RESNET_UNITS) else ())
    frozen = [p for name, p in body.named_parameters() if not name.startswith(units)]
    if pretrained:
        frozen += [p for m in body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    return list({id(p): p for p in frozen}.values())


class ResNetFPNDetector(ZooDetector):
    """Base of :class:`RetinaNetDetector` and :class:`FCOSDetector`: a torchvision ``RetinaNet``/``FCOS``'s
    backbone, head and anchor generator (module docstring)."""

    def __init__(self, arch: str, net: nn.Module, *, num_classes: int, weights: str | None,
                 backbone_weights: str | None, trainable_backbone_layers: int | None) -> None:
        super().__init__(arch, num_classes=num_classes, mean=IMAGENET_MEAN, std=IMAGENET_STD, class_head=CLASS_HEAD)
        if weights and backbone_weights:
            raise ConfigError(f"params.yaml: model.weights and model.backbone_weights are both set for {arch}; the "
                              "detector's weights already hold a backbone, give one of them")
        self.backbone, self.head, self.anchor_generator = net.backbone, net.head, net.anchor_generator
        self.box_coder = net.box_coder  # plain object, no tensors
        if backbone_weights:
            load_exact(self.backbone.body, backbone_weights, ignore=("fc.",),
                       what=f"model.backbone_weights ({arch}: a torchvision resnet50 state dict)")
        if weights:
            self.load_weights(weights)
        pretrained = bool(weights or backbone_weights)
        trainable = trainable_layers(trainable_backbone_layers, maximum=len(RESNET_UNITS), pretrained_default=3,
                                     pretrained=pretrained, arch=arch)
        self.freeze(frozen_trunk_parameters(self.backbone.body, trainable, pretrained))

    def _run(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
        """Head outputs, anchors [A, 4] (float32) and the anchors per level."""
        check_square(images, self.arch)
        x = self.normalize(images)
        features = list(self.backbone(x).values())  # P3..P7: [B, 256, ⌈S/s⌉, ⌈S/s⌉]
        anchors = one_image_anchors(self.anchor_generator, x, features).float()
        per_location = self.anchor_generator.num_anchors_per_location()
        per_level = [int(f.shape[-2] * f.shape[-1]) * n for f, n in zip(features, per_location)]
        return self.head(features), anchors, per_level


class RetinaNetDetector(ResNetFPNDetector):
    """retinanet_resnet50_fpn_v2 (focal loss, GIoU box loss: :class:`cvpipe.losses.retinanet.RetinaNetLoss`)."""

    def __init__(self, *, num_classes: int, weights: str | None = None, backbone_weights: str | None = None,
                 trainable_backbone_layers: int | None = None,
                 anchor_sizes: tuple[int, ...] = RETINANET_ANCHOR_SIZES) -> None:
        if len(anchor_sizes) != 5 or any(s <= 0 for s in anchor_sizes):
            raise ConfigError(f"params.yaml: model.anchor_sizes of retinanet must be 5 positive sides (px) for the "
                              f"levels P3..P7, got {list(anchor_sizes)}")
        net = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes)
        # 3 scales × 3 ratios per location, as torchvision's _default_anchorgen, so the head's shapes never change
        net.anchor_generator = AnchorGenerator(
            tuple((s, int(s * 2 ** (1.0 / 3)), int(s * 2 ** (2.0 / 3))) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
        super().__init__("retinanet", net, num_classes=num_classes, weights=weights,
                         backbone_weights=backbone_weights, trainable_backbone_layers=trainable_backbone_layers)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        head, anchors, _ = self._run(images)
        return {"cls_logits": head["cls_logits"], "bbox_regression": head["bbox_regression"], "anchors": anchors,
                "image_size": size_tensor(images)}

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ boxes [B, A, 4] xyxy px clipped to the image, scores [B, A, K] = σ(logits)."""
        boxes = decode_with(self.box_coder, outputs["bbox_regression"].float(), outputs["anchors"])
        return clip_to_image(boxes, outputs["image_size"]), torch.sigmoid(outputs["cls_logits"].float())


class FCOSDetector(ResNetFPNDetector):
    """fcos_resnet50_fpn (focal, GIoU and centerness losses: :class:`cvpipe.losses.fcos.FCOSLoss`)."""

    def __init__(self, *, num_classes: int, weights: str | None = None, backbone_weights: str | None = None,
                 trainable_backbone_layers: int | None = None) -> None:
        net = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes)
        super().__init__("fcos", net, num_classes=num_classes, weights=weights, backbone_weights=backbone_weights,
                         trainable_backbone_layers=trainable_backbone_layers)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        head, anchors, per_level = self._run(images)
        return {"cls_logits": head["cls_logits"], "bbox_regression": head["bbox_regression"],
                "bbox_ctrness": head["bbox_ctrness"], "anchors": anchors, "image_size": size_tensor(images),
                "num_anchors_per_level": torch.tensor(per_level, dtype=torch.int64, device=images.device)}

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ boxes [B, A, 4] xyxy px clipped to the image, scores [B, A, K] = √(σ(logits) · σ(centerness))."""
        boxes = self.box_coder.decode(outputs["bbox_regression"].float(), outputs["anchors"])  # [B, A, 4]
        scores = torch.sqrt(torch.sigmoid(outputs["cls_logits"].float())
                            * torch.sigmoid(outputs["bbox_ctrness"].float()))  # [B, A, K]
        return clip_to_image(boxes, outputs["image_size"]), scores


def build_retinanet(num_classes: int, mean: list[float], std: list[float], *, weights: str | None = None,
                    backbone_weights: str | None = None, trainable_backbone_layers: int | None = None,
                    anchor_sizes: tuple[int, ...] = RETINANET_ANCHOR_SIZES) -> RetinaNetDetector:
    """RetinaNet-ResNet50-FPN v2 for ``num_classes`` classes; the train split's ``mean``/``std`` are not used
    (ImageNet's, what the weights were trained with)."""
    return RetinaNetDetector(num_classes=num_classes, weights=weights, backbone_weights=backbone_weights,
                             trainable_backbone_layers=trainable_backbone_layers, anchor_sizes=tuple(anchor_sizes))


def build_fcos(num_classes: int, mean: list[float], std: list[float], *, weights: str | None = None,
               backbone_weights: str | None = None, trainable_backbone_layers: int | None = None) -> FCOSDetector:
    """FCOS-ResNet50-FPN for ``num_classes`` classes; ``mean``/``std`` are not used (ImageNet's)."""
    return FCOSDetector(num_classes=num_classes, weights=weights, backbone_weights=backbone_weights,
                        trainable_backbone_layers=trainable_backbone_layers)
