"""Loss of torchvision's FCOS (:mod:`cvpipe.models.zoo_fpn`), the math of ``FCOSHead.compute_loss``.

Locations are assigned by :func:`cvpipe.matching.zoo_assignment.match_fcos` (centre sampling, scale ranges,
smallest box wins). With P the positives of the whole batch and N = max(1, |P|):

    loss_cls     = (1/N) Σ_{all b,a} Σ_k FL(z_bak, [k = class of a])    sigmoid focal loss, α = 0.25, γ = 2
    loss_box     = (1/N) Σ_{a∈P} (1 − GIoU(b̂_a, g_a))                   b̂_a: BoxLinearCoder decoding (l, t, r, b
                                                                         in anchor sides around the anchor's centre)
    loss_ctrness = (1/N) Σ_{a∈P} BCE(c_a, ctr*_a),  ctr*_a = √( min(l*, r*)/max(l*, r*) · min(t*, b*)/max(t*, b*) )
    loss         = w_cls · loss_cls + w_box · loss_box + w_ctr · loss_ctrness

(l*, t*, r*, b* are the ground truth's distances from the location; Tian et al. 2019, eq. 3.) Box and
centerness terms are sums over positives: exactly 0 for a batch without boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxLinearCoder
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from cvpipe.losses.retinanet import checked_targets
from cvpipe.matching.zoo_assignment import match_fcos


class FCOSLoss(nn.Module):
    """outputs of ``FCOSDetector.forward`` ("cls_logits" [B, A, K], "bbox_regression" [B, A, 4], "bbox_ctrness"
    [B, A, 1], "anchors" [A, 4], "num_anchors_per_level" [L]) + detector-contract targets →
    {"loss_cls", "loss_box", "loss_ctrness", "loss"}; module docstring."""

    def __init__(self, *, num_classes: int, center_sampling_radius: float = 1.5, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, weight_cls: float = 1.0, weight_box: float = 1.0,
                 weight_ctrness: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.radius = center_sampling_radius
        self.alpha, self.gamma = focal_alpha, focal_gamma
        self.weights = {"loss_cls": weight_cls, "loss_box": weight_box, "loss_ctrness": weight_ctrness}
        self.box_coder = BoxLinearCoder(normalize_by_size=True)

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        logits, deltas = outputs["cls_logits"].float(), outputs["bbox_regression"].float()  # [B, A, K], [B, A, 4]
        ctrness, anchors = outputs["bbox_ctrness"].float().squeeze(2), outputs["anchors"]  # [B, A], [A, 4]
        gt_boxes, gt_labels, _ = (t.to(logits.device) for t in checked_targets(targets, self.num_classes,
                                                                                logits.shape[0]))
        matched = match_fcos([t["boxes"] for t in targets], anchors, outputs["num_anchors_per_level"].tolist(),
                             center_sampling_radius=self.radius)  # [B, A]
        images, locations = torch.nonzero(matched >= 0, as_tuple=True)  # [P], [P]
        rows = matched[images, locations]
        num_pos = max(1, len(images))

        target = torch.zeros_like(logits)
        target[images, locations, gt_labels[images, rows]] = 1.0
        loss_cls = sigmoid_focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, reduction="sum") / num_pos

        pos_anchors, pos_boxes = anchors[locations], gt_boxes[images, rows]  # [P, 4], [P, 4]
        pred = self.box_coder.decode(deltas[images, locations], pos_anchors)
        loss_box = generalized_box_iou_loss(pred, pos_boxes, reduction="sum") / num_pos

        distances = self.box_coder.encode(pos_anchors, pos_boxes)  # [P, 4] (l, t, r, b) / anchor side
        left_right, top_bottom = distances[:, [0, 2]], distances[:, [1, 3]]
        centreness = torch.sqrt((left_right.min(dim=1).values / left_right.max(dim=1).values)
                                * (top_bottom.min(dim=1).values / top_bottom.max(dim=1).values))  # [P]
        loss_ctrness = F.binary_cross_entropy_with_logits(ctrness[images, locations], centreness,
                                                          reduction="sum") / num_pos

        terms = {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctrness": loss_ctrness}
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms
