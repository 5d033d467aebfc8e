"""Batched augmentation of a whole training batch on its own device (CPU or CUDA, same code): flips,
scale/translate(/rotate) affine, optional elastic deformation (label maps only) and colour jitter, with boxes,
instance masks and semantic masks moved by the same per-image matrices. Opt-in; the datasets' per-sample
``transforms.v2`` path is unchanged.

The augmentation family and parameter meanings follow :func:`cvpipe.data.detection_dataset.detection_augment`
(RandomHorizontalFlip, RandomVerticalFlip, RandomAffine(translate, scale), ColorJitter, ClampBoundingBoxes,
SanitizeBoundingBoxes(min_size=2)); one random draw per image from a caller's ``torch.Generator``.

Geometry
--------
Pixel coordinates are continuous, origin at the top-left corner of the image: pixel (row i, column j) covers
``[j, j+1) x [i, i+1)`` with its centre at ``(j + 0.5, i + 0.5)``; boxes are ``xyxy`` absolute px in the same
frame (a box ``(x0, y0, x1, y1)`` covers columns ``x0 .. x1 - 1``). With ``c = (W/2, H/2)`` the image centre,
flip ``F = diag(±1, ±1)``, scale ``s``, rotation ``R(a)`` (``a`` degrees, counter-clockwise on screen, as
torchvision) and translation ``t`` (px), each image gets the forward 2x3 matrix ``A = [L | c + t - L c]`` with
``L = R(a) s F``, i.e. a source point ``p`` lands at ``q = L (p - c) + c + t`` (flip, then scale/rotate about the
centre, then shift: the order of ``detection_augment``).

``F.affine_grid`` with ``align_corners=False`` uses normalised coordinates ``n = 2 p / size - 1`` per axis, so
``-1`` and ``+1`` are the outer *edges* of the border pixels and pixel centres sit at ``(2 j + 1) / W - 1``; in
centred form ``p - c = D n`` with ``D = diag(W/2, H/2)``. ``grid_sample`` needs, for every output location, the
source location, so the grid matrix is the inverse map written in normalised coordinates::

    theta = [ D^-1 L^-1 D  |  -D^-1 L^-1 t ]          # [B, 2, 3]

Images are sampled from a copy padded by a one-pixel ring of ``fill`` with ``padding_mode="border"``: every
source point off the image then reads the ring, so the exposed border is the letterbox grey (``fill=114``,
``PAD_VALUE`` of prepare), and bilinear blends the edge pixels with it, exactly as zero padding of
``image - fill`` would. In the padded frame the normalised source coordinate is ``n' = n · W / (W + 2)`` (and the
same with ``H``), so ``theta``'s rows are scaled by those factors. Instance masks are sampled the same way with
nearest sampling and a ring of 0; semantic masks with a ring of ``IGNORE_INDEX`` (255).

Elastic deformation (``elastic_std`` > 0, label maps only): a smooth displacement field added to the affine
sampling grid; its definition and math are in :mod:`cvpipe.data.elastic`.

Boxes: the 4 corners of each box go through ``A``, the enclosing axis-aligned box is taken (exact for flips,
scale and translation; a superset under rotation, as torchvision), clipped to ``[0, W] x [0, H]``, and boxes
narrower or shorter than ``min_size`` px after clipping are dropped together with every per-box field of their
target (labels, masks, mask flags).

Colour
------
Brightness ``b``, contrast ``k``, saturation ``s`` (factors drawn uniformly in ``[1 - x, 1 + x]``) and hue ``h``
(drawn in ``[-x, x]``, fraction of a full turn) are each an affine map of the RGB vector, so per image they
compose into one 3x3 matrix ``M`` and offset ``o``, applied with a single ``baddbmm``:

- brightness ``v -> b v``;
- contrast ``v -> k v + (1 - k) mean(gray)`` with the image's mean grey value (as ``ColorJitter``);
- saturation ``v -> s v + (1 - s) gray(v)``, ``gray = 0.2989 R + 0.587 G + 0.114 B``;
- hue: a rotation by ``2 pi h`` about the grey axis in YIQ space (a linear stand-in for the HSV shift of
  ``ColorJitter``; the two agree closely for the small ``|h| <= 0.05`` used here).

Colour is applied to the padded source, ring included, before the warp: a per-pixel affine map commutes with
nearest sampling exactly, and with bilinear sampling (whose weights sum to 1) up to where the clamp to
``[0, 255]`` cuts, so this equals ``detection_augment``'s order (ColorJitter after RandomAffine) while the warp,
the one pass that allocates, comes last. Differences from ``ColorJitter``, all for speed: a fixed order
(brightness, contrast, saturation, hue) instead of a random permutation, one clamp to ``[0, 255]`` after all
instead of one after each step, and the contrast mean taken from the source image on every 8th row and 4th
column (512 pixels of a 128 px image: its error is well under one grey level).

Cost per batch: four passes over ``[B, 3, H + 2, W + 2]`` float32 (convert into the padded buffer, one
``baddbmm`` for the colour, clamp, ``grid_sample``), plus the grid; ``out_dtype=torch.uint8`` adds a conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvpipe.data.elastic import elastic_displacement

Target = dict[str, torch.Tensor]

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@dataclass(frozen=True)
class AugmentParams:
    """One draw per image, every field [B] float32 on the generator's device."""

    hflip: torch.Tensor      # 1.0 = flipped left-right
    vflip: torch.Tensor      # 1.0 = flipped top-bottom
    angle: torch.Tensor      # degrees, counter-clockwise
    scale: torch.Tensor      # isotropic factor
    tx: torch.Tensor         # px, + = right
    ty: torch.Tensor         # px, + = down
    brightness: torch.Tensor  # factor, 1 = unchanged
    contrast: torch.Tensor    # factor, 1 = unchanged
    saturation: torch.Tensor  # factor, 1 = unchanged
    hue: torch.Tensor         # fraction of a turn, 0 = unchanged
    elastic: torch.Tensor | None = None  # [B, 2, g, g] coarse displacements (x, y), fractions of the side; None: off

    def to(self, device: torch.device) -> "AugmentParams":
        return AugmentParams(**{k: None if v is None else v.to(device) for k, v in self.__dict__.items()})

    @classmethod
    def identity(cls, batch: int) -> "AugmentParams":
        zeros, ones = torch.zeros(batch), torch.ones(batch)
        return cls(zeros, zeros, zeros, ones, zeros, zeros, ones, ones, ones, zeros)


