"""Semantic mask folders: ``images/<p>/<name>.<ext>`` with ``masks/<p>/<name>.png`` holding class ids.

Mask value 0 is background, k = 1..K is class k, ``ignore_value`` (255) marks pixels nobody labelled.
Class names: ``class_names`` in params, else ``classes.txt`` in the dataset folder (line k names value k;
a first line ``background``/``_background_`` names value 0 and is skipped), else ``class_<k>`` for every
value found. Each connected region of one class (8-connectivity) becomes an annotation with its RLE
mask and box, so U-Net trains from the masks and detectors see one box per region; the ignore pixels
become one iscrowd=1 annotation (category 1), which prepare paints as 255 and training skips. Values
outside 1..K are listed in ``mask_values`` for rule "mask values within class range".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.importers.common import (TableBuilder, class_name_of, copy_image,
                                          list_images, read_lines, split_of, stem_key,
                                          upright_size)
from cvpipe.data.masks import decode_segmentation, encode_mask
from cvpipe.errors import ConfigError

BACKGROUND_NAMES = ("background", "_background_", "__background__")
EIGHT_CONNECTED = np.ones((3, 3), bool)


def _class_names(root: Path, class_names: list[str] | None) -> list[str] | None:
    if class_names is not None:
        return list(class_names)
    if (root / "classes.txt").is_file():
        names = list(read_lines(root / "classes.txt"))
        return names[1:] if names and names[0].lower() in BACKGROUND_NAMES else names
    return None


def import_mask_folder(path: str | Path, *, images: str = "images", masks: str = "masks", ignore_value: int = 255,
                       class_names: list[str] | None = None) -> CanonicalDataset:
    """Read an image folder with PNG class-id masks (see the module docstring)."""
    root = Path(path)
    image_dir, mask_dir = root / images, root / masks
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise ConfigError(f"{root}: expected folders '{images}' and '{masks}' (data.masks.images, data.masks.masks)")
    names = _class_names(root, class_names)
    mask_files = {stem_key(f): f for f in list_images(mask_dir)}
    decoded: list[tuple[int, np.ndarray | None]] = []
    builder = TableBuilder()
    for file_name in list_images(image_dir):
        mask_name = mask_files.pop(stem_key(file_name), None)
        mask, error = None, None
        if mask_name is not None:
            try:
                with Image.open(mask_dir / mask_name) as im:
                    mask = np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L")).astype(np.int64)
            except (OSError, SyntaxError, ValueError) as exc:
                error = f"mask does not decode: {exc}"
        # the mask's size is the label size; without a mask, the image's own (only the pairing rule fires)
        height, width = mask.shape if mask is not None else upright_size(image_dir / file_name)[::-1]
        image_id = builder.add_image(file_name, width, height, split_of(file_name),
                                     label_file=f"{masks}/{mask_name}" if mask_name else None, label_error=error,
                                     mask_values=None)
        decoded.append((image_id, mask))
    for stem, mask_name in sorted(mask_files.items()):  # masks without an image
        builder.add_image(f"{stem}.*", float("nan"), float("nan"), split_of(mask_name),
                          label_file=f"{masks}/{mask_name}", label_error=None, mask_values=None)
    found = sorted({int(v) for _, m in decoded if m is not None for v in np.unique(m)} - {0, ignore_value})
    names = names if names is not None else [f"class_{v}" for v in range(1, max(found, default=0) + 1)]
    builder.class_names = names
    for image_id, mask in decoded:
        if mask is None:
            continue
        values = sorted(set(np.unique(mask).tolist()) - {0, ignore_value})
        builder.images[image_id - 1]["mask_values"] = values
        for value in values:
            if not 1 <= value <= len(names):
                continue  # reported by "mask values within class range"
            regions, _ = ndimage.label(mask == value, structure=EIGHT_CONNECTED)
            for k, box in enumerate(ndimage.find_objects(regions), start=1):
                region = np.zeros(mask.shape, bool)
                region[box] = regions[box] == k
                _add_region(builder, image_id, names[value - 1], region, box, iscrowd=0)
        ignore = mask == ignore_value
        if ignore.any() and names:
            _add_region(builder, image_id, names[0], ignore, ndimage.find_objects(ignore.astype(int))[0], iscrowd=1)
    dataset = builder.build(image_dir, {"source": "masks", "path": str(root), "ignore_value": ignore_value})
    dataset.categories["source_id"] = list(range(1, len(names) + 1))
    return dataset


def _add_region(builder: TableBuilder, image_id: int, label: str, region: np.ndarray, box: tuple[slice, slice],
                iscrowd: int) -> None:
    ys, xs = box
    builder.add_box(image_id, label, float(xs.start), float(ys.start), float(xs.stop - xs.start),
                    float(ys.stop - ys.start), iscrowd=iscrowd, segmentation=encode_mask(region),
                    area=float(region.sum()))


def semantic_mask(dataset: CanonicalDataset, image_id: int, *, ignore_value: int = 255) -> np.ndarray:
    """uint8 [H, W] class-id mask of one image painted from its annotations' segmentations (crowd → ignore)."""
    row = dataset.images.loc[dataset.images["image_id"] == image_id].iloc[0]
    height, width = int(row.height), int(row.width)
    out = np.zeros((height, width), np.uint8)
    group = dataset.annotations[dataset.annotations["image_id"] == image_id]
    for ann in group.sort_values("iscrowd").itertuples():
        if ann.segmentation is not None:
            out[decode_segmentation(ann.segmentation, height, width)] = ignore_value if ann.iscrowd else ann.category_id
    return out


def export_mask_folder(dataset: CanonicalDataset, out_dir: str | Path, *, images: str = "images",
                       masks: str = "masks", ignore_value: int = 255) -> None:
    """Copy the images, write one class-id PNG per image painted from the segmentations, and classes.txt."""
    out = Path(out_dir)
    names = class_name_of(dataset)
    for row in dataset.images.itertuples():
        copy_image(dataset.image_root / row.file_name, out / images / row.file_name)
        mask_path = out / masks / f"{stem_key(row.file_name)}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(semantic_mask(dataset, int(row.image_id), ignore_value=ignore_value)).save(mask_path)
    (out / "classes.txt").write_text("background\n" + "".join(f"{names[k]}\n" for k in sorted(names)))
