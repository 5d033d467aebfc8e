"""What every importer shares: finding images, reading their size, splits from folder names, and
assembling the canonical tables with class names mapped to contiguous ids 1..K."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import pandas as pd

from cvpipe.data.canonical import ANNOTATION_COLUMNS, IMAGE_COLUMNS, CanonicalDataset
from cvpipe.data.file_checks import UnreadableFile, printable_name, read_text
from cvpipe.data.image_files import header_size
from cvpipe.errors import ConfigError

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
UNKNOWN_CLASS = 0  # category_id of a label whose class is not among the dataset's classes (rule "known class id")


def list_files(folder: Path, extensions: Iterable[str]) -> list[str]:
    """Entries under ``folder`` (any depth, extension case ignored, hidden names skipped) whose suffix is in
    ``extensions``, as sorted POSIX paths relative to ``folder``.

    Every entry with such a name is listed whatever it is (FIFO, device, directory, symlink loop), so
    validation names it (rule "image is a regular file") instead of skipping it silently; only ``stat`` is
    used, nothing is opened. Symlinked folders are not descended into (no loop can recur)."""
    if not folder.is_dir():
        return []
    suffixes = {e.lower() for e in extensions}
    found = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
             if p.suffix.lower() in suffixes and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (see :func:`list_files`)."""
    return list_files(folder, IMAGE_EXTENSIONS)


def split_of(relative: str) -> str | None:
    """``train/a.jpg`` → "train" (also val/valid/validation, test); None when the first folder names no split."""
    parts = PurePosixPath(relative).parts
    return SPLIT_NAMES.get(parts[0].lower()) if len(parts) > 1 else None


def stem_key(relative: str) -> str:
    """The path without its extension: pairs ``a/b.JPG`` with ``a/b.txt`` or ``a/b.xml``."""
    return str(PurePosixPath(relative).with_suffix(""))


def upright_size(path: Path) -> tuple[float, float]:
    """Width and height of the upright image from its header (:func:`cvpipe.data.image_files.header_size`):
    NaN for a special file, an undecodable file or a decompression bomb (validation reports why)."""
    return header_size(path)


@dataclass
class TableBuilder:
    """Collects rows in source order and assigns image ids 1..N and annotation ids 1..M.

    ``class_names`` fixes the class order (category_id = position + 1); without it the classes are the
    sorted set of names seen. A label naming no known class gets ``UNKNOWN_CLASS``.
    """

    class_names: list[str] | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add_image(self, file_name: str | None, width: float, height: float, split: str | None, **extra: Any) -> int:
        """A row for ``file_name``; a name that is not UTF-8 is stored escaped with its ``name_error``."""
        image_id = len(self.images) + 1
        file_name, name_error = printable_name(file_name) if isinstance(file_name, str) else (file_name, None)
        if isinstance(extra.get("label_file"), str):
            extra["label_file"] = printable_name(extra["label_file"])[0]
        self.images.append({"image_id": image_id, "file_name": file_name, "width": width, "height": height,
                            "split": split, "name_error": name_error, **extra})
        return image_id

    def add_box(self, image_id: int, label: str, x: float, y: float, w: float, h: float, *, iscrowd: int = 0,
                segmentation: Any = None, area: float | None = None, **extra: Any) -> None:
        if isinstance(label, str):  # an ImageFolder class folder named in another encoding
            label = printable_name(label)[0]
        self.annotations.append({"ann_id": len(self.annotations) + 1, "image_id": image_id, "source_label": label,
                                 "x": x, "y": y, "w": w, "h": h, "area": w * h if area is None else area,
                                 "iscrowd": iscrowd, "segmentation": segmentation, **extra})

    def build(self, image_root: Path, info: dict[str, Any], source_ids: list[Any] | None = None) -> CanonicalDataset:
        """The canonical tables (also with no annotation at all: every column is there, zero rows).

        Without ``class_names`` the classes are the sorted non-blank labels seen; a blank label gets
        ``UNKNOWN_CLASS`` (rule "class label not empty" names it)."""
        names = list(self.class_names) if self.class_names is not None else sorted(
            {str(a["source_label"]) for a in self.annotations if _label_text(a["source_label"])})
        ids = {name: k + 1 for k, name in enumerate(names)}
        images = pd.DataFrame(self.images, columns=_columns(IMAGE_COLUMNS, self.images))
        annotations = pd.DataFrame(self.annotations,
                                   columns=_columns(ANNOTATION_COLUMNS + ["source_label"], self.annotations))
        annotations["category_id"] = [ids.get(str(label), UNKNOWN_CLASS) if _label_text(label) else UNKNOWN_CLASS
                                      for label in annotations["source_label"]]
        for col in ("x", "y", "w", "h", "area"):
            annotations[col] = pd.to_numeric(annotations[col], errors="coerce").astype(float)
        for col in ("width", "height"):
            images[col] = pd.to_numeric(images[col], errors="coerce").astype(float)
        categories = pd.DataFrame({"category_id": range(1, len(names) + 1), "name": names})
        if any("label_file" in im for im in self.images):  # where each class is first used, for the name rules
            label_file = {im["image_id"]: im.get("label_file") for im in self.images}
            first: dict[str, Any] = {}
            for a in self.annotations:
                first.setdefault(str(a["source_label"]), label_file.get(a["image_id"]))
            categories["label_file"] = [first.get(name) for name in names]
        if source_ids is not None:
            categories["source_id"] = source_ids
        return CanonicalDataset(images, annotations, categories, image_root, {**info, "class_names": names})


def _label_text(label: Any) -> str:
    """The label as text, stripped; "" for a blank or missing one."""
    return "" if label is None or (isinstance(label, float) and label != label) else str(label).strip()


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


def read_lines(path: Path) -> list[str]:
    """The non-blank, stripped lines of a dataset-wide text file (class names, split lists); a file that
    is not UTF-8 or not a regular file is a :class:`ConfigError` naming it."""
    try:
        text = read_text(path)
    except UnreadableFile as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
