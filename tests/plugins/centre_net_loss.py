"""Loss of the tiny registry-test detector (:mod:`plugins.centre_net`).

Assignment: the cell whose centre lies inside a ground-truth box and closest to the box centre is that box's
positive (one cell per box; the smaller box wins a shared cell). With positives P, class targets y_ak = 1 for
the positive's class, 0 elsewhere:

    L_cls = Σ_a Σ_k FL(z_ak, y_ak) / max(|P|, 1)          (sigmoid focal loss, α = 0.25, γ = 2)
    L_box = Σ_{a ∈ P} (1 − GIoU(b̂_a, b_a)) / max(|P|, 1)
    L = L_cls + w_box · L_box
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


class CentreNetLoss(nn.Module):
    def __init__(self, *, num_classes: int, weight_box: float = 2.0) -> None:
        super().__init__()
        self.num_classes, self.weight_box = num_classes, weight_box

    @torch.no_grad()
    def assign(self, points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """points [A, 2], boxes [G, 4] → index of each box's cell [G] (−1: no cell centre inside the box)."""
        if len(boxes) == 0:
            return torch.zeros(0, dtype=torch.long, device=points.device)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [G, 2]
        inside = ((points[None] > boxes[:, None, :2]) & (points[None] < boxes[:, None, 2:])).all(-1)  # [G, A]
        distance = torch.cdist(centres, points).masked_fill(~inside, float("inf"))
        return torch.where(inside.any(1), distance.argmin(1), torch.full_like(distance[:, 0], -1, dtype=torch.long))

    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        from plugins.centre_net import CentreNet

        boxes_pred, _ = CentreNet.decode(None, outputs)  # [B, A, 4]
        logits = outputs["cls_logits"].float()
        cls_target = torch.zeros_like(logits)
        pred, truth = [], []
        for i, target in enumerate(targets):
            order = torch.argsort((target["boxes"][:, 2:] - target["boxes"][:, :2]).prod(1), descending=True)
            cells = self.assign(outputs["points"], target["boxes"][order])  # larger first: smaller ones overwrite
            keep = cells >= 0
            cls_target[i, cells[keep], target["labels"][order][keep]] = 1.0
            pred.append(boxes_pred[i, cells[keep]])
            truth.append(target["boxes"][order][keep])
        num = max(float(cls_target.sum()), 1.0)
        loss_cls = sigmoid_focal_loss(logits, cls_target, reduction="sum") / num
        pred_boxes, true_boxes = torch.cat(pred), torch.cat(truth)
        loss_box = (generalized_box_iou_loss(pred_boxes.float(), true_boxes, reduction="sum") / num
                    if len(true_boxes) else logits.sum() * 0.0)
        return {"loss_cls": loss_cls, "loss_box": loss_box, "loss": loss_cls + self.weight_box * loss_box}
