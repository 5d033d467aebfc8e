"""Which grid locations of an anchor-free detector are positives for which ground-truth box.

FCOS-style assignment (Tian et al., 2019, §3.2 and "center sampling") with one extra rule that guarantees
every box a positive. Inputs describe the A locations of all pyramid levels, flattened in the model's order:

- ``points`` [A, 2]: location centres (x, y) in absolute pixels, ``((j + 0.5)·s, (i + 0.5)·s)`` for cell (i, j)
  of a level with stride s;
- ``strides`` [A]: the stride s of each location's level;
- ``size_lo``, ``size_hi`` [A]: the range of box sizes (max side, pixels) the location's level is responsible for.

Location a is a *candidate* for box g = (x1, y1, x2, y2), centre c, max side m, when

    lo_a ≤ m < hi_a                                                   (scale range: one level per box)
    and ( a is the cell containing c on its level:  ⌊p_x/s⌋ = ⌊c_x/s⌋ and ⌊p_y/s⌋ = ⌊c_y/s⌋
          or ( x1 < p_x < x2 and y1 < p_y < y2                         (inside the box)
               and |p_x − c_x| < r·s and |p_y − c_y| < r·s ) )         (centre sampling, radius r strides)

Among the candidate boxes of a location: the centre-cell rule wins first, then the smallest area (FCOS's
"ambiguous location → smallest box"), then the lowest box index. A location with no candidate is
:data:`BACKGROUND`.

Guarantee: every valid box with positive size gets at least one positive location, unless another box of the
same level has its centre in the same cell and a smaller area (or equal area and lower index). With the
default levels (strides 8, 16; boundary 4·stride) and objects of 16-46 px this cannot happen once box centres
are at least 16 px apart along x or y (they then never share a cell of either level).

The scale ranges partition [0, ∞) (:func:`level_size_ranges`) so each box belongs to exactly one level: a
level regresses sizes within a factor of ~2 of each other, and no two levels compete for the same object,
which keeps duplicate detections across levels (only NMS could remove them) rare.
"""

from __future__ import annotations

import torch

BACKGROUND = -1  # matched index of a location that is no box's positive
BOUNDARY_FACTOR = 4.0  # level s takes boxes with max side up to 4·s (FCOS's ranges halved: small images here)
DATA_STRIDES_BASE = (8, 16)  # the built-in detectors' default levels: ``strides: auto`` never drops one
DATA_STRIDES_MAX = 32  # prepared sizes are multiples of 32, and torchvision backbones tap at most stride 32


