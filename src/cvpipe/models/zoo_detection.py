"""What torchvision's COCO-pretrained one-stage detectors share as cvpipe architectures (model zoo wrappers).

Architectures (``models.<name>.train.arch``), each a torchvision detector built by its public constructor with
``weights=None, weights_backbone=None`` (building never downloads) and wrapped to the detector contract of
:mod:`cvpipe.models.detector`:

    arch           torchvision constructor          module    COCO box mAP  trunk
    retinanet      retinanet_resnet50_fpn_v2        zoo_fpn   41.5          ResNet50 + FPN P3-P7
    fcos           fcos_resnet50_fpn                zoo_fpn   39.2          ResNet50 + FPN P3-P7
    ssdlite320     ssdlite320_mobilenet_v3_large    zoo_ssd   21.3          MobileNetV3-Large, 0.6 GFLOPs at 320 px
    ssd300_vgg16   ssd300_vgg16                     zoo_ssd   25.1          VGG16 at 300 px, 35 GFLOPs

Why these: all four are dense one-stage heads (one score vector and one box per anchor or location), so the
whole decoding (anchors + box coder + sigmoid/softmax) is a fixed tensor program that exports to ONNX with a
dynamic batch, and NMS stays in :mod:`cvpipe.postprocess.detections` like for ``yolo`` and ``ssd``. RetinaNet v2
(not v1: its file stores the head in a pre-v2 key layout and needs ``overwrite_eps``) and FCOS run at the
prepared size (~1 s per training step of 8 images at 64 px on one CPU thread); SSDlite is the CPU choice (0.1 s);
SSD300-VGG16 is the SSD row's pretrained option but costs ~5 s per image per training step on a CPU.

Common contract of the wrappers:

- input float32 [B, 3, S, S], pixels 0..255, normalised inside with the mean/std of torchvision's own transform
  for that model (what the COCO weights were trained with; the train split's ``mean``/``std`` are accepted and not
  used). RetinaNet/FCOS/SSDlite run at S (no ``GeneralizedRCNNTransform`` resize: prepared scenes are already
  squares); SSD300 runs at its fixed 300 px, see :mod:`cvpipe.models.zoo_ssd`.
- ``forward`` → raw head tensors plus the anchors [A, 4] xyxy px of the input and "image_size" [2] (H, W);
  ``decode`` → boxes [B, A, 4] xyxy px clipped to the image, scores [B, A, K] in 0..1; ``uses_nms`` = True.
- The torchvision modules keep their attribute names (``backbone``, ``head``, ``anchor_generator``), so the
  wrapper's state dict is the zoo file's plus ``normalize.mean/std``: ``weights`` (path or http(s) URL of the
  whole detector's state dict, e.g. a COCO file of torchvision's ``WeightsEnum``) loads strictly
  (:func:`cvpipe.models.weights.load_exact`) on every key but the class head's (its shape depends on K: it keeps
  torchvision's fresh init for the user's classes). Another model's file is a ConfigError naming the missing,
  unexpected and mis-shaped keys. Nothing is read or downloaded unless params name a file.
- Frozen layers (``trainable_backbone_layers``, torchvision's meaning: counted from the deepest trunk stage) get
  ``requires_grad = False``, and BatchNorm layers whose parameters are frozen keep their loaded running statistics
  in training (eval mode), i.e. torchvision's ``FrozenBatchNorm2d``. ``self.backbone`` (torchvision's, including
  FPN/extra layers) is what ``train.backbone_lr_factor`` scales.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from cvpipe.errors import ConfigError
from cvpipe.models.preprocess import Normalize
from cvpipe.models.weights import load_exact

log = logging.getLogger(__name__)


class ZooDetector(nn.Module):
    """Base of the zoo wrappers: input normalisation, strict weight loading with a re-initialised class head,
    and frozen BatchNorm statistics. Subclasses set ``backbone``, ``head``, ``anchor_generator`` and implement
    ``forward``/``decode`` (module docstring)."""

    uses_nms = True

    def __init__(self, arch: str, *, num_classes: int, mean: list[float], std: list[float],
                 class_head: tuple[str, ...]) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.arch, self.num_classes = arch, num_classes
        self.class_head = class_head  # state-dict key prefixes of the layers whose shape depends on K
        self.normalize = Normalize(mean, std)  # torchvision's transform mean/std for this model (fractions of 1)
        self._frozen_norms: list[nn.Module] = []  # plain list: run-time state, not registered submodules

    def load_weights(self, source: str) -> None:
        """The whole detector from ``source`` (path or URL), strictly, except the class head and ``normalize``."""
        load_exact(self, source, ignore=(*self.class_head, "normalize."), what=f"model.weights ({self.arch})")

    def freeze(self, parameters: list[nn.Parameter]) -> None:
        """Stop training ``parameters``; BatchNorm layers left without trainable parameters keep their statistics."""
        for parameter in parameters:
            parameter.requires_grad_(False)
        self._frozen_norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                              and not any(p.requires_grad for p in m.parameters())]

    def train(self, mode: bool = True) -> ZooDetector:
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self


def trainable_layers(value: int | None, *, maximum: int, pretrained_default: int, pretrained: bool,
                     arch: str) -> int:
    """``trainable_backbone_layers`` resolved as torchvision does: ``pretrained_default`` with weights, all
    (``maximum``) without; a value outside 0..maximum is a ConfigError. Freezing random layers is allowed (fast
    tests, timing) with a warning."""
    if value is None:
        return pretrained_default if pretrained else maximum
    if not 0 <= value <= maximum:
        raise ConfigError(f"params.yaml: model.trainable_backbone_layers of {arch} must be in 0..{maximum}, "
                          f"got {value}")
    if value < maximum and not pretrained:
        log.warning("%s: trainable_backbone_layers=%d without weights freezes layers at their random init", arch,
                    value)
    return value


def one_image_anchors(generator: nn.Module, images: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    """The anchors (or default boxes) of torchvision's ``generator`` for one image of ``images``' size:
    [A, 4] xyxy px, in the order of the head outputs (level by level, location-major). They depend on the input's
    static size only, so they are constants of an exported graph."""
    height, width = int(images.shape[-2]), int(images.shape[-1])
    return generator(ImageList(images[:1], [(height, width)]), features)[0]


def decode_with(coder: object, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """torchvision ``BoxCoder.decode_single`` over a batch: deltas [B, A, 4], anchors [A, 4] → [B, A, 4]."""
    batch, num = deltas.shape[0], deltas.shape[1]
    refs = anchors.unsqueeze(0).expand(batch, -1, -1).reshape(-1, 4).to(deltas.dtype)  # [B·A, 4]
    return coder.decode_single(deltas.reshape(-1, 4), refs).reshape(batch, num, 4)


def clip_to_image(boxes: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """boxes [..., 4] xyxy px clipped to [0, W] × [0, H]; image_size [2] float (H, W)."""
    height, width = image_size[0], image_size[1]
    limits = torch.stack([width, height, width, height]).to(boxes.dtype)  # [4]
    return torch.minimum(boxes.clamp(min=0.0), limits)


def size_tensor(images: torch.Tensor) -> torch.Tensor:
    """[2] float32 (H, W) of ``images`` [B, 3, H, W], on their device."""
    return torch.tensor([images.shape[-2], images.shape[-1]], dtype=torch.float32, device=images.device)


def check_square(images: torch.Tensor, arch: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{arch}: images must be [B, 3, S, S], got {tuple(images.shape)}")
