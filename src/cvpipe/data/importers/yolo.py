"""YOLO txt: ``images/`` and ``labels/`` trees, class names in ``data.yaml``.

Each image ``images/<p>/<name>.<ext>`` pairs with ``labels/<p>/<name>.txt``; a line is ``class cx cy w h``
normalised to the upright image (0..1), or ``class x1 y1 x2 y2 ...`` (a YOLO segmentation polygon, kept as
a COCO polygon with its bounding box). An empty label file is a negative image. Class index i becomes
category_id i + 1. Splits: ``train``/``val``/``test`` entries of ``data.yaml`` (folders or .txt lists of
image paths), else a split-named first folder (``images/train/...``).

Every non-blank line is one annotation row, so kept + quarantined always equals the lines of the label
files: a malformed line is a row with ``parse_error`` ("line 3: not numbers: ...", rule "label line
parses"), and the lines after it are read as usual; a label file without an image still contributes its
lines (on a row for the missing image). A label file that cannot be read (not UTF-8, a FIFO...) breaks
"label file parses"; the non-blank lines of one that is read but is not UTF-8 are counted into the image's
``unparsed_objects``, so the report can say how many objects were not imported. LabelImg's
``labels/classes.txt`` is a class list, not a label file.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.file_checks import MISSING, UnreadableFile, decode_text, file_kind, read_regular_bytes, read_text
from cvpipe.data.importers.common import (SPLIT_NAMES, TableBuilder, annotations_by_image, class_name_of,
                                          copy_image, list_files, list_images, read_lines, split_of, stem_key,
                                          upright_size)
from cvpipe.errors import ConfigError


CLASS_LIST = "classes.txt"  # LabelImg writes it into the labels folder


def _read_spec(path: Path) -> dict[str, Any]:
    """data.yaml as a dict ({} when absent); a ConfigError naming the file when it cannot be used."""
    if file_kind(path) == MISSING:
        return {}
    try:
        spec = yaml.safe_load(read_text(path)) or {}
    except UnreadableFile as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with 'names', got {type(spec).__name__}")
    return spec


def _names(root: Path, label_dir: Path, data_yaml: str, class_names: list[str] | None
           ) -> tuple[list[str], dict[str, Any], str]:
    """(class names, data.yaml as a dict, where the names come from)."""
    spec = _read_spec(root / data_yaml)
    if class_names is not None:
        return list(class_names), spec, "params.yaml data.yolo.class_names"
    names = spec.get("names")
    if isinstance(names, dict):  # {0: person, 1: car}
        keys = sorted(names, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in keys] != [str(k) for k in range(len(names))]:
            raise ConfigError(f"{root / data_yaml}: 'names' keys must be the class indices 0..{len(names) - 1}, "
                              f"got {list(names)[:10]}")
        return [str(names[k]) for k in keys], spec, data_yaml
    if isinstance(names, list):
        return [str(n) for n in names], spec, data_yaml
    for candidate in (root / CLASS_LIST, label_dir / CLASS_LIST):
        if file_kind(candidate) != MISSING:
            return list(read_lines(candidate)), spec, candidate.relative_to(root).as_posix()
    raise ConfigError(f"{root / data_yaml}: no class names (give 'names' there, a classes.txt, "
                      "or data.yolo.class_names in params.yaml)")


def _relative(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` after resolving the folders' symlinks (never the file's own: a
    symlink loop or special file keeps its name for validation to report), or None outside."""
    real = Path(os.path.realpath(path.parent)) / path.name
    try:
        return real.relative_to(os.path.realpath(folder)).as_posix()
    except ValueError:
        return None


def _yaml_splits(root: Path, image_dir: Path, spec: dict[str, Any]) -> dict[str, str]:
    """image path relative to ``image_dir`` → split, from data.yaml's train/val/test entries (folders, or
    .txt lists of image paths; a list that cannot be read is a ConfigError naming it)."""
    base = root / str(spec.get("path", "")) if spec.get("path") and not Path(str(spec["path"])).is_absolute() else root
    out: dict[str, str] = {}
    for key, split in SPLIT_NAMES.items():
        entries = spec.get(key)
        for entry in ([] if entries is None else entries if isinstance(entries, list) else [entries]):
            target = base / str(entry)
            if target.suffix == ".txt" and file_kind(target) != MISSING:
                files = [target.parent / line for line in read_lines(target)]  # an absolute line stays absolute
            elif target.is_dir():
                files = [target / f for f in list_images(target)]
            else:
                continue
            for f in files:
                relative = _relative(f, image_dir)
                if relative is not None:  # else outside the images folder
                    out.setdefault(relative, split)
    return out


