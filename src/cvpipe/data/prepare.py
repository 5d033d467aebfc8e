"""prepare: seeded split, letterbox to a square, train statistics and memory-mappable arrays.

Output layout under ``out_dir`` (every array reads with ``np.load(..., mmap_mode="r")``, so training never decodes
an image). Which optional arrays are written follows the :class:`~cvpipe.data.array_plan.ArrayPlan` (the
configured models' tasks); the others are always there:

- ``<split>/images.npy``      uint8 [N, S, S, 3]  letterboxed RGB scenes (detection and segmentation models)
- ``<split>/semantic.npy``    uint8 [N, S, S]     0 = background, k = category_id k, 255 = ignore (segmentation
                                                  models, and only when the source has masks)
- ``<split>/boxes.npy``       float32 [M, 4]      xyxy, absolute px in prepared coordinates
- ``<split>/box_labels.npy``  int64 [M]           0-based class index (category_id - 1)
- ``<split>/box_offsets.npy`` int64 [N + 1]       boxes of image i are rows offsets[i]:offsets[i+1]
- ``<split>/instance_rle.npy`` uint8 [R]          box row m's mask as COCO compressed RLE counts, bytes
                                                  ``instance_rle_offsets[m]:instance_rle_offsets[m+1]`` (instance
                                                  models; :mod:`cvpipe.data.instance_masks` decodes a batch)
- ``<split>/instance_has_mask.npy`` bool [M]      False where the source gave a box without a mask (empty RLE;
                                                  the mask loss skips it)
- ``<split>/crops.npy``       uint8 [M, C, C, 3]  object-centred crops (classifier)
- ``<split>/crop_labels.npy`` int64 [M]           0-based class index
- ``<split>/instances.json``  COCO ground truth in prepared coordinates (boxes, RLE masks)
- ``meta.json``               class names, sizes, per-channel mean/std of train, split counts, per-split class
                              counts, the array plan, hashes, and ``image_size_choice``: how the size was chosen
                              and what the objects measure at it (:func:`cvpipe.data.image_size.choose_image_size`)

``image_size`` is an integer, or ``"auto"``: chosen from the train split's image and box sizes by the rule of
:mod:`cvpipe.data.image_size` (the split is drawn first, so the choice never sees validation or test labels).

Scale: images are decoded and letterboxed by a process pool (:mod:`cvpipe.data.parallel`, results in image
order, so 1 and N workers write the same bytes); the workers write their rows of the large arrays in place and
this process hashes them in row order as they are confirmed (:mod:`cvpipe.data.npy_stream`); the train statistics
are exact integer sums gathered in the same pass. Memory holds a bounded window of images plus a few dozen bytes per object (boxes, labels, mask RLEs);
the COCO records are streamed to a temporary file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from cvpipe.data.array_plan import ArrayPlan, without_masks
from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.image_size import AutoSizeRule, choose_image_size
from cvpipe.data.npy_stream import NpyRowFile
from cvpipe.data.parallel import WorkerPool
from cvpipe.data.prepare_image import (IGNORE_INDEX, PAD_VALUE, Annotation, ImageJob, letterbox,  # noqa: F401
                                       object_crop, prepare_image)
from cvpipe.data.split_checks import SPLITS, check_split, class_counts

log = logging.getLogger(__name__)


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identical_file_groups(image_root: Path, images: pd.DataFrame, *, pool: WorkerPool | None = None) -> dict[int, int]:
    """image_id → the smallest image_id with the same file content (itself when the file is unique); the files
    are hashed by ``pool``'s processes (default: this one)."""
    first: dict[str, int] = {}
    groups = {}
    rows = sorted(zip(images["image_id"].astype(int), images["file_name"]))
    paths = [image_root / name for _, name in rows]
    digests = map(_sha256, paths) if pool is None else pool.map(_sha256, paths, window=64 * pool.workers)
    for (image_id, _), digest in zip(rows, digests):
        groups[image_id] = first.setdefault(digest, image_id)
    copies = sum(g != i for i, g in groups.items())
    if copies:
        log.info("%d images are byte-identical copies of others; each stays in its original's split", copies)
    return groups


def _annotation_rows(dataset: CanonicalDataset, images: pd.DataFrame) -> dict[int, tuple[Annotation, ...]]:
    """image_id → its annotations in table order, as the small records a worker takes."""
    anns = dataset.annotations[dataset.annotations["image_id"].isin(images["image_id"])]
    grouped: dict[int, list[Annotation]] = {}
    for a in anns.itertuples():
        grouped.setdefault(int(a.image_id), []).append(Annotation(
            int(a.ann_id), int(a.category_id), float(a.x), float(a.y), float(a.w), float(a.h), int(a.iscrowd),
            float(a.area), a.segmentation))
    return {k: tuple(v) for k, v in grouped.items()}


