"""One image of prepare: decode, letterbox, move its labels into prepared coordinates, cut its crops.

:func:`prepare_image` is what prepare's process pool runs (:mod:`cvpipe.data.parallel`): it takes a small,
picklable :class:`ImageJob` and returns an :class:`ImageResult` holding only the arrays the plan asks for, so the
pool moves no byte that is not written. It depends on nothing but its job, so 1 and N workers give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvpipe.data.image_files import open_rgb
from cvpipe.data.masks import decode_segmentation, encode_mask

PAD_VALUE = 114  # letterbox grey, the value YOLO-family preprocessing uses
IGNORE_INDEX = 255


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """Scale the longer side to ``size`` and pad right/bottom. Returns uint8 [S, S, 3] and the scale."""
    scale = size / max(image.width, image.height)
    if scale != 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    arr = np.asarray(image.convert("RGB"))
    out[: arr.shape[0], : arr.shape[1]] = arr
    return out, scale


def letterbox_mask(mask: np.ndarray, scale: float, size: int) -> np.ndarray:
    """A bool mask [H, W] through the same letterbox (nearest), bool [S, S]."""
    if scale != 1.0:
        h, w = mask.shape
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)) > 127
    out = np.zeros((size, size), bool)
    out[: mask.shape[0], : mask.shape[1]] = mask[:size, :size]
    return out


def object_crop(image: np.ndarray, box: np.ndarray, *, context: float, crop_size: int) -> np.ndarray:
    """Square crop centred on ``box`` (xyxy), side = context × longer box side, padded, resized."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(1.0, context * max(box[2] - box[0], box[3] - box[1]) / 2)  # ≥ 2 px: a tiny box still crops
    pil = Image.fromarray(image)
    crop = pil.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))  # pads with 0
    return np.asarray(crop.resize((crop_size, crop_size), Image.BILINEAR))


@dataclass(frozen=True)
class Annotation:
    """One source annotation, in source pixels (the canonical table's columns prepare reads)."""

    ann_id: int
    category_id: int
    x: float
    y: float
    w: float
    h: float
    iscrowd: int
    area: float
    segmentation: Any  # COCO polygons or RLE, or None


@dataclass(frozen=True)
class ImageJob:
    """What one worker needs for one image: the file, its source size, its annotations and what to return."""

    path: Path
    image_id: int
    file_name: str
    index: int  # row in the split's arrays
    height: int
    width: int
    annotations: tuple[Annotation, ...]
    image_size: int
    crop_size: int
    crop_context: float
    want_image: bool
    want_semantic: bool
    want_crops: bool


@dataclass
class ImageResult:
    """The image's rows of the split's arrays (only those asked for) and its COCO records.

    ``pixel_sum`` / ``pixel_sq_sum``: per-channel integer sums of the letterboxed pixels and of their squares
    (exact, so the train statistics do not depend on how images were spread over workers)."""

    image: np.ndarray | None
    semantic: np.ndarray | None
    coco_image: dict[str, Any]
    coco_annotations: list[dict[str, Any]]
    boxes: list[np.ndarray] = field(default_factory=list)  # float32 [4] xyxy, non-crowd objects in order
    labels: list[int] = field(default_factory=list)
    mask_rles: list[bytes | None] = field(default_factory=list)  # compressed RLE counts, None: box without mask
    crops: list[np.ndarray] = field(default_factory=list)
    pixel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    pixel_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))


def prepare_image(job: ImageJob) -> ImageResult:
    """Letterbox the image (upright 8-bit RGB, as validation checked it: EXIF orientation, grayscale, 16-bit,
    palette and alpha handled by :func:`open_rgb`), scale its boxes and masks by the same factor, and cut the
    crops of its non-crowd objects. Crowd regions go to the COCO records and the label map (as ignore) only."""
    size = job.image_size
    image, scale = letterbox(open_rgb(job.path), size)
    pixels = image.reshape(-1, 3).astype(np.int64)
    semantic = np.zeros((size, size), np.uint8) if job.want_semantic else None
    result = ImageResult(
        image=image if job.want_image else None, semantic=semantic,
        coco_image={"id": job.image_id, "file_name": job.file_name, "width": size, "height": size,
                    "index": job.index, "scale": scale},
        coco_annotations=[], pixel_sum=pixels.sum(axis=0), pixel_sq_sum=(pixels * pixels).sum(axis=0))
    for ann in job.annotations:
        box = np.clip(np.array([ann.x, ann.y, ann.x + ann.w, ann.y + ann.h], np.float32) * scale, 0, size)
        record = {"id": ann.ann_id, "image_id": job.image_id, "category_id": ann.category_id,
                  "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                  "iscrowd": ann.iscrowd, "area": ann.area * scale * scale}
        rle = None
        if ann.segmentation is not None:
            mask = letterbox_mask(decode_segmentation(ann.segmentation, job.height, job.width), scale, size)
            if semantic is not None:
                semantic[mask] = IGNORE_INDEX if ann.iscrowd else ann.category_id
            record["segmentation"], record["area"] = encode_mask(mask), float(mask.sum())
            rle = record["segmentation"]["counts"].encode("ascii")
        result.coco_annotations.append(record)
        if ann.iscrowd:
            continue  # crowd regions are ignored by training and by COCOeval alike
        result.boxes.append(box)
        result.labels.append(ann.category_id - 1)
        result.mask_rles.append(rle)
        if job.want_crops:
            result.crops.append(object_crop(image, box, context=job.crop_context, crop_size=job.crop_size))
    return result