@dataclass(frozen=True)
class AugmentedBatch:
    """images: [B, 3, H, W] (uint8, or float32 0..255 with ``out_dtype=torch.float32``); targets: per image
    dict as given, boxes moved and per-box fields filtered; boxes/valid: padded form [B, M, 4] / [B, M] bool;
    semantic: [B, H, W] same dtype as given; matrices: forward pixel maps [B, 2, 3]."""

    images: torch.Tensor
    matrices: torch.Tensor
    targets: list[Target] | None = None
    boxes: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    semantic: torch.Tensor | None = None


def affine_matrices(params: AugmentParams, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward pixel matrices A [B, 2, 3], grid_sample thetas [B, 2, 3]); see the module docstring."""
    rad = params.angle * (math.pi / 180.0)
    cos, sin = torch.cos(rad) * params.scale, torch.sin(rad) * params.scale
    fx, fy = 1.0 - 2.0 * params.hflip, 1.0 - 2.0 * params.vflip
    # L = R(a) s F; counter-clockwise on screen with y pointing down
    lin = torch.stack([torch.stack([cos * fx, sin * fy], -1), torch.stack([-sin * fx, cos * fy], -1)], -2)  # [B,2,2]
    centre = lin.new_tensor([width / 2.0, height / 2.0])
    shift = torch.stack([params.tx, params.ty], -1)  # [B, 2]
    forward = torch.cat([lin, (centre + shift - (lin @ centre)).unsqueeze(-1)], -1)  # [B, 2, 3]
    half = lin.new_tensor([width / 2.0, height / 2.0])
    inv = torch.linalg.inv(lin)  # [B, 2, 2]
    inv_norm = inv * half.view(1, 1, 2) / half.view(1, 2, 1)  # D^-1 L^-1 D
    offset = -(inv @ shift.unsqueeze(-1)).squeeze(-1) / half  # -D^-1 L^-1 t
    return forward, torch.cat([inv_norm, offset.unsqueeze(-1)], -1)


def sampling_grid(theta: torch.Tensor, height: int, width: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` built by broadcasting: a [B, H, W, 2] view of
    planar [B, 2, H, W] storage (``out`` when given), cheaper to write and accepted as is by ``grid_sample``."""
    batch = theta.shape[0]
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    planes = torch.empty(batch, 2, height, width, device=theta.device, dtype=theta.dtype) if out is None else out
    for r in range(2):  # one broadcast add per output coordinate, written in place
        torch.add((theta[:, r, 0, None] * xs + theta[:, r, 2, None]).view(batch, 1, width),
                  (theta[:, r, 1, None] * ys).view(batch, height, 1), out=planes[:, r])
    return planes.permute(0, 2, 3, 1)