def _jobs(dataset: CanonicalDataset, images: pd.DataFrame, *, image_size: int, crop_size: int, crop_context: float,
          files: dict[str, NpyRowFile], statistics: bool) -> Iterator[ImageJob]:
    by_image = _annotation_rows(dataset, images)
    targets = {name: files[name].target() if name in files else None for name in ("images", "semantic", "crops")}
    first_crop = 0
    for i, row in enumerate(images.itertuples()):
        annotations = by_image.get(int(row.image_id), ())
        yield ImageJob(dataset.image_root / row.file_name, int(row.image_id), str(row.file_name), i,
                       int(row.height), int(row.width), annotations, image_size, crop_size, crop_context,
                       image_out=targets["images"], semantic_out=targets["semantic"], crops_out=targets["crops"],
                       first_crop=first_crop, want_statistics=statistics)
        first_crop += sum(not a.iscrowd for a in annotations)


class _JsonArrayStream:
    """A JSON list written item by item to a temporary file (``json.dump``'s separators), so the COCO records of
    a large split never sit in memory together."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        self.fh = path.open("w")

    def append(self, item: dict[str, Any]) -> None:
        self.fh.write((", " if self.count else "") + json.dumps(item))
        self.count += 1

    def close(self) -> None:
        self.fh.close()


def _write_coco(path: Path, images: _JsonArrayStream, annotations: _JsonArrayStream,
                categories: list[dict[str, Any]]) -> None:
    """``instances.json`` as ``json.dump({"images": …, "annotations": …, "categories": …})`` writes it."""
    with path.open("w") as out:
        for key, part in (("images", images), ("annotations", annotations)):
            part.close()
            out.write(("{" if key == "images" else ", ") + f'"{key}": [')
            with part.path.open() as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
            out.write("]")
            part.path.unlink()
        out.write(f', "categories": {json.dumps(categories)}}}')


def _prepare_split(dataset: CanonicalDataset, images: pd.DataFrame, out: Path, *, image_size: int, crop_size: int,
                   crop_context: float, split: str, plan: ArrayPlan, pool: WorkerPool) -> dict[str, Any]:
    """Write one split's arrays, streamed in image order (bounded memory whatever the split's size); returns its
    counts, the streamed files' SHA-256 and the per-channel integer pixel sums for the statistics."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.npy"):  # a plan that drops an array must not leave the last run's file behind
        stale.unlink()
    n = len(images)
    in_split = dataset.annotations["image_id"].isin(images["image_id"])
    num_objects = int((in_split & (dataset.annotations["iscrowd"] == 0)).sum())
    files: dict[str, NpyRowFile] = {}  # written in place by the workers, hashed here in row order
    if plan.wants("images"):
        files["images"] = NpyRowFile(out / "images.npy", np.uint8, (n, image_size, image_size, 3))
    if plan.wants("semantic"):
        files["semantic"] = NpyRowFile(out / "semantic.npy", np.uint8, (n, image_size, image_size))
    if plan.wants("crops"):
        files["crops"] = NpyRowFile(out / "crops.npy", np.uint8, (num_objects, crop_size, crop_size, 3))
    coco_images = _JsonArrayStream(out / "instances.images.part")
    coco_anns = _JsonArrayStream(out / "instances.annotations.part")
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    offsets = [0]
    rle_chunks: list[bytes] = []
    rle_offsets = [0]
    has_mask: list[bool] = []
    pixel_sum = np.zeros(3, np.int64)
    pixel_sq_sum = np.zeros(3, np.int64)
    jobs = _jobs(dataset, images, image_size=image_size, crop_size=crop_size, crop_context=crop_context, files=files,
                 statistics=split == "train")
    try:
        for result in tqdm(pool.map(prepare_image, jobs), total=n, desc=f"prepare {split}", unit="img"):
            for name, file in files.items():  # this image's rows are on disk: hash them in order
                file.confirm(len(result.boxes) if name == "crops" else 1)
            coco_images.append(result.coco_image)
            for record in result.coco_annotations:
                coco_anns.append(record)
            boxes += result.boxes
            labels += result.labels
            offsets.append(len(boxes))
            if plan.wants("instance_masks"):
                for rle in result.mask_rles:
                    has_mask.append(rle is not None)
                    rle_chunks.append(rle or b"")
                    rle_offsets.append(rle_offsets[-1] + len(rle_chunks[-1]))
            pixel_sum += result.pixel_sum
            pixel_sq_sum += result.pixel_sq_sum
        hashes = {f"{split}/{name}.npy": file.close() for name, file in files.items()}
    finally:
        for file in files.values():
            file.abort()
    np.save(out / "boxes.npy", np.array(boxes, np.float32).reshape(-1, 4))
    np.save(out / "box_labels.npy", np.array(labels, np.int64))
    np.save(out / "box_offsets.npy", np.array(offsets, np.int64))
    if plan.wants("crops"):
        np.save(out / "crop_labels.npy", np.array(labels, np.int64))
    if plan.wants("instance_masks"):
        # each box's mask as COCO compressed RLE (a few dozen bytes), decoded per batch by the training loader;
        # a box the source gave without a mask has an empty row and has_mask False (the mask loss skips it)
        np.save(out / "instance_rle.npy", np.frombuffer(b"".join(rle_chunks), np.uint8))
        np.save(out / "instance_rle_offsets.npy", np.array(rle_offsets, np.int64))
        np.save(out / "instance_has_mask.npy", np.array(has_mask, bool))
    categories = [{"id": int(r.category_id), "name": str(r.name)} for r in dataset.categories.itertuples()]
    _write_coco(out / "instances.json", coco_images, coco_anns, categories)
    return {"counts": {"images": n, "objects": len(boxes), "crops": len(boxes) if plan.wants("crops") else 0},
            "hashes": hashes, "pixel_sum": pixel_sum, "pixel_sq_sum": pixel_sq_sum}


def _assign_splits(dataset: CanonicalDataset, *, seed: int, fractions: tuple[float, float, float],
                   pool: WorkerPool) -> pd.DataFrame:
    """The images table with ``split`` set: the source's when it gives all three, else a seeded draw that keeps
    byte-identical files (web-scraped sets have them) in one split together: no train/test leakage."""
    images = dataset.images.copy()
    given = images["split"].where(images["split"].isin(SPLITS))
    if given.notna().all() and set(given) == set(SPLITS):
        log.info("keeping the splits given by the source")
        return images
    if given.notna().any():  # e.g. only train/val: evaluation and tuning need all three
        log.warning("the source gives splits %s for %d of %d images, not all of train/val/test: drawing a "
                    "seeded split instead", sorted(set(given.dropna())), int(given.notna().sum()), len(images))
    groups = identical_file_groups(dataset.image_root, images, pool=pool)
    assignment = split_image_ids(sorted(set(groups.values())), seed=seed, fractions=fractions)
    images["split"] = images["image_id"].map(groups).map(assignment)
    return images


def prepare_dataset(dataset: CanonicalDataset, out_dir: str | Path, *, seed: int, image_size: int | str,
                    fractions: tuple[float, float, float], crop_size: int, crop_context: float,
                    size_rule: AutoSizeRule = AutoSizeRule(), plan: ArrayPlan = ArrayPlan(), workers: int = 1,
                    class_absent_from_train: str = "warn") -> dict[str, Any]:
    """Split, check the split (:mod:`cvpipe.data.split_checks`), choose the size (``image_size`` or the ``auto``
    rule), letterbox with ``workers`` processes and write the arrays of ``plan`` (mask arrays only where the source
    has masks); returns (and writes) ``meta.json``. The output is the same bytes for any ``workers``."""
    out_dir = Path(out_dir)
    source = str(dataset.info.get("path") or dataset.image_root)
    has_masks = bool(dataset.annotations["segmentation"].notna().any()) if len(dataset.annotations) else False
    plan = without_masks(plan, has_masks=has_masks, source=source)
    names = dict(zip(dataset.categories["category_id"].astype(int), dataset.categories["name"].astype(str)))
    counts, hashes = {}, {}
    with WorkerPool(workers) as pool:  # one pool for the duplicate-file hashing and the three splits
        images = _assign_splits(dataset, seed=seed, fractions=fractions, pool=pool)
        per_class = class_counts(dataset.annotations, images.set_index("image_id")["split"], names)
        split_warnings = check_split(per_class, {s: int((images["split"] == s).sum()) for s in SPLITS}, plan=plan,
                                     class_absent_from_train=class_absent_from_train, source=source)
        train_images = images[images["split"] == "train"]
        choice = choose_image_size(train_images if len(train_images) else images, dataset.annotations, names,
                                   requested=image_size, rule=size_rule)
        image_size = choice["image_size"]
        log.info("image size %d px: %s", image_size, choice["reason"])
        for line in choice["warnings"]:
            log.warning("%s", line)
        started = time.perf_counter()
        for split in SPLITS:
            part = images[images["split"] == split].sort_values("image_id")
            written = _prepare_split(dataset, part, out_dir / split, image_size=image_size, crop_size=crop_size,
                                     crop_context=crop_context, split=split, plan=plan, pool=pool)
            counts[split] = written["counts"]
            hashes.update(written["hashes"])
            if split == "train":  # per-channel statistics in 0..1 units, from the exact integer sums
                pixels = max(1, len(part) * image_size * image_size)
                mean = written["pixel_sum"] / 255.0 / pixels
                std = np.sqrt(np.maximum(written["pixel_sq_sum"] / 255.0 ** 2 / pixels - mean ** 2, 1e-12))
    seconds = time.perf_counter() - started
    log.info("letterboxed %d images in %.2f s: %.1f images/s on %d worker(s)", len(images), seconds,
             len(images) / max(seconds, 1e-9), workers)
    for path in sorted(out_dir.glob("*/*")):  # the small files; the large ones were hashed as they were written
        key = str(path.relative_to(out_dir))
        if path.is_file() and key not in hashes:
            hashes[key] = _sha256(path)
    hashes = dict(sorted(hashes.items()))
    meta = {
        "class_names": dataset.class_names,
        "image_size": image_size,
        "crop_size": crop_size,
        "mean": mean.round(6).tolist(),
        "std": std.round(6).tolist(),
        "splits": counts,
        "class_counts": per_class,
        "split_warnings": split_warnings,
        "arrays": plan.to_dict(),
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
