"""Semantic mask folders: ``images/<p>/<name>.<ext>`` with ``masks/<p>/<name>.png`` holding class ids.

Mask value 0 is background, k = 1..K is class k, ``ignore_value`` (255) marks pixels nobody labelled.
Class names: ``class_names`` in params, else ``classes.txt`` in the dataset folder (line k names value k;
a first line ``background``/``_background_`` names value 0 and is skipped), else ``class_<k>`` for every
value found. Each connected region of one class (8-connectivity) becomes an annotation with its RLE
mask and box, so U-Net trains from the masks and detectors see one box per region; the ignore pixels
become one iscrowd=1 annotation (category 1), which prepare paints as 255 and training skips. Values
outside 1..K are listed in ``mask_values`` for rule "mask values within class range".

Binary masks (``binary``): with "auto" (the default), a folder whose masks hold only 0 and 255 (ISBI,
Carvana, most Kaggle sets) is one foreground class: 255 is class 1, named ``foreground`` unless
``class_names``/``classes.txt`` give the one name; ``true`` makes every non-zero value foreground, ``false``
keeps 255 as ignore. A mask must be one channel of class ids (grey, palette indices, 16-bit): an RGB mask
whose channels differ is colour-coded and refused (rule "label file parses", saying what is expected),
as is a mask that is not a regular file or is a decompression bomb.

A mask stored in a lossy format (JPEG by its extension or its content, lossy WebP) breaks rule "mask file
lossless" (column ``lossy_mask``) and is never decoded: compression rings at region edges, so a 0/255 mask
would come back holding every value from 0 to 255 (hundreds of classes). Its image imports without regions
and the class table is built from the other masks only.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.file_checks import MISSING, UnreadableFile, file_kind, read_regular_bytes
from cvpipe.data.image_files import decode_problem, open_checked
from cvpipe.data.importers.common import (TableBuilder, class_name_of, copy_image,
                                          list_images, read_lines, split_of, stem_key,
                                          upright_size)
from cvpipe.data.masks import decode_segmentation, encode_mask
from cvpipe.errors import ConfigError

log = logging.getLogger(__name__)
BACKGROUND_NAMES = ("background", "_background_", "__background__")
EIGHT_CONNECTED = np.ones((3, 3), bool)
BINARY_VALUES = {0, 255}  # what "auto" recognises as a binary mask folder
FOREGROUND = "foreground"  # the class name of binary masks when none is given
ID_MODES = ("L", "P", "I", "I;16", "1")  # modes whose pixel values are class ids as they are
JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # PIL's names for JPEG content (MPO: multi-picture JPEG)


class LossyMask(Exception):
    """A mask file in a lossy format (rule "mask file lossless"); ``str(exc)`` says which and what to do."""


def _class_names(root: Path, class_names: list[str] | None) -> list[str] | None:
    if class_names is not None:
        return list(class_names)
    if file_kind(root / "classes.txt") != MISSING:  # a FIFO or a loop is a ConfigError, never skipped
        names = list(read_lines(root / "classes.txt"))
        return names[1:] if names and names[0].lower() in BACKGROUND_NAMES else names
    return None


def _webp_is_lossy(data: bytes) -> bool:
    """A WebP file whose image chunk is ``VP8 `` (lossy), not ``VP8L`` (lossless); walks the RIFF chunks."""
    offset = 12  # "RIFF" size "WEBP"
    while offset + 8 <= len(data):
        fourcc, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc == b"VP8 "
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return False


def lossy_format(path: Path, image_format: str | None, data: bytes) -> str | None:
    """The lossy format a mask file is stored in: "JPEG" (by its name or its content), "lossy WebP" (a ``VP8 ``
    image chunk), or None."""
    if path.suffix.lower() in JPEG_EXTENSIONS or image_format in JPEG_FORMATS:
        return "JPEG"
    if image_format == "WEBP" and _webp_is_lossy(data):
        return "lossy WebP"
    return None


def read_mask(path: Path, ignore_value: int) -> np.ndarray:
    """int64 [H, W] class ids of one mask file; :class:`UnreadableFile` saying why it cannot be used, or
    :class:`LossyMask` (checked from the header, before any pixel is decoded)."""
    data = read_regular_bytes(path)
    try:
        with open_checked(io.BytesIO(data)) as im:
            lossy = lossy_format(path, im.format, data)
            if lossy is not None:
                raise LossyMask(f"mask saved as {lossy}: lossy compression changes the class ids at region edges "
                                "(a 0/255 mask comes back with values 0..255); export masks as PNG (lossless)")
            im.load()
            if im.mode in ID_MODES:
                return np.asarray(im).astype(np.int64)
            if im.mode in ("LA", "La"):
                return np.asarray(im.getchannel(0)).astype(np.int64)
            if im.mode not in ("RGB", "RGBA", "RGBa"):
                return np.asarray(im.convert("L")).astype(np.int64)
            rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableFile(f"mask does not decode: {decode_problem(exc)}") from None
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]  # grey saved as RGB
    colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
    first = [f"({c >> 16},{(c >> 8) & 255},{c & 255})" for c in colours[:3]]
    raise UnreadableFile(f"RGB colour-coded mask ({len(colours)} colours, e.g. {' '.join(first)}): expected one "
                         f"channel of class ids (0 background, k = class k, {ignore_value} ignore) as an 8-bit "
                         "grey or palette PNG; map each colour to its class id first")


def _load(path: Path, ignore_value: int) -> tuple[np.ndarray | None, str | None, str | None]:
    """(class ids, None, None), or None with why the file is unusable ("label file parses") or lossy
    ("mask file lossless")."""
    try:
        return read_mask(path, ignore_value), None, None
    except UnreadableFile as exc:
        return None, str(exc), None
    except LossyMask as exc:
        return None, None, str(exc)


def _is_binary(binary: bool | str, values: set[int], names: list[str] | None) -> bool:
    if binary not in (True, False, "auto"):
        raise ConfigError(f"params.yaml: data.masks.binary must be auto, true or false, got {binary!r}")
    if binary != "auto":
        return bool(binary)
    return 255 in values and values <= BINARY_VALUES and (names is None or len(names) <= 1)


def import_mask_folder(path: str | Path, *, images: str = "images", masks: str = "masks", ignore_value: int = 255,
                       class_names: list[str] | None = None, binary: bool | str = "auto") -> CanonicalDataset:
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
        mask, error, lossy = _load(mask_dir / mask_name, ignore_value) if mask_name else (None, None, None)
        # the mask's size is the label size; without a usable mask, the image's own (only its rule fires)
        height, width = mask.shape if mask is not None else upright_size(image_dir / file_name)[::-1]
        image_id = builder.add_image(file_name, width, height, split_of(file_name),
                                     label_file=f"{masks}/{mask_name}" if mask_name else None, label_error=error,
                                     lossy_mask=lossy, mask_values=None)
        decoded.append((image_id, mask))
    for stem, mask_name in sorted(mask_files.items()):  # masks without an image: their regions still count
        mask, error, lossy = _load(mask_dir / mask_name, ignore_value)
        image_id = builder.add_image(f"{stem}.*", float("nan"), float("nan"), split_of(mask_name),
                                     label_file=f"{masks}/{mask_name}", label_error=error, lossy_mask=lossy,
                                     mask_values=None)
        decoded.append((image_id, mask))
    seen = {int(v) for _, m in decoded if m is not None for v in np.unique(m)}
    if _is_binary(binary, seen, names):
        log.info("binary masks (values %s): non-zero pixels are class 1 %r", sorted(seen), (names or [FOREGROUND])[0])
        names = names or [FOREGROUND]
        decoded = [(i, None if m is None else (m != 0).astype(np.int64)) for i, m in decoded]
        ignore_value = -1  # no pixel is ignored: 255 is the foreground
    found = sorted(seen - {0, ignore_value})
    names = names if names is not None else [f"class_{v}" for v in range(1, max(found, default=0) + 1)]
    builder.class_names = names
    for image_id, mask in decoded:
        if mask is not None:
            _add_regions(builder, image_id, mask, names, ignore_value)
    binary_masks = ignore_value == -1
    info = {"source": "masks", "path": str(root), "ignore_value": None if binary_masks else ignore_value,
            "binary": binary_masks}
    dataset = builder.build(image_dir, info)
    dataset.categories["source_id"] = list(range(1, len(names) + 1))
    if class_names is None and file_kind(root / "classes.txt") != MISSING:
        dataset.categories["label_file"] = "classes.txt"
    return dataset


def _add_regions(builder: TableBuilder, image_id: int, mask: np.ndarray, names: list[str], ignore_value: int) -> None:
    """One annotation per connected region of each class in 1..K, and one crowd region of the ignore pixels."""
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
