"""Import + validation speed: 10,000 synthetic images' annotations, per format (a benchmark, not a test).

    python benchmarks/bench_import.py [--images 10000] [--formats coco yolo voc] [--workdir DIR]

Writes small random images (32×32 PNG, 1-6 boxes each) and their labels in each format to a temporary
folder, then times ``import_dataset`` and ``validate_dataset`` (file decoding, hashing and every GX rule)
separately and prints one row per format. DVC skips validation altogether when labels, images and
params are unchanged (the validate stage's deps), so this is the cost of a changed dataset.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.importers import export_coco, export_voc, export_yolo, import_dataset
from cvpipe.data.validation import validate_dataset

EXPORTERS = {"coco": export_coco, "yolo": export_yolo, "voc": export_voc}
SIZE = 32  # px, side of each synthetic image


def synthetic_dataset(folder: Path, num_images: int, seed: int = 0) -> CanonicalDataset:
    """``num_images`` distinct noise PNGs in ``folder`` with 1-6 random boxes each, as canonical tables."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        name = f"img_{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / name, compress_level=1)
        images.append({"image_id": i + 1, "file_name": name, "width": SIZE, "height": SIZE, "split": None})
        for _ in range(int(rng.integers(1, 7))):
            x, y = rng.integers(0, SIZE - 8, size=2)
            w, h = rng.integers(2, SIZE - max(x, y) + 1, size=2)
            annotations.append({"ann_id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(rng.integers(1, 4)), "x": float(x), "y": float(y), "w": float(w),
                                "h": float(h), "area": float(w * h), "iscrowd": 0, "segmentation": None})
    categories = pd.DataFrame({"category_id": [1, 2, 3], "name": ["a", "b", "c"]})
    return CanonicalDataset(pd.DataFrame(images), pd.DataFrame(annotations), categories, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--formats", nargs="+", default=["coco", "yolo", "voc"], choices=sorted(EXPORTERS))
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated datasets here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.disable(logging.INFO)  # GX announces its temporary docs folder at INFO on every run
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        started = time.perf_counter()
        source = synthetic_dataset(work / "source", args.images)
        print(f"wrote {args.images} images, {len(source.annotations)} boxes in {time.perf_counter() - started:.1f}s")
        print(f"{'format':<6} {'import s':>9} {'validate s':>11} {'total s':>8} {'images/s':>9}  result")
        for fmt in args.formats:
            EXPORTERS[fmt](source, work / fmt)
            t0 = time.perf_counter()
            dataset = import_dataset(fmt, work / fmt)
            t1 = time.perf_counter()
            report = validate_dataset(dataset, tolerance_px=0.5)
            t2 = time.perf_counter()
            result = "passed" if report.success else f"FAILED {sorted(report.failures)}"
            print(f"{fmt:<6} {t1 - t0:>9.2f} {t2 - t1:>11.2f} {t2 - t0:>8.2f} {args.images / (t2 - t0):>9.0f}  "
                  f"{result} ({len(dataset.images)} images, {len(dataset.annotations)} boxes)")


if __name__ == "__main__":
    main()