def parse_label(text: str, width: float, height: float) -> list[dict[str, Any]]:
    """The lines of a YOLO label file → one dict per non-blank line: label, x, y, w, h (absolute px of the
    ``width`` × ``height`` upright image; NaN when the size is unknown), segmentation, and ``parse_error``
    (None, or "line N: why" with a NaN box)."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        nan = float("nan")
        bad = {"label": tokens[0], "x": nan, "y": nan, "w": nan, "h": nan, "segmentation": None}
        try:
            cls, values = int(tokens[0]), [float(t) for t in tokens[1:]]
        except ValueError:
            rows.append({**bad, "parse_error": f"line {number}: not numbers: {line.strip()[:60]!r}"})
            continue
        if len(values) == 4:
            cx, cy, w, h = values
            rows.append({"label": str(cls), "x": (cx - w / 2) * width, "y": (cy - h / 2) * height,
                         "w": w * width, "h": h * height, "segmentation": None, "parse_error": None})
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = [v * width for v in values[0::2]], [v * height for v in values[1::2]]
            polygon = [c for xy in zip(xs, ys) for c in xy]
            rows.append({"label": str(cls), "x": min(xs), "y": min(ys), "w": max(xs) - min(xs),
                         "h": max(ys) - min(ys), "segmentation": [polygon], "parse_error": None})
        else:
            rows.append({**bad, "parse_error": f"line {number}: expected 'class cx cy w h' or a polygon of at "
                                               f"least 3 points, got {len(tokens)} values"})
    return rows


def _read_label(path: Path, width: float, height: float) -> tuple[list[dict[str, Any]], str | None, int | None]:
    """(rows of :func:`parse_label`, None, None), or ([], why, non-blank lines) when the file is not UTF-8
    (lines None when it could not be read at all: a FIFO, a directory...)."""
    try:
        data = read_regular_bytes(path)
    except UnreadableFile as exc:
        return [], str(exc), None
    try:
        text = decode_text(data)
    except UnreadableFile as exc:
        lines = sum(1 for line in data.splitlines() if line.strip())
        return [], f"{exc}" + (f" ({lines} label line(s) in it not imported)" if lines else ""), lines
    return parse_label(text, width, height), None, None


def import_yolo(path: str | Path, *, images: str = "images", labels: str = "labels", data_yaml: str = "data.yaml",
                class_names: list[str] | None = None) -> CanonicalDataset:
    """Read a YOLO txt dataset (see the module docstring)."""
    root = Path(path)
    image_dir, label_dir = root / images, root / labels
    if not image_dir.is_dir():
        raise ConfigError(f"{image_dir}: YOLO images folder not found (data.path, data.yolo.images)")
    names, spec, names_file = _names(root, label_dir, data_yaml, class_names)
    splits = _yaml_splits(root, image_dir, spec)
    label_files = {stem_key(rel): rel for rel in list_files(label_dir, (".txt",)) if rel != CLASS_LIST}
    builder = TableBuilder(class_names=[str(k) for k in range(len(names))])

    def add(file_name: str, width: float, height: float, split: str | None, label: str | None) -> None:
        rows, error, unparsed = _read_label(label_dir / label, width, height) if label else ([], None, None)
        image_id = builder.add_image(file_name, width, height, split, label_file=f"{labels}/{label}" if label else None,
                                     label_error=error, unparsed_objects=unparsed, label_frame="upright")
        for row in rows:
            builder.add_box(image_id, row.pop("label"), **row)

    for file_name in list_images(image_dir):
        width, height = upright_size(image_dir / file_name)
        label = label_files.pop(stem_key(file_name), None)
        add(file_name, width, height, splits.get(file_name, split_of(file_name)), label)
    for stem, label in sorted(label_files.items()):  # labels without an image: "image file exists" names them
        add(f"{stem}.*", float("nan"), float("nan"), split_of(label), label)
    dataset = builder.build(image_dir, {"source": "yolo", "path": str(root)}, source_ids=list(range(len(names))))
    dataset.categories["name"] = names
    dataset.categories["label_file"] = names_file
    dataset.info["class_names"] = names
    return dataset


def export_yolo(dataset: CanonicalDataset, out_dir: str | Path, *, images: str = "images",
                labels: str = "labels") -> None:
    """Write images/, labels/ (normalised boxes, 6 decimals) and data.yaml with names and split folders."""
    out = Path(out_dir)
    anns = annotations_by_image(dataset)
    names = class_name_of(dataset)
    splits: set[str] = set()
    for row in dataset.images.itertuples():
        split = row.split if isinstance(row.split, str) else None
        rel = f"{split}/{row.file_name}" if split else str(row.file_name)
        splits.update([split] if split else [])
        copy_image(dataset.image_root / row.file_name, out / images / rel)
        lines = []
        group = anns.get(int(row.image_id))
        for ann in ([] if group is None else group.itertuples()):
            cx, cy = (ann.x + ann.w / 2) / row.width, (ann.y + ann.h / 2) / row.height
            lines.append(f"{int(ann.category_id) - 1} {cx:.6f} {cy:.6f} {ann.w / row.width:.6f} "
                         f"{ann.h / row.height:.6f}")
        label = out / labels / f"{stem_key(rel)}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in lines))
    spec: dict[str, Any] = {"path": ".", "names": {k - 1: names[k] for k in sorted(names)}}
    spec.update({s: str(PurePosixPath(images) / s) for s in sorted(splits)})
    (out / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
