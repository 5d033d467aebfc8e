"""Loss of the anchor-free YOLO-style detector (:mod:`cvpipe.models.yolo`), YOLOX-like.

Positives P come from :func:`cvpipe.matching.grid_assignment.assign_grid` (the loss never matches by itself);
each positive location a has a box g(a) with class c(a). With N = max(1, |P|) over the whole batch,

    L_box = (1/N) Σ_{a∈P} (1 − GIoU(b̂_a, b_g(a)))                      (Rezatofighi et al., 2019)
    L_obj = (1/N) Σ_{all a} BCE(o_a, t_a),  t_a = IoU(b̂_a, b_g(a)) (detached) on P, 0 elsewhere
    L_cls = (1/N) Σ_{a∈P} Σ_k BCE(z_ak, [k = c(a)])
    L     = λ_box · L_box + λ_obj · L_obj + λ_cls · L_cls                (YOLOX weights: 5, 1, 1)

b̂_a are the decoded boxes (xyxy px), o_a the objectness logits, z_ak the class logits. Summing and dividing
by the number of positives, not by the number of locations, keeps the scale independent of image size
(YOLOX, FCOS do the same). Box and class terms are sums over positives: on images without boxes they are
exactly 0, while the objectness term still pushes every location to background.

Why IoU as the objectness target (``iou_objectness=True``) rather than 1: the score σ(o)·σ(z) then ranks a
well-placed box above a sloppy one of the same object, so class-wise NMS keeps the better box and AP rises
(the IoU-aware score of VarifocalNet / GFL and YOLOv3's "objectness = IoU" definition). The target is detached
so the objectness branch cannot move the boxes. ``iou_objectness=False`` gives the plain target 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from cvpipe.matching.grid_assignment import BACKGROUND, assign_grid, level_size_ranges, pad_targets
from cvpipe.models.yolo import deltas_to_boxes


class YoloLoss(nn.Module):
    """outputs (from ``YoloDetector.forward``) + targets (list of {"boxes" [N, 4] xyxy px, "labels" [N]})
    → {"loss_box", "loss_obj", "loss_cls", "loss"}, scalar tensors; see the module docstring."""

    def __init__(self, *, num_classes: int, weight_box: float = 5.0, weight_obj: float = 1.0, weight_cls: float = 1.0,
                 center_radius: float = 2.5, size_boundary_factor: float = 4.0, iou_objectness: bool = True,
                 box_loss: str = "giou") -> None:
        super().__init__()
        if box_loss not in ("giou", "ciou"):
            raise ValueError(f"box_loss must be 'giou' or 'ciou', got {box_loss!r}")
        self.num_classes = num_classes
        self.weights = {"loss_box": weight_box, "loss_obj": weight_obj, "loss_cls": weight_cls}
        self.center_radius = center_radius
        self.size_boundary_factor = size_boundary_factor
        self.iou_objectness = iou_objectness
        self.box_loss = generalized_box_iou_loss if box_loss == "giou" else complete_box_iou_loss

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        terms, _ = self.detection_terms(outputs, targets)
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

    def detection_terms(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
                        ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The unweighted terms {"loss_box", "loss_obj", "loss_cls"} and the positives as index tensors
        (image b [P], location a [P], matched target row g [P]), for heads that add their own term."""
        obj_logits, cls_logits = outputs["obj_logits"].float(), outputs["cls_logits"].float()  # [B, A], [B, A, K]
        if len(targets) != obj_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {obj_logits.shape[0]} images")
        gt_boxes, gt_labels, gt_valid = pad_targets(targets)  # [B, N, 4], [B, N], [B, N]
        gt_boxes, gt_labels, gt_valid = (t.to(obj_logits.device) for t in (gt_boxes, gt_labels, gt_valid))
        bad = (gt_labels < 0) | (gt_labels >= self.num_classes)
        if (bad & gt_valid).any():
            image, row = torch.nonzero(bad & gt_valid)[0].tolist()
            raise ValueError(f"target {image}: label {gt_labels[image, row].item()} at index {row} "
                             f"outside 0..{self.num_classes - 1}")
        degenerate = ((gt_boxes[..., 2:] <= gt_boxes[..., :2]).any(dim=-1)) & gt_valid  # [B, N]
        if degenerate.any():
            image, row = torch.nonzero(degenerate)[0].tolist()
            raise ValueError(f"target {image}: box {gt_boxes[image, row].tolist()} at index {row} has "
                             "non-positive width or height (expected xyxy with x2 > x1, y2 > y1)")

        size_lo, size_hi = level_size_ranges(outputs["strides"], self.size_boundary_factor)
        matched = assign_grid(outputs["points"], outputs["strides"], size_lo, size_hi, gt_boxes, gt_valid,
                              center_radius=self.center_radius)  # [B, A]
        positive = matched != BACKGROUND  # [B, A]
        batch_idx, loc_idx = torch.nonzero(positive, as_tuple=True)  # [P], [P]
        gt_idx = matched[batch_idx, loc_idx]  # [P]
        num_pos = max(1, int(positive.sum()))

        pos_deltas = outputs["box_deltas"][batch_idx, loc_idx].float()  # [P, 4]
        pred_boxes = deltas_to_boxes(pos_deltas.unsqueeze(0), outputs["points"][loc_idx],
                                     outputs["strides"][loc_idx]).squeeze(0)  # [P, 4]
        target_boxes = gt_boxes[batch_idx, gt_idx]  # [P, 4]
        loss_box = self.box_loss(pred_boxes, target_boxes, reduction="sum") / num_pos

        obj_target = torch.zeros_like(obj_logits)
        if self.iou_objectness:
            obj_target[batch_idx, loc_idx] = paired_iou(pred_boxes.detach(), target_boxes)
        else:
            obj_target[batch_idx, loc_idx] = 1.0
        loss_obj = F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="sum") / num_pos

        cls_target = F.one_hot(gt_labels[batch_idx, gt_idx], self.num_classes).to(cls_logits.dtype)  # [P, K]
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits[batch_idx, loc_idx], cls_target,
                                                      reduction="sum") / num_pos

        return {"loss_box": loss_box, "loss_obj": loss_obj, "loss_cls": loss_cls}, (batch_idx, loc_idx, gt_idx)


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of row i of boxes1 with row i of boxes2: [P, 4] xyxy, [P, 4] xyxy → [P] in 0..1.

    The diagonal of ``torchvision.ops.box_iou`` without its [P, P] matrix.
    """
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area1 + area2 - inter).clamp(min=1e-9)
