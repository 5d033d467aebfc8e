"""SSD default boxes, their assignment to ground truth, and the offset encoding (Liu et al. 2016, §2.2).

Default boxes. Feature map k of m (k = 1..m) carries, at every cell centre ((i + 0.5) / f_k, (j + 0.5) / f_k),
boxes of scale s_k = s_min + (s_max − s_min)(k − 1)/(m − 1) (fractions of the image side):
width s_k·√a_r and height s_k/√a_r for a_r ∈ {1, a, 1/a} per extra aspect ratio a, plus an extra square box of
scale s'_k = √(s_k · s_{k+1}); s_{m+1} extends the same arithmetic step. The tiling is torchvision's
:class:`~torchvision.models.detection.anchor_utils.DefaultBoxGenerator`: per feature map, location-major, the
``2 + 2·len(aspect_ratios[k])`` boxes of one location consecutive. Output boxes are xyxy in absolute pixels.

Assignment (:func:`assign_default_boxes`, §2.2 "Matching strategy"): every ground-truth box first gets a default
box of its own by greedy bipartite matching on IoU (the pair with the highest IoU is matched first, both are
removed, repeat), whatever that IoU is; then every other default box whose best IoU with any ground truth is
≥ ``iou_threshold`` is matched to that (argmax) ground truth. All others are background (:data:`BACKGROUND`).
Two ground truths wanting the same best default box: the one with the higher IoU takes it (ties: the lower
ground-truth index) and the other gets its best *remaining* default box, so each ground truth always keeps
at least one positive as long as there are at least as many default boxes as ground truths.

Offsets (:func:`encode_offsets` / :func:`decode_offsets`): torchvision's ``BoxCoder`` with weights (10, 10, 5, 5),
i.e. the SSD "variances" (0.1, 0.2): for a default box d and a ground truth g, both in (cx, cy, w, h),
t = (10 (g_cx − d_cx)/d_w, 10 (g_cy − d_cy)/d_h, 5 log(g_w/d_w), 5 log(g_h/d_h)).
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.ops import box_iou

BACKGROUND = -1  # matched index of a default box assigned to no ground truth
BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / SSD variances (0.1, 0.1, 0.2, 0.2)
_BOX_CODER = BoxCoder(weights=BOX_CODER_WEIGHTS)


def ssd_scales(num_levels: int, min_scale: float, max_scale: float) -> list[float]:
    """s_1..s_{m+1} of the SSD scale rule: s_k = s_min + (s_max − s_min)(k − 1)/(m − 1), one step extrapolated.

    The extra s_{m+1} only sets the last level's extra square box s'_m = √(s_m s_{m+1}).
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be ≥ 1, got {num_levels}")
    if not 0.0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale ≤ max_scale, got min_scale={min_scale}, max_scale={max_scale}")
    step = (max_scale - min_scale) / (num_levels - 1) if num_levels > 1 else max_scale - min_scale
    return [min_scale + step * k for k in range(num_levels)] + [max_scale + step]


class DefaultBoxes:
    """Default boxes for a list of feature-map grids (a thin wrapper over torchvision's DefaultBoxGenerator).

    aspect_ratios: per level, the extra aspect ratios a (each adds a and 1/a); ``boxes_per_location[k]`` =
    2 + 2·len(aspect_ratios[k]). Scales follow :func:`ssd_scales`. Boxes are not clipped to the image
    (only their width/height fractions to ≤ 1, as torchvision does).
    """

    def __init__(self, *, aspect_ratios: list[list[float]], min_scale: float, max_scale: float) -> None:
        self.generator = DefaultBoxGenerator(aspect_ratios, scales=ssd_scales(len(aspect_ratios), min_scale,
                                                                            max_scale), clip=True)
        self.boxes_per_location = self.generator.num_anchors_per_location()

    @property
    def scales(self) -> list[float]:
        return list(self.generator.scales)

    def __call__(self, grid_sizes: list[tuple[int, int]], image_size: tuple[int, int],
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
        """grid_sizes: per level (H_k, W_k); image_size: (H, W) pixels → default boxes [A, 4] xyxy absolute px.

        A = Σ_k H_k · W_k · boxes_per_location[k].
        """
        if len(grid_sizes) != len(self.boxes_per_location):
            raise ValueError(f"got {len(grid_sizes)} feature maps for {len(self.boxes_per_location)} box levels")
        cxcywh = self.generator._grid_default_boxes([list(g) for g in grid_sizes], list(image_size), dtype=dtype)
        scale = torch.tensor([image_size[1], image_size[0]], dtype=dtype)  # (W, H): fractions → pixels
        boxes = torch.cat([(cxcywh[:, :2] - 0.5 * cxcywh[:, 2:]) * scale,
                           (cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]) * scale], dim=1)  # [A, 4] xyxy
        return boxes if device is None else boxes.to(device)


