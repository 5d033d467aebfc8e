"""SSD MultiBox loss with hard negative mining (Liu et al. 2016, eq. 1 and §2.2 "Hard negative mining").

Per batch, with default boxes assigned by :func:`cvpipe.matching.default_boxes.assign_default_boxes`
(Pos = default boxes matched to a ground truth, N = |Pos| summed over the batch):

    L_conf = Σ_{i∈Pos} CE(c_i, y_i + 1) + Σ_{i∈Neg} CE(c_i, 0)
    L_loc  = Σ_{i∈Pos} Σ_{m∈(cx,cy,w,h)} smoothL1_β=1(l_i^m − ĝ_i^m)
    loss_conf = L_conf / max(N, 1),  loss_loc = L_loc / max(N, 1)
    loss = weight_conf · loss_conf + weight_loc · loss_loc          (paper: α = weight_loc = 1)

c_i: the K+1 logits of default box i (0 = background), y_i: the 0-based class of its ground truth,
ĝ_i: the ground truth's offsets encoded against the default box (:func:`encode_offsets`). Neg, per image:
the min(neg_pos_ratio · |Pos_image|, #unmatched default boxes) unmatched default boxes with the highest
background loss CE(c_i, 0) (ties broken by a stable sort, lower index first). An image without ground truth
therefore contributes nothing, and a batch without any (N = 0) gives loss_loc = loss_conf = 0 (max(N, 1)
keeps it finite).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvpipe.matching.default_boxes import BACKGROUND, assign_default_boxes, encode_offsets


def hard_negative_mask(background_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: int) -> torch.Tensor:
    """Which default boxes serve as negatives: bool [B, A].

    background_loss: [B, A] CE(c_i, 0) per default box; positive: bool [B, A]. Per image b, exactly
    min(neg_pos_ratio · positive[b].sum(), (~positive[b]).sum()) non-positive boxes with the highest loss.
    """
    num_neg = torch.minimum(neg_pos_ratio * positive.sum(dim=1), (~positive).sum(dim=1))  # [B]
    ranked = background_loss.detach().masked_fill(positive, float("-inf"))
    order = ranked.argsort(dim=1, descending=True, stable=True)  # [B, A]
    rank = order.argsort(dim=1)  # position of each box in the descending order
    return rank < num_neg.unsqueeze(1)


class SSDMultiBoxLoss(nn.Module):
    """MultiBox loss (module docstring). Call with the SSD outputs dict and the detector-contract targets.

    outputs: "cls_logits" [B, A, K+1], "bbox_regression" [B, A, 4], "default_boxes" [A, 4] xyxy absolute.
    targets: list of B dicts, "boxes" [N_i, 4] float xyxy absolute, "labels" [N_i] int64 in 0..K-1.
    Returns {"loss_loc", "loss_conf", "loss"} (scalars).
    """

    def __init__(self, *, iou_threshold: float = 0.5, neg_pos_ratio: int = 3, weight_loc: float = 1.0,
                 weight_conf: float = 1.0) -> None:
        super().__init__()
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be ≥ 0, got {neg_pos_ratio}")
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.weight_loc = weight_loc
        self.weight_conf = weight_conf

    @staticmethod
    def _targets(targets: list[dict[str, torch.Tensor]], default_boxes: torch.Tensor, num_classes: int,
                 iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """→ class targets int64 [B, A] (0 = background, c + 1 = class c), matched GT boxes [B, A, 4]."""
        for index, target in enumerate(targets):
            labels, boxes = target["labels"], target["boxes"]
            if boxes.shape != (labels.shape[0], 4):
                raise ValueError(f"targets[{index}]['boxes'] must be [{labels.shape[0]}, 4], got {tuple(boxes.shape)}")
        device = default_boxes.device
        counts = torch.tensor([len(t["labels"]) for t in targets], device=device)
        # Concatenated ground truth plus one dummy row, so background boxes can gather row 0 harmlessly.
        all_labels = torch.cat([t["labels"].to(device) for t in targets] + [counts.new_zeros(1)])  # [ΣG + 1]
        all_boxes = torch.cat([t["boxes"].to(default_boxes) for t in targets] + [default_boxes.new_zeros(1, 4)])
        bad = torch.nonzero((all_labels < 0) | (all_labels >= num_classes)).squeeze(1)
        if bad.numel():
            image = int(torch.searchsorted(counts.cumsum(0), bad[0], right=True))
            raise ValueError(f"targets[{image}]['labels'] must lie in 0..{num_classes - 1}, "
                             f"got {targets[image]['labels'].tolist()}")
        matched = assign_default_boxes([t["boxes"] for t in targets], default_boxes, iou_threshold)  # [B, A]
        offsets = (counts.cumsum(0) - counts).unsqueeze(1)  # [B, 1]: first global row of each image
        rows = torch.where(matched == BACKGROUND, 0, matched + offsets)  # [B, A]
        classes = torch.where(matched == BACKGROUND, 0, all_labels[rows] + 1)
        return classes, all_boxes[rows]

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        cls_logits, regression = outputs["cls_logits"], outputs["bbox_regression"]  # [B, A, K+1], [B, A, 4]
        default_boxes = outputs["default_boxes"]  # [A, 4]
        if len(targets) != cls_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {cls_logits.shape[0]} images")
        cls_targets, matched_boxes = self._targets(targets, default_boxes, cls_logits.shape[-1] - 1,
                                                   self.iou_threshold)
        positive = cls_targets > 0  # [B, A]
        normaliser = positive.sum().clamp(min=1).to(cls_logits.dtype)

        pos_idx = positive.nonzero(as_tuple=True)
        anchors = default_boxes.unsqueeze(0).expand_as(matched_boxes)[pos_idx]  # [P, 4]
        loc_targets = encode_offsets(matched_boxes[pos_idx], anchors)  # [P, 4]
        loss_loc = F.smooth_l1_loss(regression[pos_idx].float(), loc_targets, reduction="sum") / normaliser

        ce = F.cross_entropy(cls_logits.float().flatten(0, 1), cls_targets.flatten(), reduction="none")
        ce = ce.view_as(cls_targets)  # [B, A]; for unmatched boxes this is the background loss
        negative = hard_negative_mask(ce, positive, self.neg_pos_ratio)
        loss_conf = (ce * (positive | negative)).sum() / normaliser
        return {"loss_loc": loss_loc, "loss_conf": loss_conf,
                "loss": self.weight_loc * loss_loc + self.weight_conf * loss_conf}
