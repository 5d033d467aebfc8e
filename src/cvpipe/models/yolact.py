"""Instance segmentation: YOLACT-style prototype masks (Bolya et al., 2019) on the YOLO-style detector.

Why this and not Mask R-CNN: the budget is < 10 minutes of training on a 2-core CPU. Mask R-CNN adds an RPN,
RoIAlign and a per-RoI mask FCN on top of a two-stage detector, so every training image pays for ~hundreds of
RoIs; YOLACT adds two cheap pieces to a one-stage detector that already reaches mAP@0.5 0.96 here in 3 minutes:

- a *protonet*: a small FCN on the finest FPN map (stride s₀) that upsamples ×2 and predicts k prototype
  masks P ∈ R^{k×H_p×W_p} (H_p = S / (s₀/2), ReLU output, as in the paper), shared by every instance;
- a *coefficient head*: k values per location from the regression tower, c_a = tanh(conv(f_a)) ∈ [−1, 1]^k.

An instance detected at location a gets the mask

    M_a = σ(P^T c_a)   (a linear combination of prototypes, then a sigmoid)          [H_p, W_p]

which is upsampled (bilinear) to the image, cropped to the detected box (zero outside) and thresholded.
Two objects of the same class that overlap get different coefficients from different locations, so they
come out as separate instances — which connected components on a semantic mask cannot do.

Measured on the default scenes (2-core CPU): see the params comment of ``models.instance`` and the closing
note of the issue. Everything up to the dense outputs is in the graph (ONNX exports boxes, scores,
coefficients and prototypes); NMS and mask assembly run in :mod:`cvpipe.postprocess.instance_masks`, the
same code for PyTorch and onnxruntime outputs.

Outputs of ``forward``: those of :class:`~cvpipe.models.yolo.YoloDetector` plus
    "mask_coeffs" [B, A, k] in [−1, 1], "protos" [B, k, H_p, W_p] ≥ 0.
"""

from __future__ import annotations

import torch
from torch import nn

from cvpipe.models.scales import scaled
from cvpipe.models.yolo import YoloDetector, _conv


class YolactSegmenter(YoloDetector):
    """The YOLO-style detector + protonet + mask coefficients; see the module docstring."""

    uses_nms = True
    predicts_masks = True

    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 16, depth: int = 1,
                 strides: tuple[int, ...] = (8, 16), neck_channels: int | None = None, head_convs: int = 1,
                 num_prototypes: int = 16, proto_channels: int | None = None, backbone: str | None = None,
                 backbone_weights: str | None = None) -> None:
        super().__init__(num_classes=num_classes, mean=mean, std=std, width=width, depth=depth, strides=strides,
                         neck_channels=neck_channels, head_convs=head_convs, backbone=backbone,
                         backbone_weights=backbone_weights)
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be ≥ 1, got {num_prototypes}")
        neck = self.cls_pred.in_channels
        proto_channels = proto_channels or neck
        self.num_prototypes = num_prototypes
        self.proto_stride = self.strides[0] // 2
        # YOLACT's protonet: 3×3 convs on the finest FPN level, ×2 bilinear upsampling, 3×3, 1×1 to k, ReLU
        self.protonet = nn.Sequential(
            _conv(neck, proto_channels, 3), _conv(proto_channels, proto_channels, 3),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
            _conv(proto_channels, proto_channels, 3), nn.Conv2d(proto_channels, num_prototypes, 1), nn.ReLU())
        self.coeff_pred = nn.Conv2d(neck, num_prototypes, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs, features, reg_feats = self.forward_with_features(images)
        coeffs = [self.coeff_pred(r).flatten(2).transpose(1, 2) for r in reg_feats]  # [B, H*W, k] per level
        outputs["mask_coeffs"] = torch.tanh(torch.cat(coeffs, 1))
        outputs["protos"] = self.protonet(features[0])
        return outputs

    def decode_instances(self, outputs: dict[str, torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ boxes [B, A, 4] xyxy px, scores [B, A, K], mask_coeffs [B, A, k], protos [B, k, H_p, W_p]."""
        boxes, scores = self.decode(outputs)
        return boxes, scores, outputs["mask_coeffs"], outputs["protos"]


class DecodedInstanceSegmenter(nn.Module):
    """``forward`` = decode_instances(model(images)): the ONNX export graph (four outputs)."""

    def __init__(self, model: YolactSegmenter) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.decode_instances(self.model(images))


def build_yolact(num_classes: int, mean: list[float], std: list[float], *, scale: str | None = None,
                 width: int | None = None, depth: int | None = None, strides: tuple[int, ...] = (8, 16),
                 neck_channels: int | None = None, head_convs: int | None = None, num_prototypes: int = 16,
                 proto_channels: int | None = None, backbone: str | None = None,
                 backbone_weights: str | None = None) -> YolactSegmenter:
    """The YOLACT-style instance segmenter with random init (or ``backbone_weights`` in a torchvision ``backbone``,
    which feeds the YOLO FPN as in :mod:`cvpipe.models.yolo`; the protonet reads the finest FPN map as usual);
    ``width``, ``depth`` and ``head_convs`` from the YOLO ``scale`` preset where not given."""
    size = scaled("yolo", scale, width=width, depth=depth, head_convs=head_convs)
    return YolactSegmenter(num_classes=num_classes, mean=mean, std=std, strides=tuple(strides),
                           neck_channels=neck_channels, num_prototypes=num_prototypes, proto_channels=proto_channels,
                           backbone=backbone, backbone_weights=backbone_weights, **size)
