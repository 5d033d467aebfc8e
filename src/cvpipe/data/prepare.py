"""prepare: seeded split, letterbox to a square, train statistics and memory-mappable arrays.

Output layout under ``out_dir`` (every array is written with ``np.save`` and read with
``mmap_mode="r"``, so training never decodes an image):

- ``<split>/images.npy``      uint8 [N, S, S, 3]  letterboxed RGB scenes
- ``<split>/semantic.npy``    uint8 [N, S, S]     0 = background, k = category_id k, 255 = ignore
- ``<split>/boxes.npy``       float32 [M, 4]      xyxy, absolute px in prepared coordinates
- ``<split>/box_labels.npy``  int64 [M]           0-based class index (category_id - 1)
- ``<split>/box_offsets.npy`` int64 [N + 1]       boxes of image i are rows offsets[i]:offsets[i+1]
- ``<split>/instance_masks.npy`` uint8 [M, S, S]  0/1 mask of box row m (instance segmentation targets)
- ``<split>/instance_has_mask.npy`` bool [M]      False where the source gave a box without a mask (the
                                                  mask row is then all 0 and the mask loss skips it)
- ``<split>/crops.npy``       uint8 [Nc, C, C, 3] object-centred crops for classification
- ``<split>/crop_labels.npy`` int64 [Nc]          0-based class index
- ``<split>/instances.json``  COCO ground truth in prepared coordinates (boxes, RLE masks)
- ``meta.json``               class names, sizes, per-channel mean/std of train, split counts, hashes, and
                              ``image_size_choice``: how the size was chosen and what the objects measure at it
                              (:func:`cvpipe.data.image_size.choose_image_size`)

``image_size`` is an integer, or ``"auto"``: chosen from the train split's image and box sizes by the rule of
:mod:`cvpipe.data.image_size` (the split is drawn first, so the choice never sees validation or test labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.image_files import open_rgb
from cvpipe.data.image_size import AutoSizeRule, choose_image_size
from cvpipe.data.masks import decode_segmentation, encode_mask

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
PAD_VALUE = 114  # letterbox grey, the value YOLO-family preprocessing uses
IGNORE_INDEX = 255


def split_image_ids(image_ids: list[int], *, seed: int, fractions: tuple[float, float, float]) -> dict[int, str]:
    """Seeded, order-independent split: sort ids, permute with ``seed``, cut by ``fractions``."""
    ids = np.array(sorted(image_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    assignment = {}
    for rank, idx in enumerate(order):
        assignment[int(ids[idx])] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return assignment


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


def _letterbox_mask(mask: np.ndarray, scale: float, size: int) -> np.ndarray:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identical_file_groups(image_root: Path, images: pd.DataFrame) -> dict[int, int]:
    """image_id → the smallest image_id with the same file content (itself when the file is unique)."""
    first: dict[str, int] = {}
    groups = {}
    for image_id, name in sorted(zip(images["image_id"].astype(int), images["file_name"])):
        groups[image_id] = first.setdefault(_sha256(image_root / name), image_id)
    copies = sum(g != i for i, g in groups.items())
    if copies:
        log.info("%d images are byte-identical copies of others; each stays in its original's split", copies)
    return groups


def _prepare_split(dataset: CanonicalDataset, images: pd.DataFrame, out: Path, *, image_size: int,
                   crop_size: int, crop_context: float, split: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    image_arr = np.lib.format.open_memmap(out / "images.npy", "w+", np.uint8, (n, image_size, image_size, 3))
    semantic = np.lib.format.open_memmap(out / "semantic.npy", "w+", np.uint8, (n, image_size, image_size))
    by_image = dict(tuple(dataset.annotations.groupby("image_id", sort=False)))
    in_split = dataset.annotations["image_id"].isin(images["image_id"])
    num_instances = int((in_split & (dataset.annotations["iscrowd"] == 0)).sum())
    # one row per training box; a memmap so a large split never has to fit in memory
    instance_masks = np.lib.format.open_memmap(out / "instance_masks.npy", "w+", np.uint8,
                                               (num_instances, image_size, image_size))
    has_mask = np.zeros(num_instances, bool)
    boxes, labels, offsets, crops, crop_labels = [], [], [0], [], []
    coco_images, coco_anns = [], []
    for i, row in enumerate(tqdm(images.itertuples(), total=n, desc=f"prepare {split}", unit="img")):
        # upright 8-bit RGB, as validation checked it (EXIF orientation, grayscale/16-bit/palette/alpha)
        image_arr[i], scale = letterbox(open_rgb(dataset.image_root / row.file_name), image_size)
        semantic[i] = 0
        coco_images.append({"id": int(row.image_id), "file_name": str(row.file_name), "width": image_size,
                            "height": image_size, "index": i, "scale": scale})
        anns = by_image.get(row.image_id)
        for ann in ([] if anns is None else anns.itertuples()):
            box = np.array([ann.x, ann.y, ann.x + ann.w, ann.y + ann.h], np.float32) * scale
            box = np.clip(box, 0, image_size)
            mask = None
            record = {"id": int(ann.ann_id), "image_id": int(row.image_id), "category_id": int(ann.category_id),
                      "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                      "iscrowd": int(ann.iscrowd), "area": float(ann.area) * scale * scale}
            if ann.segmentation is not None:
                mask = _letterbox_mask(decode_segmentation(ann.segmentation, int(row.height), int(row.width)),
                                       scale, image_size)
                semantic[i][mask] = IGNORE_INDEX if ann.iscrowd else int(ann.category_id)
                record["segmentation"], record["area"] = encode_mask(mask), float(mask.sum())
            coco_anns.append(record)
            if ann.iscrowd:
                continue  # crowd regions are ignored by training and by COCOeval alike
            if mask is not None:  # a box without a mask keeps its all-zero row of the new memmap
                instance_masks[len(boxes)] = mask
                has_mask[len(boxes)] = True
            boxes.append(box)
            labels.append(int(ann.category_id) - 1)
            crops.append(object_crop(image_arr[i], box, context=crop_context, crop_size=crop_size))
            crop_labels.append(int(ann.category_id) - 1)
        offsets.append(len(boxes))
    image_arr.flush()
    semantic.flush()
    instance_masks.flush()
    np.save(out / "instance_has_mask.npy", has_mask)
    np.save(out / "boxes.npy", np.array(boxes, np.float32).reshape(-1, 4))
    np.save(out / "box_labels.npy", np.array(labels, np.int64))
    np.save(out / "box_offsets.npy", np.array(offsets, np.int64))
    np.save(out / "crops.npy", np.array(crops, np.uint8).reshape(-1, crop_size, crop_size, 3))
    np.save(out / "crop_labels.npy", np.array(crop_labels, np.int64))
    categories = [{"id": int(r.category_id), "name": str(r.name)} for r in dataset.categories.itertuples()]
    with (out / "instances.json").open("w") as fh:
        json.dump({"images": coco_images, "annotations": coco_anns, "categories": categories}, fh)
    return {"images": n, "objects": len(boxes), "crops": len(crops)}


def prepare_dataset(dataset: CanonicalDataset, out_dir: str | Path, *, seed: int, image_size: int | str,
                    fractions: tuple[float, float, float], crop_size: int, crop_context: float,
                    size_rule: AutoSizeRule = AutoSizeRule()) -> dict[str, Any]:
    """Split, choose the size (``image_size`` or the ``auto`` rule), letterbox and write the arrays; returns (and
    writes) ``meta.json``. The size's warnings (objects under the finest stride) are logged."""
    out_dir = Path(out_dir)
    images = dataset.images.copy()
    given = images["split"].where(images["split"].isin(SPLITS))
    if given.notna().all() and set(given) == set(SPLITS):
        log.info("keeping the splits given by the source")
    else:
        if given.notna().any():  # e.g. only train/val: evaluation and tuning need all three
            log.warning("the source gives splits %s for %d of %d images, not all of train/val/test: drawing a "
                        "seeded split instead", sorted(set(given.dropna())), int(given.notna().sum()), len(images))
        # byte-identical files (web-scraped sets have them) go to one split together: no train/test leakage
        groups = identical_file_groups(dataset.image_root, images)
        assignment = split_image_ids(sorted(set(groups.values())), seed=seed, fractions=fractions)
        images["split"] = images["image_id"].map(groups).map(assignment)
    train_images = images[images["split"] == "train"]
    names = dict(zip(dataset.categories["category_id"].astype(int), dataset.categories["name"].astype(str)))
    choice = choose_image_size(train_images if len(train_images) else images, dataset.annotations, names,
                               requested=image_size, rule=size_rule)
    image_size = choice["image_size"]
    log.info("image size %d px: %s", image_size, choice["reason"])
    for line in choice["warnings"]:
        log.warning("%s", line)
    counts = {}
    for split in SPLITS:
        part = images[images["split"] == split].sort_values("image_id")
        counts[split] = _prepare_split(dataset, part, out_dir / split, image_size=image_size, crop_size=crop_size,
                                       crop_context=crop_context, split=split)
    train = np.load(out_dir / "train" / "images.npy", mmap_mode="r")
    # Per-channel statistics in 0..1 units, accumulated in chunks to bound memory.
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(train), 256):
        chunk = train[start:start + 256].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        total_sq += (chunk ** 2).sum(axis=(0, 1, 2))
    pixels = max(1, train.shape[0] * train.shape[1] * train.shape[2])
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean ** 2, 1e-12))
    hashes = {str(p.relative_to(out_dir)): _sha256(p) for p in sorted(out_dir.glob("*/*")) if p.is_file()}
    meta = {
        "class_names": dataset.class_names,
        "image_size": image_size,
        "crop_size": crop_size,
        "mean": mean.round(6).tolist(),
        "std": std.round(6).tolist(),
        "splits": counts,
        "files": hashes,
        "data_hash": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16],
        "image_size_choice": choice,
    }
    with (out_dir / "meta.json").open("w") as fh:
        json.dump(meta, fh, indent=2)
    return meta


def load_meta(prepared_dir: str | Path) -> dict[str, Any]:
    with (Path(prepared_dir) / "meta.json").open() as fh:
        return json.load(fh)
