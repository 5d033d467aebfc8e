"""Loss of torchvision's RetinaNet v2 (:mod:`cvpipe.models.zoo_fpn`), the math of ``RetinaNetHead.compute_loss``.

Anchors are assigned by :func:`cvpipe.matching.zoo_assignment.match_by_iou` (IoU ≥ 0.5 positive, < 0.4
negative, in between ignored, plus each box's best anchors). Per image i, with P_i its positives, V_i its
non-ignored anchors, N_i = max(1, |P_i|), z_ak the class logits, y_ak = [k = class of the box of a]:

    L_cls,i = (1/N_i) Σ_{a∈V_i} Σ_k FL(z_ak, y_ak),   FL = −α_t (1 − p_t)^γ log p_t   (sigmoid focal loss,
                                                       Lin et al. 2017; α = 0.25, γ = 2)
    L_box,i = (1/N_i) Σ_{a∈P_i} (1 − GIoU(b̂_a, g_a))  b̂_a = BoxCoder(1,1,1,1).decode(δ_a, anchor_a)
    loss_cls = mean_i L_cls,i,   loss_box = mean_i L_box,i,   loss = w_cls · loss_cls + w_box · loss_box

(torchvision normalises per image, then averages over the batch; v2 uses GIoU for the boxes.) An image without
boxes has no positives: its box term is exactly 0 and its focal term pushes every anchor to background.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from cvpipe.matching.grid_assignment import pad_targets
from cvpipe.matching.zoo_assignment import IGNORED, match_by_iou
from cvpipe.models.zoo_detection import decode_with


def checked_targets(targets: list[dict[str, torch.Tensor]], num_classes: int,
                    batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detector-contract targets padded (:func:`pad_targets`: boxes [B, N, 4], labels [B, N], valid [B, N]) after
    checking them: a label outside 0..K−1 or a box without positive area is a ValueError naming image and row."""
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} targets for a batch of {batch} images")
    boxes, labels, valid = pad_targets(targets)
    bad_label = ((labels < 0) | (labels >= num_classes)) & valid
    if bad_label.any():
        image, row = torch.nonzero(bad_label)[0].tolist()
        raise ValueError(f"target {image}: label {labels[image, row].item()} at index {row} outside "
                         f"0..{num_classes - 1}")
    degenerate = (boxes[..., 2:] <= boxes[..., :2]).any(dim=-1) & valid
    if degenerate.any():
        image, row = torch.nonzero(degenerate)[0].tolist()
        raise ValueError(f"target {image}: box {boxes[image, row].tolist()} at index {row} has non-positive width "
                         "or height (expected xyxy with x2 > x1, y2 > y1)")
    return boxes, labels, valid


class RetinaNetLoss(nn.Module):
    """outputs of ``RetinaNetDetector.forward`` ("cls_logits" [B, A, K], "bbox_regression" [B, A, 4], "anchors"
    [A, 4]) + targets (list of {"boxes" [N, 4] xyxy px, "labels" [N] in 0..K−1}) → {"loss_cls", "loss_box",
    "loss"}; module docstring."""

    def __init__(self, *, num_classes: int, fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.4,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, weight_cls: float = 1.0,
                 weight_box: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fg_iou, self.bg_iou = fg_iou_threshold, bg_iou_threshold
        self.alpha, self.gamma = focal_alpha, focal_gamma
        self.weights = {"loss_cls": weight_cls, "loss_box": weight_box}
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        logits, deltas, anchors = outputs["cls_logits"].float(), outputs["bbox_regression"].float(), outputs["anchors"]
        batch = logits.shape[0]
        gt_boxes, gt_labels, _ = (t.to(logits.device) for t in checked_targets(targets, self.num_classes, batch))
        matched = match_by_iou([t["boxes"] for t in targets], anchors, fg_iou=self.fg_iou,
                               bg_iou=self.bg_iou)  # [B, A]
        positive = matched >= 0
        images, locations = torch.nonzero(positive, as_tuple=True)  # [P], [P]
        rows = matched[images, locations]  # [P] box index in its image
        per_image = positive.sum(dim=1).clamp(min=1).to(logits.dtype)  # [B] N_i

        target = torch.zeros_like(logits)  # [B, A, K]
        target[images, locations, gt_labels[images, rows]] = 1.0
        focal = sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction="none")
        focal = (focal.sum(dim=2) * (matched != IGNORED)).sum(dim=1)  # [B]
        loss_cls = (focal / per_image).mean()

        pred = decode_with(self.box_coder, deltas[images, locations].unsqueeze(0), anchors[locations]).squeeze(0)
        giou = generalized_box_iou_loss(pred, gt_boxes[images, rows], reduction="none")  # [P]
        loss_box = (giou / per_image[images]).sum() / batch

        terms = {"loss_cls": loss_cls, "loss_box": loss_box}
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms
