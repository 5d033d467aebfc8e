"""One image of prepare: decode, letterbox, move its labels into prepared coordinates, cut its crops.

:func:`prepare_image` is what prepare's process pool runs (:mod:`cvpipe.data.parallel`): it takes a small,
picklable :class:`ImageJob`, writes the image's rows of the arrays the plan asks for straight into their files
(:class:`~cvpipe.data.npy_stream.RowTarget`: the pixels never travel back through the pool), and returns an
:class:`ImageResult` with the image's labels and COCO records. It depends on nothing but its job, so 1 and N
workers give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvpipe.data.image_files import open_rgb
from cvpipe.data.masks import decode_segmentation, encode_mask
from cvpipe.data.npy_stream import RowTarget

PAD_VALUE = 114  # letterbox grey, the value YOLO-family preprocessing uses
IGNORE_INDEX = 255


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """Scale the longer side to ``size`` and pad right/bottom. Returns uint8 [S, S, 3] and the scale."""
    scale = size / max(image.width, image.height)
    if scale != 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BILINEAR)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    arr = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    out[: arr.shape[0], : arr.shape[1]] = arr
    return out, scale


def channel_sums(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel sums of the uint8 pixels of ``image`` [H, W, 3] and of their squares (int64 [3] each),
    from one 256-bin histogram per channel: no float rounding, no [H·W, 3] int64 temporary."""
    values = np.arange(256, dtype=np.int64)
    hist = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])  # [3, 256]
    return hist @ values, hist @ (values * values)


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
    """What one worker needs for one image: the file, its source size, its annotations and where its rows go
    (None: the plan does not write that array)."""

    path: Path
    image_id: int
    file_name: str
    index: int  # row in the split's image-indexed arrays
    height: int
    width: int
    annotations: tuple[Annotation, ...]
    image_size: int
    crop_size: int
    crop_context: float
    image_out: RowTarget | None
    semantic_out: RowTarget | None
    crops_out: RowTarget | None
    first_crop: int  # row of this image's first crop (its non-crowd objects' rows follow)
    want_statistics: bool  # the train split's pixel sums (the mean/std); val and test skip them


@dataclass
class ImageResult:
    """The image's labels and COCO records (its array rows are in their files already).

    ``pixel_sum`` / ``pixel_sq_sum``: per-channel integer sums of the letterboxed pixels and of their squares
    (exact, so the train statistics do not depend on how images were spread over workers); zeros when the job
    did not ask for them."""

    coco_image: dict[str, Any]
    coco_annotations: list[dict[str, Any]]
    boxes: list[np.ndarray] = field(default_factory=list)  # float32 [4] xyxy, non-crowd objects in order
    labels: list[int] = field(default_factory=list)
    mask_rles: list[bytes | None] = field(default_factory=list)  # compressed RLE counts, None: box without mask
    pixel_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    pixel_sq_sum: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))


def prepare_image(job: ImageJob) -> ImageResult:
    """Letterbox the image (upright 8-bit RGB, as validation checked it: EXIF orientation, grayscale, 16-bit,
    palette and alpha handled by :func:`open_rgb`), scale its boxes and masks by the same factor, and cut the
    crops of its non-crowd objects. Crowd regions go to the COCO records and the label map (as ignore) only."""
    size = job.image_size
    image, scale = letterbox(open_rgb(job.path), size)
    pixel_sum, pixel_sq_sum = channel_sums(image) if job.want_statistics else (np.zeros(3, np.int64),) * 2
    semantic = np.zeros((size, size), np.uint8) if job.semantic_out is not None else None
    crops: list[np.ndarray] = []
    result = ImageResult(
        coco_image={"id": job.image_id, "file_name": job.file_name, "width": size, "height": size,
                    "index": job.index, "scale": scale},
        coco_annotations=[], pixel_sum=pixel_sum, pixel_sq_sum=pixel_sq_sum)
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
        if job.crops_out is not None:
            crops.append(object_crop(image, box, context=job.crop_context, crop_size=job.crop_size))
    if job.image_out is not None:
        job.image_out.write(job.index, image)
    if job.semantic_out is not None:
        job.semantic_out.write(job.index, semantic)
    if crops and job.crops_out is not None:
        job.crops_out.write(job.first_crop, np.stack(crops))
    return result

