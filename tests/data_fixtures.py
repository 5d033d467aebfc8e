"""Small writers the importer and validation tests build their fixtures with (no fixture file is checked in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cvpipe.data.canonical import CanonicalDataset


def write_image(path: Path, width: int = 32, height: int = 24, *, seed: int = 0, mode: str = "RGB",
                exif_orientation: int | None = None) -> Path:
    """A random-noise image (distinct content per seed) in ``mode``, format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[274] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, format=fmt, **kwargs)
    return path


def subset(dataset: CanonicalDataset, n: int) -> CanonicalDataset:
    """The first ``n`` images of a canonical dataset with their annotations."""
    images = dataset.images.iloc[:n].reset_index(drop=True)
    ann = dataset.annotations[dataset.annotations["image_id"].isin(images["image_id"])].reset_index(drop=True)
    return CanonicalDataset(images, ann, dataset.categories, dataset.image_root, dict(dataset.info))


def boxes_by_file(dataset: CanonicalDataset) -> pd.DataFrame:
    """file_name, class name, box, iscrowd per annotation, sorted: compares datasets across formats."""
    names = dict(zip(dataset.categories["category_id"], dataset.categories["name"]))
    files = dict(zip(dataset.images["image_id"], dataset.images["file_name"]))
    ann = dataset.annotations
    frame = pd.DataFrame({"file_name": ann["image_id"].map(files), "name": ann["category_id"].map(names),
                          "x": ann["x"], "y": ann["y"], "w": ann["w"], "h": ann["h"], "iscrowd": ann["iscrowd"]})
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def broken(report) -> dict[str, int]:
    """rule name → failing rows, for the broken rules of a validation report."""
    return {r["rule"]: r["unexpected_count"] for r in report.rules if not r["success"]}
