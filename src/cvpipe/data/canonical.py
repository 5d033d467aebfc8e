"""The canonical dataset: three pandas tables every importer produces and every later stage reads.

Tables (DESIGN.md, "validate"):
- ``images``: image_id (int, unique), file_name (str, relative to ``image_root``), width, height (px),
  split ("train" | "val" | "test" | None when the source gives no split).
- ``annotations``: ann_id (int, unique), image_id, category_id (1..K, contiguous), x, y, w, h
  (COCO box: top-left corner and size in px of the original image), area, iscrowd (0/1),
  segmentation (COCO RLE or polygon list, or None).
- ``categories``: category_id (1..K), name (the class name the source gave).

Optional columns an importer may add (kept through the COCO JSON where marked *):
- ``images``: ``label_file`` (the source label file of the row, None when the image has none),
  ``mask_file`` and ``mask_values`` (semantic mask folders: mask path and its class values), ``name_error``
  (the file name is not UTF-8), ``label_error`` and ``field_error`` (a label file or record that cannot be
  used; validation reports each), ``lossy_mask`` (a mask file saved as JPEG or lossy WebP), ``unparsed_objects``
  (how many objects a label file that does not parse holds, counted from its bytes; never imported).
- ``annotations``: ``difficult`` * (Pascal VOC flag, 0/1), ``source_label`` (the class as written in the source).
- ``categories``: ``source_id`` * (the class id or index the source used before mapping to 1..K).

Coordinates are those of the *upright* image: the stored pixels with their EXIF orientation applied
(validation turns boxes drawn on the stored pixels into that frame; ``image_files.open_rgb`` reads it).

COCO instances JSON is the interchange format because pycocotools reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

IMAGE_COLUMNS = ["image_id", "file_name", "width", "height", "split"]
ANNOTATION_COLUMNS = ["ann_id", "image_id", "category_id", "x", "y", "w", "h", "area", "iscrowd", "segmentation"]
CATEGORY_COLUMNS = ["category_id", "name"]
ANNOTATION_EXTRAS = ("difficult",)  # optional columns written to and read from the COCO JSON
CATEGORY_EXTRAS = ("source_id",)


@dataclass
class CanonicalDataset:
    """The three canonical tables plus the folder their ``file_name`` values are relative to."""

    images: pd.DataFrame
    annotations: pd.DataFrame
    categories: pd.DataFrame
    image_root: Path
    info: dict[str, Any] = field(default_factory=dict)  # source format, path, validation counts

    @property
    def class_names(self) -> list[str]:
        return self.categories.sort_values("category_id")["name"].tolist()

    def to_coco(self) -> dict[str, Any]:
        """COCO instances dict; ``info.image_root`` records where the files live."""
        images = [
            {"id": int(r.image_id), "file_name": str(r.file_name), "width": int(r.width), "height": int(r.height),
             **({"split": r.split} if isinstance(r.split, str) else {})}
            for r in self.images.itertuples()
        ]
        annotations = []
        for r in self.annotations.itertuples():
            ann = {"id": int(r.ann_id), "image_id": int(r.image_id), "category_id": int(r.category_id),
                   "bbox": [float(r.x), float(r.y), float(r.w), float(r.h)], "area": float(r.area),
                   "iscrowd": int(r.iscrowd)}
            if r.segmentation is not None:
                ann["segmentation"] = r.segmentation
            ann.update(_extras(r, ANNOTATION_EXTRAS))
            annotations.append(ann)
        categories = [{"id": int(r.category_id), "name": str(r.name), **_extras(r, CATEGORY_EXTRAS)}
                      for r in self.categories.itertuples()]
        return {"info": {**self.info, "image_root": str(self.image_root)}, "images": images,
                "annotations": annotations, "categories": categories}

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with Path(path).open("w") as fh:
            json.dump(self.to_coco(), fh)


def _extras(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The optional columns of ``row`` that hold a value, as JSON scalars."""
    out = {}
    for name in names:
        value = getattr(row, name, None)
        if value is not None and not (isinstance(value, float) and value != value):  # NaN: column absent here
            out[name] = value.item() if hasattr(value, "item") else value
    return out


def from_coco(coco: dict[str, Any], image_root: str | Path) -> CanonicalDataset:
    """Canonical tables from a COCO instances dict (missing optional keys get COCO defaults)."""
    images = pd.DataFrame(
        [{"image_id": im.get("id"), "file_name": im.get("file_name"), "width": im.get("width"),
          "height": im.get("height"), "split": im.get("split")} for im in coco.get("images", [])],
        columns=IMAGE_COLUMNS,
    )
    rows = []
    for ann in coco.get("annotations", []):
        bbox = ann.get("bbox") or [None] * 4
        x, y, w, h = (list(bbox) + [None] * 4)[:4]
        area = ann.get("area")
        rows.append({"ann_id": ann.get("id"), "image_id": ann.get("image_id"), "category_id": ann.get("category_id"),
                     "x": x, "y": y, "w": w, "h": h,
                     "area": area if area is not None else (w or 0) * (h or 0),
                     "iscrowd": int(ann.get("iscrowd", 0)), "segmentation": ann.get("segmentation"),
                     **{k: ann[k] for k in ANNOTATION_EXTRAS if k in ann}})
    extras = [k for k in ANNOTATION_EXTRAS if any(k in r for r in rows)]
    annotations = pd.DataFrame(rows, columns=ANNOTATION_COLUMNS + extras)
    for col in ("x", "y", "w", "h", "area"):
        annotations[col] = pd.to_numeric(annotations[col], errors="coerce").astype(float)
    cats = [{"category_id": c.get("id"), "name": c.get("name"), **{k: c[k] for k in CATEGORY_EXTRAS if k in c}}
            for c in coco.get("categories", [])]
    categories = pd.DataFrame(cats, columns=CATEGORY_COLUMNS + [k for k in CATEGORY_EXTRAS if any(k in c for c in cats)])
    info = coco.get("info") if isinstance(coco.get("info"), dict) else {}  # COCO's info is free-form
    info = {k: v for k, v in info.items() if k != "image_root"}
    return CanonicalDataset(images, annotations, categories, Path(image_root), info)


def load_coco(path: str | Path, image_root: str | Path | None = None) -> CanonicalDataset:
    """Read a COCO JSON file; ``image_root`` defaults to ``info.image_root`` or the file's folder."""
    path = Path(path)
    with path.open() as fh:
        coco = json.load(fh)
    root = image_root or coco.get("info", {}).get("image_root") or path.parent
    return from_coco(coco, root)
