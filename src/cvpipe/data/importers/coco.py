"""COCO instances JSON: boxes, polygon and RLE masks, iscrowd.

Layout: a folder holding ``annotations.json`` (name configurable) and ``images/``, or the JSON file itself
with images beside it. Category ids are mapped to 1..K in the order of the source ids (``source_id`` keeps
the original); an image with a ``split`` key keeps it. Image files under ``images/`` that the JSON does not
list become rows without a label file (rule "image has a label file"). Every record's field types are
checked (:mod:`cvpipe.data.importers.coco_fields`): a wrong type is a ``field_error`` on its row, reported
by rules "image/annotation/category fields well-typed", never coerced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvpipe.data.canonical import CanonicalDataset, from_coco
from cvpipe.data.file_checks import MISSING, UnreadableFile, file_kind, printable_name, read_text
from cvpipe.data.importers.coco_fields import check_coco
from cvpipe.data.importers.common import UNKNOWN_CLASS, copy_image, list_images
from cvpipe.errors import ConfigError


def _read_json(json_path: Path) -> dict[str, Any]:
    """The COCO object of ``json_path``; a ConfigError naming the file when it is absent, special, not UTF-8,
    not JSON, or not shaped like COCO (an object whose images/annotations/categories are lists)."""
    if file_kind(json_path) == MISSING:
        raise ConfigError(f"{json_path}: COCO annotations file not found (data.path, data.coco.annotations)")
    try:
        coco = json.loads(read_text(json_path))
    except UnreadableFile as exc:
        raise ConfigError(f"{json_path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{json_path}: not a readable COCO JSON file: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ConfigError(f"{json_path}: expected a COCO object with an 'images' list")
    for key in ("annotations", "categories"):
        if not isinstance(coco.get(key, []), list):
            raise ConfigError(f"{json_path}: '{key}' must be a list, got {type(coco[key]).__name__}")
    return coco


def import_coco(path: str | Path, *, annotations: str = "annotations.json", images: str = "images") -> CanonicalDataset:
    """Read a COCO dataset (see the module docstring); ``path`` is the folder or the JSON file."""
    path = Path(path)
    json_path = path / annotations if path.is_dir() else path
    coco, field_errors = check_coco(_read_json(json_path))
    image_dir = json_path.parent / images
    image_root = image_dir if image_dir.is_dir() else json_path.parent
    source_ids = sorted({c["id"] for c in coco["categories"] if c.get("id") is not None})
    mapping = {sid: k + 1 for k, sid in enumerate(source_ids)}
    dataset = from_coco(coco, image_root)
    ann = dataset.annotations
    ann["source_label"] = [a.get("category_id") for a in coco["annotations"]]
    ann["category_id"] = [mapping.get(c, UNKNOWN_CLASS) if c is not None else UNKNOWN_CLASS
                          for c in ann["source_label"]]
    ann["field_error"] = field_errors["annotations"]
    ann["label_file"] = json_path.name  # also for an annotation whose image_id names no image
    cats = dataset.categories
    cats["source_id"] = cats["category_id"]
    cats["category_id"] = [mapping.get(c, UNKNOWN_CLASS) for c in cats["source_id"]]
    cats["field_error"] = field_errors["categories"]
    cats["label_file"] = json_path.name
    dataset.categories = cats.sort_values("category_id", kind="stable").reset_index(drop=True)
    dataset.images["label_file"] = json_path.name
    dataset.images["field_error"] = field_errors["images"]
    dataset.images["name_error"] = None
    if image_dir.is_dir():  # files nobody labelled: listed, so validation can name them
        listed = set(dataset.images["file_name"].astype(str))
        extra = [name for name in list_images(image_dir) if name not in listed]
        if extra:
            known = dataset.images["image_id"].dropna()
            start = int(known.max()) + 1 if len(known) else 1
            rows = [{"image_id": start + k, "file_name": shown, "width": float("nan"), "height": float("nan"),
                     "split": None, "label_file": None, "field_error": None, "name_error": error}
                    for k, (shown, error) in enumerate(printable_name(name) for name in extra)]
            dataset.images = _concat(dataset.images, rows)
    dataset.info = {"source": "coco", "path": str(path), "class_names": dataset.class_names}
    return dataset


def _concat(frame: Any, rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.concat([frame, pd.DataFrame(rows, columns=frame.columns)], ignore_index=True)


def export_coco(dataset: CanonicalDataset, out_dir: str | Path) -> Path:
    """Write ``out_dir/annotations.json`` and copy the images to ``out_dir/images/``; returns the JSON path."""
    out_dir = Path(out_dir)
    for name in dataset.images["file_name"]:
        copy_image(dataset.image_root / name, out_dir / "images" / name)
    coco = dataset.to_coco()
    coco["info"] = {k: v for k, v in coco["info"].items() if k != "image_root"}
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(coco))
    return path
