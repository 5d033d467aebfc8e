"""Anchor → ground-truth assignment of torchvision's RetinaNet and FCOS, image by image, outside the losses.

Both return int64 [B, A]: the index of the matched ground-truth box of the image (0..N_i − 1), or a sentinel
(torchvision's :class:`~torchvision.models.detection._utils.Matcher` constants):
:data:`BACKGROUND` (−1, a negative) and, for RetinaNet only, :data:`IGNORED` (−2, neither: no loss at all).
An image without boxes is all :data:`BACKGROUND`. Inputs: ``gt_boxes`` a list of B tensors [N_i, 4] xyxy px,
``anchors`` [A, 4] xyxy px (the same for every image: inputs are prepared squares).

RetinaNet (:func:`match_by_iou`, torchvision's ``RetinaNet.compute_loss`` matching): with IoU(g, a),
    a ↦ argmax_g IoU  if max_g IoU ≥ fg_iou;  IGNORED if bg_iou ≤ max < fg_iou;  BACKGROUND if max < bg_iou;
then every box also takes the anchors of its highest IoU (ties included) that it would otherwise lose
("low-quality matches"), so each box has a positive however small it is.

FCOS (:func:`match_fcos`, torchvision's ``FCOS.compute_loss`` matching): the anchor "point" p (centre of a square
anchor of side s_a = its level's stride) is a candidate for box g when
    max(|p − c_g|) < r · s_a                         (centre sampling, ``center_sampling_radius`` r = 1.5)
    and p lies strictly inside g
    and lo_a < max(p_x − x1, p_y − y1, x2 − p_x, y2 − p_y) < hi_a,   lo_a = 4 s_a (0 on the first level),
                                                                     hi_a = 8 s_a (∞ on the last level);
among candidates the box of smallest area wins; no candidate → BACKGROUND.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

BACKGROUND = Matcher.BELOW_LOW_THRESHOLD  # -1
IGNORED = Matcher.BETWEEN_THRESHOLDS  # -2


@torch.no_grad()
def match_by_iou(gt_boxes: list[torch.Tensor], anchors: torch.Tensor, *, fg_iou: float = 0.5,
                 bg_iou: float = 0.4) -> torch.Tensor:
    """RetinaNet's assignment (module docstring) → int64 [B, A]."""
    if not 0.0 <= bg_iou <= fg_iou <= 1.0:
        raise ValueError(f"need 0 ≤ bg_iou ≤ fg_iou ≤ 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
    matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
    matched = torch.full((len(gt_boxes), anchors.shape[0]), BACKGROUND, dtype=torch.int64, device=anchors.device)
    for image, boxes in enumerate(gt_boxes):
        if len(boxes):
            matched[image] = matcher(box_iou(boxes.to(anchors), anchors))  # IoU [N_i, A]
    return matched


@torch.no_grad()
def match_fcos(gt_boxes: list[torch.Tensor], anchors: torch.Tensor, num_anchors_per_level: list[int], *,
               center_sampling_radius: float = 1.5) -> torch.Tensor:
    """FCOS's assignment (module docstring) → int64 [B, A]; ``num_anchors_per_level`` sums to A."""
    if sum(num_anchors_per_level) != anchors.shape[0]:
        raise ValueError(f"num_anchors_per_level {num_anchors_per_level} does not sum to {anchors.shape[0]} anchors")
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [A, 2]
    sides = anchors[:, 2] - anchors[:, 0]  # [A]
    lower, upper = sides * 4, sides * 8
    lower[:num_anchors_per_level[0]] = 0  # the finest level takes every small box
    upper[-num_anchors_per_level[-1]:] = float("inf")  # the coarsest every large one
    matched = torch.full((len(gt_boxes), anchors.shape[0]), BACKGROUND, dtype=torch.int64, device=anchors.device)
    for image, boxes in enumerate(gt_boxes):
        if not len(boxes):
            continue
        boxes = boxes.to(anchors)
        gt_centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
        offsets = (centres[:, None, :] - gt_centres[None]).abs().max(dim=2).values  # [A, N] Chebyshev distance
        near = offsets < center_sampling_radius * sides[:, None]
        x, y = centres[:, 0:1], centres[:, 1:2]  # [A, 1]
        distances = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=2)
        reach = distances.max(dim=2).values  # [A, N]
        candidate = near & (distances.min(dim=2).values > 0) & (reach > lower[:, None]) & (reach < upper[:, None])
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [N]
        preference, best = (candidate.float() * (1e8 - areas[None, :])).max(dim=1)  # smallest area first
        matched[image] = torch.where(preference < 1e-5, BACKGROUND, best)
    return matched
