"""Loss of the YOLACT-style instance segmenter (:mod:`cvpipe.models.yolact`).

The detection terms are the YOLO-style loss unchanged (:class:`cvpipe.losses.yolo.YoloLoss`, same positives
from :func:`cvpipe.matching.grid_assignment.assign_grid`). YOLACT's mask term is added on those positives.
For a positive location a matched to ground-truth instance g (restricted to instances whose source gave a
mask), with prototypes P of the image and coefficients c_a:

    m_a(u)   = σ(P(u)^T c_a)                          assembled mask on the prototype grid, pixel u
    M̃_g(u)  = area-average of the GT mask over the image pixels of proto cell u   (soft target in [0, 1])
    B_g      = {u : centre of cell u inside GT box g}  (YOLACT crops with the GT box while training)

    L_mask = (1/N_m) Σ_{a ∈ P_m} (1/max(1, |B_g|)) Σ_{u ∈ B_g} BCE(m_a(u), M̃_g(u))

N_m = max(1, |P_m|). Normalising by the box area (YOLACT §3.3) keeps small objects from being drowned by big
ones. Positives are capped at ``max_mask_positives`` per batch (a random subset, as YOLACT's 100 per image)
to bound memory. Total:

    L = λ_box L_box + λ_obj L_obj + λ_cls L_cls + λ_mask L_mask          (YOLACT: λ_mask = 6.125)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvpipe.losses.yolo import YoloLoss
from cvpipe.postprocess.instance_masks import box_crop


class YolactLoss(YoloLoss):
    """outputs of ``YolactSegmenter.forward`` + targets (boxes, labels, masks uint8 [N, S, S], has_mask [N])
    → {"loss_box", "loss_obj", "loss_cls", "loss_mask", "loss"}."""

    def __init__(self, *, num_classes: int, weight_box: float = 5.0, weight_obj: float = 1.0,
                 weight_cls: float = 1.0, weight_mask: float = 6.125, max_mask_positives: int = 1024,
                 center_radius: float = 2.5, size_boundary_factor: float = 4.0) -> None:
        super().__init__(num_classes=num_classes, weight_box=weight_box, weight_obj=weight_obj,
                         weight_cls=weight_cls, center_radius=center_radius,
                         size_boundary_factor=size_boundary_factor)
        if max_mask_positives < 1:
            raise ValueError(f"max_mask_positives must be ≥ 1, got {max_mask_positives}")
        self.weights["loss_mask"] = weight_mask
        self.max_mask_positives = max_mask_positives

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        for i, target in enumerate(targets):
            if "masks" not in target or "has_mask" not in target:
                raise ValueError(f"target {i} has no 'masks'/'has_mask': instance segmentation needs mask targets")
        terms, (batch_idx, loc_idx, gt_idx) = self.detection_terms(outputs, targets)
        terms["loss_mask"] = self.mask_term(outputs["protos"].float(), outputs["mask_coeffs"].float(), targets,
                                            batch_idx, loc_idx, gt_idx)
        terms["loss"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

    def mask_term(self, protos: torch.Tensor, coeffs: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                  batch_idx: torch.Tensor, loc_idx: torch.Tensor, gt_idx: torch.Tensor) -> torch.Tensor:
        """L_mask of the module docstring. protos [B, k, H_p, W_p], coeffs [B, A, k]; positives as index tensors."""
        flags = torch.zeros(len(targets), max([1] + [len(t["has_mask"]) for t in targets]), dtype=torch.bool,
                            device=batch_idx.device)  # [B, N] padded "this instance has a mask"
        for i, target in enumerate(targets):
            flags[i, : len(target["has_mask"])] = target["has_mask"]
        keep = torch.nonzero(flags[batch_idx, gt_idx]).squeeze(1)
        if len(keep) > self.max_mask_positives:
            keep = keep[torch.randperm(len(keep), device=keep.device)[: self.max_mask_positives]]
        if len(keep) == 0:
            return protos.sum() * 0.0  # keeps the graph (and DDP/AMP) happy on a batch without masks
        keep = keep[torch.argsort(batch_idx[keep], stable=True)]  # grouped by image, for the per-image slots
        batch_idx, loc_idx, gt_idx = batch_idx[keep], loc_idx[keep], gt_idx[keep]
        batch, proto_h, proto_w = protos.shape[0], *protos.shape[-2:]
        # every image's instances in one flat list: global row of instance g of image b = first[b] + g
        counts = torch.tensor([len(t["boxes"]) for t in targets], device=batch_idx.device)
        rows = (counts.cumsum(0) - counts)[batch_idx] + gt_idx  # [P]
        all_masks = torch.cat([t["masks"] for t in targets])  # [ΣN, S, S], prepare letterboxes to one size
        image_h, image_w = all_masks.shape[-2:]
        gt_masks = F.interpolate(all_masks[rows].float().unsqueeze(1), size=(proto_h, proto_w),
                                 mode="area")[:, 0]  # [P, H_p, W_p] covered fraction
        # P_b c_a for every positive as one batched product: coefficients padded per image [B, P_max, k]
        per_image = torch.bincount(batch_idx, minlength=batch)
        slot = torch.arange(len(batch_idx), device=batch_idx.device) - (per_image.cumsum(0) - per_image)[batch_idx]
        padded = coeffs.new_zeros(batch, int(slot.max()) + 1, coeffs.shape[-1])
        padded = padded.index_put((batch_idx, slot), coeffs[batch_idx, loc_idx])
        logits = torch.bmm(padded, protos.flatten(2))[batch_idx, slot].view(-1, proto_h, proto_w)  # [P, H_p, W_p]
        # proto cells whose centre (in image px) lies inside the GT box are counted
        boxes = torch.cat([t["boxes"] for t in targets]).float()[rows]
        in_box = box_crop(boxes, (proto_h, proto_w), cell=(image_h / proto_h, image_w / proto_w)).float()
        bce = F.binary_cross_entropy_with_logits(logits, gt_masks, reduction="none")
        per_positive = (bce * in_box).sum(dim=(1, 2)) / in_box.sum(dim=(1, 2)).clamp(min=1.0)
        return per_positive.sum() / len(keep)