@torch.no_grad()
def assign_from_iou(iou: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Matched ground-truth index per default box from IoU matrices (rules in the module docstring).

    iou: [B, G, A] (images × ground truths × default boxes) or [G, A]; a row of negative values marks a
    padding slot (no ground truth), so images with different numbers of boxes share one tensor.
    Returns int64 [B, A] (or [A]): index in 0..G-1, or :data:`BACKGROUND`.
    """
    if iou.dim() == 2:
        return assign_from_iou(iou.unsqueeze(0), iou_threshold)[0]
    batch, num_gt, num_boxes = iou.shape
    matches = torch.full((batch, num_boxes), BACKGROUND, dtype=torch.int64, device=iou.device)
    if num_gt == 0 or num_boxes == 0:
        return matches
    best_gt = iou.argmax(dim=1)  # [B, A]; ties → lowest GT index
    best_iou = iou.gather(1, best_gt.unsqueeze(1)).squeeze(1)  # [B, A]
    matches = torch.where(best_iou >= iou_threshold, best_gt, matches)
    # Forced matches: greedy bipartite matching per image, highest-IoU pair first (argmax: first flat
    # index, i.e. lowest GT then lowest box, on ties). Taken rows/columns and padding are negative.
    work = iou.clone()
    for _ in range(min(num_gt, num_boxes)):
        flat = work.flatten(1).argmax(dim=1)  # [B]
        value = work.flatten(1).gather(1, flat.unsqueeze(1)).squeeze(1)
        images = torch.nonzero(value >= 0).squeeze(1)  # images with an unmatched ground truth left
        if images.numel() == 0:
            break
        gt, box = flat[images] // num_boxes, flat[images] % num_boxes
        matches[images, box] = gt
        work[images, gt, :] = -1.0
        work[images, :, box] = -1.0
    return matches


@torch.no_grad()
def assign_default_boxes(gt_boxes: list[torch.Tensor] | torch.Tensor, default_boxes: torch.Tensor,
                         iou_threshold: float = 0.5) -> torch.Tensor:
    """Per-image ground truth → matched GT index per default box.

    gt_boxes: one [G, 4] tensor, or a list of B tensors [G_i, 4] (G_i may be 0), xyxy absolute;
    default_boxes: [A, 4] xyxy absolute. Returns int64 [A] (single tensor) or [B, A] (list); a batch is
    matched in one padded tensor and gives the same result as matching each image alone.
    """
    if isinstance(gt_boxes, torch.Tensor):
        return assign_default_boxes([gt_boxes], default_boxes, iou_threshold)[0]
    device = default_boxes.device
    counts = torch.tensor([len(b) for b in gt_boxes], dtype=torch.int64)
    num_gt = int(counts.max()) if len(gt_boxes) else 0
    iou = torch.full((len(gt_boxes), num_gt, default_boxes.shape[0]), -1.0, device=device)  # padding: -1
    if num_gt:
        image = torch.repeat_interleave(torch.arange(len(gt_boxes)), counts)  # [ΣG]
        slot = torch.arange(len(image)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        all_boxes = torch.cat([b.reshape(-1, 4) for b in gt_boxes]).float().to(device)
        iou[image.to(device), slot.to(device)] = box_iou(all_boxes, default_boxes.float())  # [ΣG, A]
    return assign_from_iou(iou, iou_threshold)


def encode_offsets(gt_boxes: torch.Tensor, default_boxes: torch.Tensor) -> torch.Tensor:
    """gt_boxes [N, 4], default_boxes [N, 4] (paired rows, xyxy absolute) → regression targets [N, 4]."""
    return _BOX_CODER.encode_single(gt_boxes, default_boxes)


def decode_offsets(offsets: torch.Tensor, default_boxes: torch.Tensor) -> torch.Tensor:
    """offsets [..., A, 4], default_boxes [A, 4] xyxy absolute → boxes [..., A, 4] xyxy absolute (inverse of encode).

    log-size offsets are clamped at log(1000/16) (torchvision's guard against exp overflow).
    """
    shape = offsets.shape
    flat = offsets.reshape(-1, shape[-2], 4)  # [B, A, 4]
    refs = default_boxes.unsqueeze(0).expand(flat.shape[0], -1, -1)  # [B, A, 4]
    boxes = _BOX_CODER.decode_single(flat.reshape(-1, 4), refs.reshape(-1, 4).to(flat.dtype))
    return boxes.reshape(shape)
