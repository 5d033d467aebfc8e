"""Instance masks from prototypes and coefficients (YOLACT's assembly), for PyTorch and ONNX outputs alike.

For detection d with box b_d and coefficients c_d ∈ R^k, and prototypes P ∈ R^{k×H_p×W_p}:

    m_d   = P^T c_d                                    logits on the prototype grid       [H_p, W_p]
    m̂_d   = bilinear_upsample(m_d → H×W)               (align_corners=False)              [H, W]
    p_d(u) = σ(m̂_d(u)) · [centre of pixel u inside b_d]   (YOLACT's crop: nothing outside the box)
    mask_d = p_d > τ                                    τ = mask threshold (tuned on validation)

Upsampling the logits before the sigmoid keeps edges smooth, and cropping with the detected box removes
prototype activity that belongs to neighbouring objects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mask_probabilities(protos: torch.Tensor | np.ndarray, coeffs: torch.Tensor | np.ndarray,
                       boxes: torch.Tensor | np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
    """Cropped mask probabilities of one image's detections.

    protos [k, H_p, W_p]; coeffs [D, k]; boxes [D, 4] xyxy px of the image; image_size (H, W).
    Returns float32 [D, H, W] in 0..1 (0 outside each box).
    """
    protos, coeffs, boxes = (torch.as_tensor(x, dtype=torch.float32) for x in (protos, coeffs, boxes))
    height, width = image_size
    if len(coeffs) == 0:
        return torch.zeros((0, height, width))
    if coeffs.shape[1] != protos.shape[0] or boxes.shape != (len(coeffs), 4):
        raise ValueError(f"coeffs {tuple(coeffs.shape)}, protos {tuple(protos.shape)} and boxes "
                         f"{tuple(boxes.shape)} do not fit together ([D, k], [k, H, W], [D, 4])")
    logits = (coeffs @ protos.flatten(1)).view(len(coeffs), 1, *protos.shape[1:])
    probs = torch.sigmoid(F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False))[:, 0]
    return probs * box_crop(boxes, (height, width))


def box_crop(boxes: torch.Tensor, grid: tuple[int, int], cell: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """YOLACT's crop: bool [D, H, W], True where the centre of grid cell (i, j) lies inside box d.

    boxes [D, 4] xyxy in image px; grid (H, W) cells of ``cell`` = (height, width) px each, so cell (i, j) has its
    centre at ((j + 0.5) · cell_w, (i + 0.5) · cell_h): pixels for the final masks, prototype cells in the loss.
    """
    (height, width), (cell_h, cell_w) = grid, cell
    xs = (torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5) * cell_w
    ys = (torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5) * cell_h
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])  # [D, W]
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])  # [D, H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def assemble_masks(protos: torch.Tensor | np.ndarray, coeffs: torch.Tensor | np.ndarray,
                   boxes: torch.Tensor | np.ndarray, image_size: tuple[int, int], threshold: float) -> np.ndarray:
    """Binary masks bool [D, H, W] = :func:`mask_probabilities` > ``threshold``."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"mask threshold must be in (0, 1), got {threshold}")
    return (mask_probabilities(protos, coeffs, boxes, image_size) > threshold).numpy()
