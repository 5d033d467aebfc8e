"""COCO segmentations ↔ binary masks, through pycocotools.mask (RLE)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygon list, uncompressed or compressed RLE) → bool mask [H, W]."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = pycocotools_rle(segmentation)
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """bool mask [H, W] → compressed RLE with a JSON-safe ``counts`` string."""
    return encode_masks(mask[None])[0]


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """bool masks [D, H, W] → D compressed RLEs with JSON-safe ``counts`` strings (one pycocotools call)."""
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(np.asarray(masks).transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def pycocotools_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """A compressed RLE with ``counts`` as bytes, as pycocotools' decode/iou/area want (JSON gives a str)."""
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