def transform_boxes(boxes: torch.Tensor, matrices: torch.Tensor, height: int, width: int,
                    min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """boxes [..., 4] xyxy px, forward matrices [..., 2, 3] (leading dims broadcast with the boxes') → (enclosing
    boxes of the moved corners clipped to the image [..., 4], keep [...] bool: width and height ≥ ``min_size``
    after clipping)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                           torch.stack([x0, y1], -1), torch.stack([x1, y1], -1)], -2)  # [..., 4, 2]
    lin, shift = matrices[..., None, :, :2], matrices[..., None, :, 2]
    moved = (lin @ corners.unsqueeze(-1)).squeeze(-1) + shift  # [..., 4, 2]
    lo, hi = moved.amin(-2), moved.amax(-2)  # [..., 2]
    limit = boxes.new_tensor([width, height])
    lo, hi = torch.minimum(lo.clamp(min=0), limit), torch.minimum(hi.clamp(min=0), limit)
    out = torch.cat([lo, hi], -1)
    keep = ((hi - lo) >= min_size).all(-1)
    return out, keep


def colour_matrices(params: AugmentParams, mean_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (M [B, 3, 3], o [B, 3]) with jittered = M v + o; ``mean_rgb`` [B, 3] of the image it acts on."""
    batch, dev = mean_rgb.shape[0], mean_rgb.device
    gray = torch.tensor(GRAY_WEIGHTS, device=dev)
    eye = torch.eye(3, device=dev).expand(batch, 3, 3)
    mat, off, mean = eye.clone(), torch.zeros(batch, 3, device=dev), mean_rgb
    steps = []
    b, k, s = (p.view(batch, 1, 1) for p in (params.brightness, params.contrast, params.saturation))
    steps.append((eye * b, torch.zeros(batch, 3, device=dev)))
    steps.append(None)  # contrast: its offset depends on the mean grey at that point
    steps.append((eye * s + (1 - s) * gray.view(1, 1, 3), torch.zeros(batch, 3, device=dev)))
    if bool((params.hue != 0).any()):
        yiq = torch.tensor(_RGB_TO_YIQ, device=dev)
        ang = params.hue * (2 * math.pi)
        rot = torch.zeros(batch, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = ang.cos(), -ang.sin(), ang.sin(), ang.cos()
        hue_mat = torch.where((params.hue == 0).view(batch, 1, 1), eye, torch.linalg.inv(yiq) @ rot @ yiq)
        steps.append((hue_mat, torch.zeros(batch, 3, device=dev)))
    for step in steps:
        if step is None:
            mean_gray = (mean * gray).sum(-1, keepdim=True)  # [B, 1]
            step = (eye * k, (1 - k.view(batch, 1)) * mean_gray.expand(batch, 3))
        step_mat, step_off = step
        mat = step_mat @ mat
        off = (step_mat @ off.unsqueeze(-1)).squeeze(-1) + step_off
        mean = (step_mat @ mean.unsqueeze(-1)).squeeze(-1) + step_off
    return mat, off


class BatchAugment:
    """Augments whole batches; defaults are those of ``detection_augment`` (except the border, letterbox grey).

    interpolation: "nearest" (``RandomAffine``'s default, and the fastest) or "bilinear", for images only;
    masks are always nearest. Exact no-op when every range is zero and flip probabilities are 0.
    elastic_std (fraction of the image side; 0 = off) and elastic_grid (coarse points per side): the elastic
    deformation of the module docstring, for images with ``semantic`` label maps only.
    """

    def __init__(self, *, hflip: float = 0.5, vflip: float = 0.5, degrees: float = 0.0,
                 translate: tuple[float, float] = (0.1, 0.1), scale: tuple[float, float] = (0.8, 1.2),
                 brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25, hue: float = 0.04,
                 fill: float = 114.0, ignore_index: int = 255, min_size: float = 2.0,
                 interpolation: str = "nearest", out_dtype: torch.dtype = torch.uint8, elastic_std: float = 0.0,
                 elastic_grid: int = 3) -> None:
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        if out_dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"out_dtype must be torch.uint8 or torch.float32, got {out_dtype}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be 0 < low <= high, got {scale}")
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if elastic_std < 0 or elastic_grid < 2:
            raise ValueError(f"elastic_std must be >= 0 and elastic_grid >= 2, got {elastic_std}, {elastic_grid}")
        self.elastic_std, self.elastic_grid = elastic_std, elastic_grid
        self.hflip, self.vflip, self.degrees, self.translate, self.scale = hflip, vflip, degrees, translate, scale
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.fill, self.ignore_index, self.min_size = fill, ignore_index, min_size
        self.interpolation, self.out_dtype = interpolation, out_dtype
        # float scratch buffers reused across calls of one batch shape: allocating ~10 MB per call costs page
        # faults comparable to the arithmetic itself on CPU; nothing returned ever aliases them
        self._scratch: dict[tuple, torch.Tensor] = {}

    def _buffer(self, name: str, like: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """A float32 scratch tensor of ``like``'s shape and strides (or a contiguous ``shape``)."""
        key = (name, like.device, tuple(like.shape), like.stride(), shape)
        if key not in self._scratch:
            self._scratch = {k: v for k, v in self._scratch.items() if k[0] != name}  # one shape per name
            self._scratch[key] = (torch.empty_like(like, dtype=torch.float32) if shape is None
                                  else torch.empty(shape, device=like.device, dtype=torch.float32))
        return self._scratch[key]

    def draw(self, batch: int, height: int, width: int, generator: torch.Generator) -> AugmentParams:
        """One draw per image, on the generator's device (so a seed gives the same draws on any data device)."""
        u = torch.rand(batch, 10, generator=generator, device=generator.device)
        elastic = None
        if self.elastic_std > 0:  # drawn after u: the affine and colour draws are those of elastic_std = 0
            elastic = self.elastic_std * torch.randn(batch, 2, self.elastic_grid, self.elastic_grid,
                                                     generator=generator, device=generator.device)

        def span(col: int, lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * u[:, col]

        return AugmentParams(
            hflip=(u[:, 0] < self.hflip).float(), vflip=(u[:, 1] < self.vflip).float(),
            angle=span(2, -self.degrees, self.degrees), scale=span(3, *self.scale),
            tx=span(4, -self.translate[0], self.translate[0]) * width,
            ty=span(5, -self.translate[1], self.translate[1]) * height,
            brightness=span(6, 1 - self.brightness, 1 + self.brightness),
            contrast=span(7, 1 - self.contrast, 1 + self.contrast),
            saturation=span(8, 1 - self.saturation, 1 + self.saturation), hue=span(9, -self.hue, self.hue),
            elastic=elastic)

    def __call__(self, images: torch.Tensor, targets: list[Target] | None = None, *,
                 boxes: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                 semantic: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 params: AugmentParams | None = None) -> AugmentedBatch:
        """images uint8 [B, 3, H, W] or [B, H, W, 3]; targets: per image {"boxes": [N, 4] xyxy px, ...} where every
        tensor with N rows is per-box (labels, has_mask) and "masks" [N, H, W] are instance masks; or padded
        ``boxes`` [B, M, 4] with ``valid`` [B, M] bool; ``semantic`` [B, H, W] class ids. Give ``generator`` (or
        fixed ``params``). With an elastic draw (``params.elastic``) only ``semantic`` may come with the images."""
        if images.dim() != 4 or 3 not in (images.shape[1], images.shape[-1]):
            raise ValueError(f"images must be [B, 3, H, W] or [B, H, W, 3], got {tuple(images.shape)}")
        nchw = images if images.shape[1] == 3 else images.permute(0, 3, 1, 2)
        batch, _, height, width = nchw.shape
        if params is None:
            if generator is None:
                raise ValueError("BatchAugment needs a torch.Generator (or explicit params)")
            params = self.draw(batch, height, width, generator)
        params = params.to(images.device)
        if params.elastic is not None and (targets is not None or boxes is not None):
            raise ValueError("elastic deformation moves label maps only: boxes cannot follow it (no closed-form "
                             "forward map); use it for semantic segmentation, without targets or boxes")
        forward, theta = affine_matrices(params, height, width)
        # source coordinates in the one-pixel-padded frame (see _padded), n' = n · size / (size + 2) per axis
        padded_scale = theta.new_tensor([width / (width + 2.0), height / (height + 2.0)])
        theta = theta * padded_scale.view(2, 1)
        planes = self._buffer("grid", nchw, (batch, 2, height, width))
        grid = sampling_grid(theta, height, width, out=planes)
        if params.elastic is not None:  # the smooth field joins the affine grid: no extra pass over the images
            planes.addcmul_(elastic_displacement(params.elastic, height, width), padded_scale.view(1, 2, 1, 1))

        # colour first, on the padded source (ring included): per-pixel affine maps commute with nearest
        # sampling, and with bilinear up to where the clamp cuts; the warp is then the last, allocating pass
        padded = self._padded("image", nchw, self.fill)  # float32 [B, 3, H + 2, W + 2]
        mean_rgb = padded[:, :, 1:-1:8, 1:-1:4].mean((2, 3))  # [B, 3], every 8th row, 4th column: plenty
        mat, off = colour_matrices(params, mean_rgb)
        half = 0.5 if self.out_dtype == torch.uint8 else 0.0  # round half up by the truncation to uint8 below
        flat = padded.view(batch, 3, -1)
        coloured = torch.baddbmm((off + half).unsqueeze(-1), mat, flat, out=self._buffer("colour", flat))
        coloured = coloured.clamp_(half, 255.0 + half)  # [0, 255] before the half: bilinear blends stay inside
        warped = F.grid_sample(coloured.view(padded.shape), grid, mode=self.interpolation, padding_mode="border",
                               align_corners=False)
        out = warped.to(torch.uint8) if self.out_dtype == torch.uint8 else warped

        result = {"images": out, "matrices": forward}
        if targets is not None:
            result["targets"] = self._targets(targets, forward, grid, height, width)
        if boxes is not None:
            if valid is None or valid.shape != boxes.shape[:2]:
                raise ValueError(f"padded boxes {tuple(boxes.shape)} need a valid mask [B, M]")
            moved, keep = transform_boxes(boxes.float(), forward[:, None], height, width, self.min_size)
            result["boxes"], result["valid"] = moved, valid & keep
        if semantic is not None:
            result["semantic"] = self._warp_labels("semantic", semantic.unsqueeze(1), grid,
                                                  float(self.ignore_index)).squeeze(1)
        return AugmentedBatch(**result)

    def _warp_labels(self, name: str, labels: torch.Tensor, grid: torch.Tensor, outside: float) -> torch.Tensor:
        """Integer maps [B, C, H, W] through the (padded-frame) grid, nearest; ``outside`` where the source is off
        the image."""
        warped = F.grid_sample(self._padded(name, labels, outside), grid, mode="nearest", padding_mode="border",
                               align_corners=False)
        return warped.to(labels.dtype)  # nearest copies exact small integers: no rounding needed

    def _padded(self, name: str, source: torch.Tensor, ring: float) -> torch.Tensor:
        """float32 copy of ``source`` [B, C, H, W] inside a one-pixel ring of ``ring``, in a reused buffer.

        ``grid_sample`` with ``padding_mode="border"`` on it gives ``ring`` wherever the source point is off the
        image, exactly as zero padding of ``source - ring`` would, without the two extra passes; the ring is
        written when the buffer is made, the interior on every call (the conversion pass there is anyway)."""
        batch, channels, height, width = source.shape
        key = (name, source.device, (batch, channels, height, width), ring)
        buffer = self._scratch.get(key)
        if buffer is None:
            self._scratch = {k: v for k, v in self._scratch.items() if k[0] != name}  # one shape per name
            buffer = torch.full((batch, channels, height + 2, width + 2), ring, device=source.device,
                                dtype=torch.float32)
            self._scratch[key] = buffer
        buffer[:, :, 1:-1, 1:-1].copy_(source)
        return buffer

    def _targets(self, targets: list[Target], forward: torch.Tensor, grid: torch.Tensor, height: int,
                 width: int) -> list[Target]:
        """Per-image targets moved: every image's boxes (and per-box fields) gathered into one flat tensor, moved
        and filtered at once, then split back per image."""
        if len(targets) != forward.shape[0]:
            raise ValueError(f"{forward.shape[0]} images but {len(targets)} targets")
        counts = [len(t["boxes"]) for t in targets]
        sizes = torch.tensor(counts)
        owner = torch.repeat_interleave(torch.arange(len(targets)), sizes).to(forward.device)  # [K] image of each box
        flat_boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets])
        moved, keep = transform_boxes(flat_boxes.to(forward), forward[owner], height, width, self.min_size)
        kept_counts = torch.zeros(len(targets), dtype=torch.long, device=keep.device).index_add_(
            0, owner, keep.long()).tolist()
        per_box = [name for name, v in targets[0].items() if name not in ("boxes", "masks") and torch.is_tensor(v)
                   and all(torch.is_tensor(t.get(name)) and t[name].dim() > 0 and len(t[name]) == n
                           for t, n in zip(targets, counts))]
        split = {"boxes": moved[keep].to(flat_boxes.dtype).split(kept_counts)}
        for name in per_box:  # labels, has_mask, ...: gathered once, filtered once, split per image
            split[name] = torch.cat([t[name] for t in targets]).to(keep.device)[keep].split(kept_counts)
        if any("masks" in t for t in targets):
            most = max(max(counts), 1)
            stack = forward.new_zeros(len(targets), most, height, width, dtype=torch.uint8)
            for i, t in enumerate(targets):
                if "masks" in t:
                    stack[i, :counts[i]] = t["masks"]
            warped = self._warp_labels("masks", stack, grid, 0.0)  # [B, M, H, W]
            first = torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes).to(owner.device)  # [K] image's first row
            slot = torch.arange(len(owner), device=owner.device) - first
            split["masks"] = warped[owner, slot][keep].split(kept_counts)
        out = []
        for i, t in enumerate(targets):
            item = {name: parts[i] for name, parts in split.items() if name != "masks" or "masks" in t}
            rest = [name for name in t if name not in item]  # fields only some images carry, or not per box
            if rest:
                k = keep[owner == i]
                item.update({name: (t[name][k] if torch.is_tensor(t[name]) and t[name].dim() > 0
                                    and len(t[name]) == counts[i] else t[name]) for name in rest})
            if "masks" in item:
                item["masks"] = item["masks"].to(t["masks"].dtype)
            out.append(item)
        return out
