"""Bipartite (Hungarian) matching between a set of predictions and the ground-truth set, as in DETR.

Carion et al. 2020, eq. 1: for image b with Q predictions and N targets, find the injection σ that minimises
Σ_i C(y_i, ŷ_σ(i)) with the pair cost

    C_ij = λ_class · (−p̂_j(c_i)) + λ_L1 · ‖b_i − b̂_j‖₁ + λ_GIoU · (−GIoU(b_i, b̂_j))

where p̂_j = softmax(logits_j) over K+1 classes (the last one is "no object"), and boxes b are normalised
cxcywh in 0..1 (GIoU is computed on their xyxy form). The assignment is solved exactly per image with
:func:`scipy.optimize.linear_sum_assignment`.

Guarantee: each prediction is matched at most once and each target at most once; an image yields exactly
``min(num_queries, num_targets)`` pairs; predictions left unmatched are trained towards "no object".
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]  # per image: (prediction idx [M], target idx [M]), int64


def matching_cost(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, tgt_labels: torch.Tensor,
                  tgt_boxes: torch.Tensor, *, cost_class: float, cost_bbox: float, cost_giou: float) -> torch.Tensor:
    """Pair cost C [P, N] between P predictions and N targets (see module docstring).

    pred_logits: [P, K+1] raw logits; pred_boxes: [P, 4] cxcywh normalised;
    tgt_labels: [N] int64 in 0..K-1; tgt_boxes: [N, 4] cxcywh normalised.
    """
    prob = pred_logits.float().softmax(-1)  # [P, K+1]
    pred_boxes = pred_boxes.float()
    tgt_boxes = tgt_boxes.float()
    class_term = -prob[:, tgt_labels]  # [P, N]; −p̂ rather than −log p̂, as in DETR (commensurate with box terms)
    l1_term = torch.cdist(pred_boxes, tgt_boxes, p=1)  # [P, N]
    giou_term = -generalized_box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"),
                                     box_convert(tgt_boxes, "cxcywh", "xyxy"))  # [P, N]
    return cost_class * class_term + cost_bbox * l1_term + cost_giou * giou_term


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image; stateless and gradient-free.

    Args:
        cost_class, cost_bbox, cost_giou: the λ weights of the pair cost (DETR: 1, 5, 2).
    """

    def __init__(self, *, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0 (cost_class, cost_bbox, cost_giou)")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def forward(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                targets: list[dict[str, torch.Tensor]]) -> MatchIndices:
        """Match each image's queries to its targets.

        pred_logits: [B, Q, K+1]; pred_boxes: [B, Q, 4] cxcywh normalised;
        targets: B dicts with "labels" [N_b] int64 and "boxes" [N_b, 4] cxcywh normalised (N_b may be 0).
        Returns B pairs (pred_idx [M_b], tgt_idx [M_b]) of int64 CPU tensors, M_b = min(Q, N_b),
        sorted by pred_idx.
        """
        batch, num_queries = pred_logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"targets: {len(targets)} dicts for a batch of {batch} predictions")
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        # One cost matrix for the whole batch (cheap, vectorised), then one assignment per image.
        cost = matching_cost(pred_logits.flatten(0, 1), pred_boxes.flatten(0, 1),
                             torch.cat([t["labels"] for t in targets]), torch.cat([t["boxes"] for t in targets]),
                             cost_class=self.cost_class, cost_bbox=self.cost_bbox, cost_giou=self.cost_giou)
        cost = cost.view(batch, num_queries, -1).cpu()  # [B, Q, ΣN]
        indices = []
        for b, block in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(block[b].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


def build_matcher(*, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> HungarianMatcher:
    return HungarianMatcher(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou)