def level_size_ranges(strides: torch.Tensor,
                      boundary_factor: float = BOUNDARY_FACTOR) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-location size range [lo, hi) of its level.

    Levels sorted by stride s_0 < s_1 < … < s_{L-1}: level l takes boxes with max side in
    [f·s_{l-1}, f·s_l), the first level from 0 and the last up to ∞ (f = ``boundary_factor``).
    strides: [A] → (lo [A], hi [A]) float32 pixels.
    """
    if boundary_factor <= 0:
        raise ValueError(f"boundary_factor must be positive, got {boundary_factor}")
    levels = torch.unique(strides.float())  # sorted ascending
    bounds = levels * boundary_factor
    lo_levels = torch.cat([bounds.new_zeros(1), bounds[:-1]])
    hi_levels = torch.cat([bounds[:-1], bounds.new_full((1,), float("inf"))])
    index = torch.searchsorted(levels, strides.float())  # [A] level index of each location
    return lo_levels[index], hi_levels[index]


def strides_for_objects(largest_long_side_px: float | None, *, base: tuple[int, ...] = DATA_STRIDES_BASE,
                        boundary_factor: float = BOUNDARY_FACTOR, max_stride: int = DATA_STRIDES_MAX
                        ) -> tuple[int, ...]:
    """The level set of ``strides: auto``: ``base`` extended by consecutive powers of two until the coarsest
    level's range starts at the large objects, i.e. the smallest s_L ≥ base[-1] with

        boundary_factor · s_L ≥ M        (M: the largest class's high-percentile long side at the prepared size)

    capped at ``max_stride``. Under :func:`level_size_ranges` the last level takes every box from
    f·s_{L-1} up, so without this a 120-px object of a 128-px image sits on the stride-16 level, whose cells see
    far less than the object; with it, it goes to a stride-32 level whose receptive field spans it. ``None``
    (no box statistics: classification or box-less data, or arrays prepared before the statistics existed)
    keeps ``base``."""
    strides = list(base)
    if largest_long_side_px is None:
        return tuple(strides)
    while strides[-1] < max_stride and boundary_factor * strides[-1] < largest_long_side_px:
        strides.append(2 * strides[-1])
    return tuple(strides)


@torch.no_grad()
def assign_grid(points: torch.Tensor, strides: torch.Tensor, size_lo: torch.Tensor, size_hi: torch.Tensor,
                gt_boxes: torch.Tensor, gt_valid: torch.Tensor, *, center_radius: float = 2.5) -> torch.Tensor:
    """Matched box index per location.

    points [A, 2] (x, y) px; strides, size_lo, size_hi [A]; gt_boxes [B, N, 4] xyxy absolute px, padded;
    gt_valid [B, N] bool (False for padding rows). Returns matched [B, A] int64 in 0..N-1, or
    :data:`BACKGROUND`. Pure tensor function, no state, no gradients.
    """
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be [B, N, 4], got {tuple(gt_boxes.shape)}")
    if gt_valid.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_valid {tuple(gt_valid.shape)} does not match gt_boxes {tuple(gt_boxes.shape)}")
    if center_radius <= 0:
        raise ValueError(f"center_radius must be positive, got {center_radius}")
    batch, num_gt = gt_valid.shape
    num_loc = points.shape[0]
    if num_gt == 0:
        return torch.full((batch, num_loc), BACKGROUND, dtype=torch.long, device=points.device)

    px, py = points[:, 0].view(1, -1, 1), points[:, 1].view(1, -1, 1)  # [1, A, 1]
    s = strides.float().view(1, -1, 1)
    x1, y1, x2, y2 = (gt_boxes[..., i].unsqueeze(1) for i in range(4))  # each [B, 1, N]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    size = torch.maximum(x2 - x1, y2 - y1)
    area = (x2 - x1) * (y2 - y1)

    in_level = (size >= size_lo.view(1, -1, 1)) & (size < size_hi.view(1, -1, 1))  # [B, A, N]
    centre_cell = (torch.floor(px / s) == torch.floor(cx / s)) & (torch.floor(py / s) == torch.floor(cy / s))
    inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
    near = ((px - cx).abs() < center_radius * s) & ((py - cy).abs() < center_radius * s)
    candidate = in_level & (centre_cell | (inside & near)) & gt_valid.unsqueeze(1)  # [B, A, N]

    # lexicographic (centre cell first, then area, then index): smallest area within each group, min()
    # returning the first index among equal costs
    cost_centre, best_centre = torch.where(candidate & centre_cell, area, float("inf")).min(dim=2)  # [B, A]
    cost_other, best_other = torch.where(candidate & ~centre_cell, area, float("inf")).min(dim=2)  # [B, A]
    background = torch.full_like(best_centre, BACKGROUND)
    return torch.where(torch.isfinite(cost_centre), best_centre,
                       torch.where(torch.isfinite(cost_other), best_other, background))


def pad_targets(targets: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """List of {"boxes" [N_i, 4], "labels" [N_i]} → boxes [B, N, 4], labels [B, N] (padding 0), valid [B, N].

    N = max N_i (0 when every image is empty).
    """
    num = max((len(t["boxes"]) for t in targets), default=0)
    first = targets[0]["boxes"] if targets else torch.zeros(0, 4)
    boxes = first.new_zeros((len(targets), num, 4), dtype=torch.float32)
    labels = torch.zeros((len(targets), num), dtype=torch.long, device=first.device)
    valid = torch.zeros((len(targets), num), dtype=torch.bool, device=first.device)
    for i, target in enumerate(targets):  # shapes only: no tensor work per image
        n = len(target["boxes"])
        if target["boxes"].shape != (n, 4) or target["labels"].shape != (n,):
            raise ValueError(f"target {i}: boxes {tuple(target['boxes'].shape)} and labels "
                             f"{tuple(target['labels'].shape)} must be [N, 4] and [N]")
    if num:  # row-major boolean assignment fills image after image, the order of the concatenation
        counts = torch.tensor([len(t["boxes"]) for t in targets], device=first.device)
        valid = torch.arange(num, device=first.device) < counts[:, None]
        boxes[valid] = torch.cat([t["boxes"] for t in targets]).to(boxes)
        labels[valid] = torch.cat([t["labels"] for t in targets]).to(labels)
    return boxes, labels, valid
