"""Classification sources: ImageFolder (one folder per class) and a CSV of file,label.

A classification image becomes one whole-image "object": box (0, 0, width, height) of its class, so the
classifier's object crops (``prepare.crop_context: 1.0`` keeps exactly the image) and every validation
rule work unchanged. Detectors and U-Net trained on such data learn nothing useful (one box covering the
image, no masks): use ``pipeline.models: [classifier]``.

- ImageFolder: ``<root>/<class>/**/<image>``, or ``<root>/<split>/<class>/**/<image>`` when every top-level
  folder is a split name (train, val/valid/validation, test).
- CSV: columns ``file`` and ``label`` (names are params), optional ``split``; paths relative to the CSV's
  folder joined with ``images``. Images in that folder the CSV does not list break "image has a label file".
  The CSV must be UTF-8; a row without a file name breaks "label file parses" (it still counts as a row),
  one without a label "class label not empty".
"""

from __future__ import annotations

import csv
import io
from typing import Callable
from pathlib import Path, PurePosixPath

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.file_checks import MISSING, UnreadableFile, file_kind, read_text
from cvpipe.data.importers.common import (SPLIT_NAMES, TableBuilder, annotations_by_image, class_name_of,
                                          list_images, stem_key, upright_size)
from cvpipe.data.image_files import open_rgb
from cvpipe.errors import ConfigError


def _add_whole_image(builder: TableBuilder, root: Path, file_name: str, label: str | None, split: str | None,
                     label_file: str | None) -> None:
    width, height = upright_size(root / file_name)
    image_id = builder.add_image(file_name, width, height, split, label_file=label_file, label_error=None,
                                 label_frame="upright")  # label "" (a CSV row without one): "class label not empty"
    if label is not None:
        builder.add_box(image_id, label, 0.0, 0.0, width, height)


def import_imagefolder(path: str | Path, *, class_names: list[str] | None = None) -> CanonicalDataset:
    """Read ``<root>/[<split>/]<class>/...`` (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root}: ImageFolder root not found (data.path)")
    top = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    by_split = bool(top) and all(name.lower() in SPLIT_NAMES for name in top)
    builder = TableBuilder(class_names=class_names)
    for file_name in list_images(root):
        parts = PurePosixPath(file_name).parts
        split = SPLIT_NAMES[parts[0].lower()] if by_split else None
        label_parts = parts[1:] if by_split else parts
        label = label_parts[0] if len(label_parts) > 1 else None  # an image beside the class folders has none
        _add_whole_image(builder, root, file_name, label, split, f"{label}/" if label else None)
    return builder.build(root, {"source": "imagefolder", "path": str(root)})


def import_csv(path: str | Path, *, file: str = "labels.csv", images: str = ".", file_column: str = "file",
               label_column: str = "label", split_column: str = "split",
               class_names: list[str] | None = None) -> CanonicalDataset:
    """Read a CSV of file,label[,split] (see the module docstring); ``path`` is the CSV or its folder."""
    path = Path(path)
    csv_path = path / file if path.is_dir() else path
    if file_kind(csv_path) == MISSING:
        raise ConfigError(f"{csv_path}: label CSV not found (data.path, data.csv.file)")
    try:
        text = read_text(csv_path)
    except UnreadableFile as exc:
        raise ConfigError(f"{csv_path}: {exc}") from None
    image_root = csv_path.parent / images
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {file_column, label_column} - set(reader.fieldnames or [])
    if missing:
        raise ConfigError(f"{csv_path}: column(s) {sorted(missing)} not found; header is {reader.fieldnames}")
    builder = TableBuilder(class_names=class_names)
    listed = set()
    for number, row in enumerate(reader, start=2):  # line 1 is the header (a quoted newline shifts this)
        name = PurePosixPath((row.get(file_column) or "").strip().replace("\\", "/")).as_posix()
        label = (row.get(label_column) or "").strip()
        split = SPLIT_NAMES.get((row.get(split_column) or "").strip().lower())
        label_file = f"{csv_path.name}:{number}"
        if name == ".":  # no file name: a row of its own, reported, never skipped
            image_id = builder.add_image(None, float("nan"), float("nan"), split, label_file=label_file,
                                         label_error=f"line {number}: no value in column {file_column!r}",
                                         label_frame="upright")
            builder.add_box(image_id, label, float("nan"), float("nan"), float("nan"), float("nan"))
            continue
        listed.add(name)
        _add_whole_image(builder, image_root, name, label, split, label_file)
    for name in list_images(image_root):
        if name not in listed:
            _add_whole_image(builder, image_root, name, None, None, None)
    return builder.build(image_root, {"source": "csv", "path": str(csv_path)})


def _crops(dataset: CanonicalDataset, out_dir: Path,
           folder_of: Callable[[str, str | None], str]) -> list[tuple[str, str, str | None]]:
    """One PNG per non-crowd annotation: the box region of the upright image. Returns (file, class, split)."""
    names = class_name_of(dataset)
    anns = annotations_by_image(dataset)
    written = []
    for row in dataset.images.itertuples():
        group = anns.get(int(row.image_id))
        if group is None:
            continue
        image = open_rgb(dataset.image_root / row.file_name)
        split = row.split if isinstance(row.split, str) else None
        for ann in group.itertuples():
            if ann.iscrowd:
                continue
            label = names[int(ann.category_id)]
            whole = (ann.x, ann.y, ann.w, ann.h) == (0, 0, row.width, row.height)
            stem = PurePosixPath(stem_key(row.file_name)).name
            name = f"{stem}.png" if whole else f"{stem}_{int(ann.ann_id)}.png"
            rel = f"{folder_of(label, split)}{name}"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            box = (round(ann.x), round(ann.y), round(ann.x + ann.w), round(ann.y + ann.h))
            image.crop(box).save(out_dir / rel)
            written.append((rel, label, split))
    return written


def export_imagefolder(dataset: CanonicalDataset, out_dir: str | Path) -> int:
    """Each object's box region as ``out_dir/[<split>/]<class>/<image>_<ann_id>.png`` (a whole-image box keeps
    the image's name); returns the number of images written."""
    return len(_crops(dataset, Path(out_dir), lambda label, split: f"{split}/{label}/" if split else f"{label}/"))


def export_csv(dataset: CanonicalDataset, out_dir: str | Path, *, file: str = "labels.csv") -> int:
    """Object crops under ``out_dir/images/<class>/`` and ``out_dir/<file>`` with file,label,split."""
    out = Path(out_dir)
    written = _crops(dataset, out, lambda label, split: f"images/{label}/")
    with (out / file).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "split"])
        for rel, label, split in written:
            writer.writerow([rel, label, split or ""])
    return len(written)
