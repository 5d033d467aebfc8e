"""From U-Net probabilities to cleaned label maps: thresholding/argmax, small-component removal, hole filling.

Label maps are int arrays [H, W] with 0 = background and k = class k (binary masks: bool or {0, 1}).
Connectivity: a class's connected components are 8-connected (a diagonal step joins two pixels, so the thin
diagonal edges of triangles and stars stay one component) and holes, i.e. background regions, are 4-connected,
the dual pair that :func:`scipy.ndimage.binary_fill_holes` also uses, so on a binary mask our hole filling
equals it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
BACKGROUND = 0


def probabilities_to_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """probs float [..., C, H, W] (channel axis third from the end) → labels int64 [..., H, W].

    Binary (C = 1, sigmoid probabilities p): label = 1 where p ≥ threshold (0.5 when None), else 0.
    Multi-class (C = K + 1 softmax probabilities, channel 0 = background):
        threshold None: label = argmax_c p_c (ties to the lower index);
        threshold t:    label = argmax_{c ≥ 1} p_c where 1 − p_0 ≥ t (the pixel is foreground with
                        probability at least t), else 0. Lower t trades false negatives for false positives,
                        the knob the tune stage sweeps on the validation split.
    """
    probs = np.asarray(probs)
    if probs.ndim < 3:
        raise ValueError(f"probs must be [..., C, H, W], got shape {probs.shape}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if probs.shape[-3] == 1:
        return (probs[..., 0, :, :] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    if threshold is None:
        return probs.argmax(axis=-3).astype(np.int64)
    labels = probs[..., 1:, :, :].argmax(axis=-3) + 1
    return np.where(1.0 - probs[..., 0, :, :] >= threshold, labels, BACKGROUND).astype(np.int64)


def remove_small_components(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Per class, 8-connected components of fewer than ``min_area`` pixels become background (0).

    Why background and not the surrounding class: a small spurious blob on background (the common case) has
    no surrounding class, and guessing one for a blob inside another object needs a neighbourhood vote that can
    be wrong where objects touch; leaving it 0 makes it a hole of the enclosing object, which
    :func:`fill_enclosed_holes` then gives to that object when asked. Components of other classes are never altered.
    """
    out = labels.copy()
    for cls in np.unique(labels):
        if cls == BACKGROUND:
            continue
        components, count = ndimage.label(labels == cls, structure=EIGHT_CONNECTED)
        areas = np.bincount(components.ravel(), minlength=count + 1)  # areas[0] counts the other pixels
        small = np.flatnonzero(areas < min_area)
        out[np.isin(components, small[small > 0])] = BACKGROUND
    return out


def fill_enclosed_holes(labels: np.ndarray) -> np.ndarray:
    """Background regions (4-connected) that do not touch the image border and whose 4-neighbours all belong
    to one class k become class k. A background region enclosed by two or more classes (a gap between touching
    objects) is left as it is, since no single object owns it. On a binary mask this is
    :func:`scipy.ndimage.binary_fill_holes`.
    """
    regions, count = ndimage.label(labels == BACKGROUND, structure=FOUR_CONNECTED)
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    # (region, neighbouring class) pairs over every 4-neighbour step from a background pixel to a labelled one
    pairs = []
    for a, b in ((regions[:-1], labels[1:]), (regions[1:], labels[:-1]),
                 (regions[:, :-1], labels[:, 1:]), (regions[:, 1:], labels[:, :-1])):
        step = (a > 0) & (b != BACKGROUND)
        pairs.append(np.stack([a[step], b[step]], axis=1).astype(np.int64))
    pairs = np.concatenate(pairs)
    if len(pairs) == 0:
        return labels.copy()
    pairs = np.unique(pairs, axis=0)  # [P, 2] distinct (region, class), sorted by region
    regions_seen, first, neighbours = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    fill = np.zeros(count + 1, dtype=np.int64)  # region id → class to fill with (0 = leave)
    enclosed = (neighbours == 1) & ~np.isin(regions_seen, border)
    fill[regions_seen[enclosed]] = pairs[first[enclosed], 1]
    filled = fill[regions]  # [H, W] class for hole pixels, 0 elsewhere
    return np.where(filled > 0, filled, labels).astype(labels.dtype)


def clean_mask(mask: np.ndarray, *, min_area: int, fill_holes: bool = False) -> np.ndarray:
    """Remove components smaller than ``min_area`` pixels (→ background, see :func:`remove_small_components`),
    then, if ``fill_holes``, fill enclosed background (see :func:`fill_enclosed_holes`).

    mask: label map int [H, W] (0..K) or binary mask (bool or {0, 1}) [H, W]; the result has the same shape
    and dtype. ``min_area`` ≤ 1 removes nothing.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    if min_area < 0:
        raise ValueError(f"min_area must be ≥ 0, got {min_area}")
    if mask.dtype == bool:
        return clean_mask(mask.astype(np.uint8), min_area=min_area, fill_holes=fill_holes).astype(bool)
    if mask.size and mask.min() < 0:
        raise ValueError(f"mask has negative label {mask.min()}")
    out = remove_small_components(mask, min_area) if min_area > 1 else mask.copy()
    return fill_enclosed_holes(out) if fill_holes else out


def labels_from_probabilities(probs: np.ndarray, *, threshold: float | None, min_area: int,
                              fill_holes: bool) -> np.ndarray:
    """Label maps [N, S, S] after thresholding/argmax and connected-component cleaning (min_area 0 = none)."""
    labels = probabilities_to_labels(probs.astype(np.float32), threshold)
    if min_area <= 0 and not fill_holes:
        return labels
    return np.stack([clean_mask(m, min_area=min_area, fill_holes=fill_holes) for m in labels])


def probabilities_from_logits(logits: np.ndarray) -> np.ndarray:
    """Segmentation logits [..., C, H, W] → probabilities: sigmoid when C = 1 (binary mode), else softmax over C."""
    from scipy.special import expit, softmax

    logits = np.asarray(logits, dtype=np.float64)
    return expit(logits) if logits.shape[-3] == 1 else softmax(logits, axis=-3)


def unletterbox(labels: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    """A label map on the letterboxed square (content top-left, scaled by ``scale``) back onto the original
    H × W grid, nearest neighbour."""
    from PIL import Image

    height, width = size
    inner = labels[: max(1, round(height * scale)), : max(1, round(width * scale))]
    return np.asarray(Image.fromarray(inner.astype(np.int32)).resize((width, height), Image.NEAREST))
