"""YOLACT's mask assembly (:mod:`cvpipe.postprocess.instance_masks`) in numpy, for the serving path that must
not import torch.

Bilinear resizing with ``align_corners=False`` (``F.interpolate``'s convention) is linear and separable, so it
is two matrix products: output row y reads source rows i0, i1 = i0 + 1 (clamped) at

    s = max((y + 1/2) · H_p / H - 1/2, 0),   i0 = ⌊s⌋,   weights (1 - (s - i0), s - i0),

and the same for columns; with R [H, H_p] and C [W, W_p] holding those weights, the resized logits of
detection d are R · m_d · Cᵀ. Then σ and YOLACT's crop, as in the PyTorch module. ``tests/test_nms.py`` checks
the probabilities against the PyTorch path.
"""

from __future__ import annotations

import numpy as np


def interpolation_matrix(source: int, target: int) -> np.ndarray:
    """float32 [target, source]: row t holds the bilinear (align_corners=False) weights of output index t."""
    scale = np.float32(source / target)
    position = np.maximum((np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(position.astype(np.int64), source - 1)
    high = np.minimum(low + 1, source - 1)
    upper = np.minimum(position - low, 1).astype(np.float32)
    matrix = np.zeros((target, source), np.float32)
    rows = np.arange(target)
    np.add.at(matrix, (rows, low), 1 - upper)
    np.add.at(matrix, (rows, high), upper)
    return matrix


def box_crop(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [D, H, W]: True where the centre of pixel (i, j) lies inside box d (xyxy px)."""
    height, width = size
    xs = np.arange(width, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(height, dtype=np.float32) + np.float32(0.5)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    return inside_y[:, :, None] & inside_x[:, None, :]


def mask_probabilities(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray,
                       image_size: tuple[int, int]) -> np.ndarray:
    """Cropped mask probabilities float32 [D, H, W] of one image's detections: protos [k, H_p, W_p], coeffs
    [D, k], boxes [D, 4] xyxy px of the image, image_size (H, W)."""
    protos, coeffs, boxes = (np.asarray(x, dtype=np.float32) for x in (protos, coeffs, boxes))
    height, width = image_size
    if len(coeffs) == 0:
        return np.zeros((0, height, width), np.float32)
    if coeffs.shape[1] != protos.shape[0] or boxes.shape != (len(coeffs), 4):
        raise ValueError(f"coeffs {coeffs.shape}, protos {protos.shape} and boxes {boxes.shape} do not fit "
                         "together ([D, k], [k, H, W], [D, 4])")
    logits = np.tensordot(coeffs, protos, axes=1)  # [D, H_p, W_p]
    rows = interpolation_matrix(protos.shape[1], height)
    cols = interpolation_matrix(protos.shape[2], width)
    resized = rows @ logits @ cols.T  # [D, H, W]
    with np.errstate(over="ignore"):  # exp of very negative logits: inf → probability 0, as intended
        probs = (1 / (1 + np.exp(-resized))).astype(np.float32)
    return probs * box_crop(boxes, (height, width))
