"""What every importer shares: finding images, reading their size, splits from folder names, and
assembling the canonical tables with class names mapped to contiguous ids 1..K."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import pandas as pd
from PIL import Image

from cvpipe.data.canonical import ANNOTATION_COLUMNS, IMAGE_COLUMNS, CanonicalDataset
from cvpipe.data.image_files import SWAPS_SIDES, exif_orientation

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
UNKNOWN_CLASS = 0  # category_id of a label whose class is not among the dataset's classes (rule "known class id")


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (any depth, extension case ignored, hidden files skipped), as sorted
    POSIX paths relative to ``folder``."""
    if not folder.is_dir():
        return []
    found = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def split_of(relative: str) -> str | None:
    """``train/a.jpg`` → "train" (also val/valid/validation, test); None when the first folder names no split."""
    parts = PurePosixPath(relative).parts
    return SPLIT_NAMES.get(parts[0].lower()) if len(parts) > 1 else None


def stem_key(relative: str) -> str:
    """The path without its extension: pairs ``a/b.JPG`` with ``a/b.txt`` or ``a/b.xml``."""
    return str(PurePosixPath(relative).with_suffix(""))


def upright_size(path: Path) -> tuple[float, float]:
    """Width and height of the upright image (EXIF orientation applied), from the header only; NaN when
    the file cannot be opened (validation reports why)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if exif_orientation(im) in SWAPS_SIDES:
                width, height = height, width
            return float(width), float(height)
    except (OSError, SyntaxError, ValueError):
        return float("nan"), float("nan")


@dataclass
class TableBuilder:
    """Collects rows in source order and assigns image ids 1..N and annotation ids 1..M.

    ``class_names`` fixes the class order (category_id = position + 1); without it the classes are the
    sorted set of names seen. A label naming no known class gets ``UNKNOWN_CLASS``.
    """

    class_names: list[str] | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add_image(self, file_name: str, width: float, height: float, split: str | None, **extra: Any) -> int:
        image_id = len(self.images) + 1
        self.images.append({"image_id": image_id, "file_name": file_name, "width": width, "height": height,
                            "split": split, **extra})
        return image_id

    def add_box(self, image_id: int, label: str, x: float, y: float, w: float, h: float, *, iscrowd: int = 0,
                segmentation: Any = None, area: float | None = None, **extra: Any) -> None:
        self.annotations.append({"ann_id": len(self.annotations) + 1, "image_id": image_id, "source_label": label,
                                 "x": x, "y": y, "w": w, "h": h, "area": w * h if area is None else area,
                                 "iscrowd": iscrowd, "segmentation": segmentation, **extra})

    def build(self, image_root: Path, info: dict[str, Any], source_ids: list[Any] | None = None) -> CanonicalDataset:
        names = list(self.class_names) if self.class_names is not None else sorted(
            {str(a["source_label"]) for a in self.annotations})
        ids = {name: k + 1 for k, name in enumerate(names)}
        images = pd.DataFrame(self.images, columns=_columns(IMAGE_COLUMNS, self.images))
        annotations = pd.DataFrame(self.annotations, columns=_columns(ANNOTATION_COLUMNS, self.annotations))
        annotations["category_id"] = [ids.get(str(label), UNKNOWN_CLASS) for label in annotations["source_label"]]
        for col in ("x", "y", "w", "h", "area"):
            annotations[col] = pd.to_numeric(annotations[col], errors="coerce").astype(float)
        for col in ("width", "height"):
            images[col] = pd.to_numeric(images[col], errors="coerce").astype(float)
        categories = pd.DataFrame({"category_id": range(1, len(names) + 1), "name": names})
        if source_ids is not None:
            categories["source_id"] = source_ids
        return CanonicalDataset(images, annotations, categories, image_root, {**info, "class_names": names})


def _columns(core: list[str], rows: list[dict[str, Any]]) -> list[str]:
    extra: dict[str, None] = {}
    for row in rows[:1] + rows[-1:]:  # builders add the same keys to every row of a format
        extra.update({k: None for k in row if k not in core})
    return core + [k for k in extra if k != "category_id"]


def copy_image(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def annotations_by_image(dataset: CanonicalDataset) -> dict[int, pd.DataFrame]:
    return {int(k): v for k, v in dataset.annotations.groupby("image_id", sort=False)}


def class_name_of(dataset: CanonicalDataset) -> dict[int, str]:
    return {int(r.category_id): str(r.name) for r in dataset.categories.itertuples()}


def read_lines(path: Path) -> Iterable[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
