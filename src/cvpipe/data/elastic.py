"""Elastic deformation for the batched augmentation (:mod:`cvpipe.data.batch_augment`).

Simard et al. (2003) and the U-Net paper (Ronneberger et al. 2015): random displacement vectors on a coarse
``g x g`` grid (U-Net: 3 x 3, Gaussian with 10 px std on 572 px tiles), upsampled bicubically to a smooth dense
field. Per image, ``z ~ N(0, I)`` of shape [2, g, g] (x then y), ``elastic_std`` a fraction of the image side::

    d_n = bicubic_{g x g -> H x W}(2 · elastic_std · z)       # [2, H, W], normalised units (px · 2 / size)
    grid(q) = theta q + d_n(q)                                # output q samples the source at the affine
                                                              # pre-image moved by d

so a coarse point moves by ``elastic_std · size · z`` px (std ``elastic_std · W`` in x, ``· H`` in y) and the field
is smooth between them (``align_corners=True``: the coarse points sit on the outer pixel centres, the middle one at
the image centre). The displacement is added to the sampling grid the affine warp already builds (scaled by the
padded frame's ``size / (size + 2)`` like ``theta``), so images and label maps move through one ``grid_sample``
each, as without it: images bilinear or nearest, label maps nearest with the exposed border = ``ignore_index``.
``elastic_std = 0`` draws nothing and is the plain affine path exactly. The forward map of the deformation has no
closed form, so boxes cannot follow it: elastic deformation is for label maps (semantic segmentation) only, and a
batch with boxes or per-image targets is a ValueError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def elastic_displacement(coarse: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """coarse displacements [B, 2, g, g] (x, y; fractions of the image side) → dense field [B, 2, H, W] in
    normalised ``grid_sample`` units (2 · fraction), bicubic with the coarse points on the outer pixel centres."""
    return F.interpolate(coarse * 2.0, size=(height, width), mode="bicubic", align_corners=True)
