"""DETR's set criterion (Carion et al. 2020, §3.1): Hungarian matching, then per-pair losses.

For one decoder layer with predictions (logits [B, Q, K+1], boxes [B, Q, 4] cxcywh normalised) and the
matching σ from :class:`~cvpipe.matching.hungarian.HungarianMatcher`:

    loss_ce   = Σ_{b,q} w(c_bq) · (−log p̂_bq(c_bq)) / Σ_{b,q} w(c_bq)
                with c_bq = the matched target's class, or "no object" (index K) for unmatched queries,
                and w = 1 for real classes, ``eos_coef`` for "no object" (down-weights the Q − N negatives)
    loss_bbox = Σ_{matched} ‖b − b̂‖₁ / N_boxes
    loss_giou = Σ_{matched} (1 − GIoU(b, b̂)) / N_boxes

N_boxes = max(1, number of target boxes in the batch), averaged over processes under DDP.
The same three terms are computed on every intermediate decoder layer's outputs (auxiliary decoding
losses, §3.2), each layer matched on its own, and named ``loss_ce_<l>``, ``loss_bbox_<l>``, ``loss_giou_<l>``
for l = 0 .. L−2; and, when the model selects its queries from the encoder (two-stage, "enc_logits" [B, T, K+1]
and "enc_boxes" [B, T, 4] in the outputs), on the encoder's per-token predictions as ``loss_*_enc``, matched
one-to-one like the decoder's. The total is

    loss = Σ_layers (weight_ce · loss_ce + weight_bbox · loss_bbox + weight_giou · loss_giou)

Targets come in the detector contract (xyxy absolute pixels) and are normalised here with the input size
the model reports in ``outputs["image_whwh"]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from cvpipe.matching.hungarian import HungarianMatcher, MatchIndices, build_matcher


def normalise_targets(targets: list[dict[str, torch.Tensor]], image_whwh: torch.Tensor,
                      num_classes: int) -> list[dict[str, torch.Tensor]]:
    """xyxy absolute pixels → cxcywh in 0..1 (the matcher's and the box losses' frame); checks shapes, labels
    and that every box has positive width and height (GIoU is undefined otherwise)."""
    out = []
    for i, t in enumerate(targets):
        boxes, labels = t["boxes"], t["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(labels) != len(boxes):
            raise ValueError(f"targets[{i}]: boxes {tuple(boxes.shape)} and labels {tuple(labels.shape)} "
                             f"must be [N, 4] and [N]")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"targets[{i}]: labels {labels.tolist()} outside 0..{num_classes - 1}")
        degenerate = torch.nonzero((boxes[:, 2:] <= boxes[:, :2]).any(dim=1)).flatten()
        if len(degenerate):
            j = int(degenerate[0])
            raise ValueError(f"targets[{i}]: box {j} {boxes[j].tolist()} has non-positive width or height")
        norm = box_convert(boxes.float(), "xyxy", "cxcywh") / image_whwh.to(boxes.device)
        out.append({"boxes": norm, "labels": labels.long()})
    return out


class SetCriterion(nn.Module):
    """Matching + classification and box losses for DETR's outputs, on the last and every auxiliary layer.

    Args:
        num_classes: K foreground classes; the logits carry K+1 columns, the last is "no object".
        matcher: the one-to-one assignment (its λ costs may differ from the loss weights).
        eos_coef: relative CE weight of the "no object" class (DETR: 0.1).
        weight_ce, weight_bbox, weight_giou: loss weights (DETR: 1, 5, 2).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, *, eos_coef: float = 0.1,
                 weight_ce: float = 1.0, weight_bbox: float = 5.0, weight_giou: float = 2.0) -> None:
        super().__init__()
        self.num_classes, self.matcher = num_classes, matcher
        self.weights = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight)

    def _layer_losses(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                      num_boxes: float) -> dict[str, torch.Tensor]:
        """The three terms for one layer: logits [B, Q, K+1], boxes [B, Q, 4] cxcywh normalised."""
        indices: MatchIndices = self.matcher(logits, boxes, targets)
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(logits.device)
        src_idx = torch.cat([src for src, _ in indices]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, src_idx] = torch.cat(
            [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]).to(logits.device)
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes,
                                  weight=self.class_weight.to(logits.device))  # [B, K+1, Q] vs [B, Q]
        matched = boxes[batch_idx, src_idx].float()  # [M, 4]
        tgt_boxes = torch.cat([t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(targets, indices)])
        tgt_boxes = tgt_boxes.to(logits.device)  # [M, 4]
        loss_bbox = F.l1_loss(matched, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"),
                                              box_convert(tgt_boxes, "cxcywh", "xyxy")))  # [M]
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: dict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """outputs: the DETR dict ("pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4], "image_whwh" [4], optional
        "aux_logits" [L-1, B, Q, K+1] with "aux_boxes" [L-1, B, Q, 4], optional "enc_logits" [B, T, K+1] with
        "enc_boxes" [B, T, 4]); targets: B dicts, "boxes" [N, 4] xyxy absolute px,
        "labels" [N] int64. Returns the named terms (floats as 0-dim tensors) plus "loss"."""
        norm_targets = normalise_targets(targets, outputs["image_whwh"], self.num_classes)
        num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=outputs["pred_logits"].device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_boxes)
            num_boxes = num_boxes / torch.distributed.get_world_size()
        num_boxes_value = max(float(num_boxes), 1.0)
        layers = [("", outputs["pred_logits"], outputs["pred_boxes"])]
        if "aux_logits" in outputs:
            layers += [(f"_{l}", logits, boxes) for l, (logits, boxes)
                       in enumerate(zip(outputs["aux_logits"], outputs["aux_boxes"]))]
        if "enc_logits" in outputs:
            layers.append(("_enc", outputs["enc_logits"], outputs["enc_boxes"]))
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=outputs["pred_logits"].device)
        for suffix, logits, boxes in layers:  # each layer matched on its own
            for name, value in self._layer_losses(logits, boxes, norm_targets, num_boxes_value).items():
                terms[name + suffix] = value
                total = total + self.weights[name] * value
        terms["loss"] = total
        return terms


def build_criterion(num_classes: int, *, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                    eos_coef: float = 0.1, weight_ce: float = 1.0, weight_bbox: float = 5.0,
                    weight_giou: float = 2.0) -> SetCriterion:
    """DETR's defaults: matcher costs (1, 5, 2), loss weights (1, 5, 2), eos_coef 0.1."""
    matcher = build_matcher(cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou)
    return SetCriterion(num_classes, matcher, eos_coef=eos_coef, weight_ce=weight_ce, weight_bbox=weight_bbox,
                        weight_giou=weight_giou)
