"""Fine-tuning proven offline: epochs to a validation mAP from a start the pipeline made itself vs from scratch
(a benchmark that prints figures, not a test).

    python benchmarks/bench_transfer.py [--target raccoon|shifted] [--size 192] [--source-epochs 8] [--epochs 24]

No weights can be downloaded here, so the start is made by the pipeline: the YOLO-style detector trained on the
embedded synthetic scenes (6 shape classes, 128 px), saved as ``model.pt``. The target is a different dataset
with a different class list, so the class predictor is replaced (its shape depends on K) and every other tensor
starts from the source model (:func:`cvpipe.models.weights.load_pretrained`, ``train.pretrained`` in params):
- ``raccoon``: ``../shared/datasets/raccoon`` (200 web photographs, one class, VOC), letterboxed to ``--size``;
- ``shifted``: synthetic scenes of another distribution (larger canvas, bigger objects, more clutter, other
  seed) with few training images, re-labelled to two classes (round vs angular shapes).
Both arms train the same schedule with the same seed; validation mAP@0.5 and mAP@[.5:.95] after every epoch.
Printed: the best mAP of each arm, the epochs each needs to reach the scratch arm's best mAP@0.5 (and 90 % of it),
and epoch-seconds. The source model is cached under ``--work`` (re-used when its params match).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import report  # benchmarks/report.py (scripts run from this folder's path)

from cvpipe import engine
from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.importers import import_dataset
from cvpipe.data.prepare import prepare_dataset
from cvpipe.data.synthetic import generate_shapes
from cvpipe.device import resolve_runtime
from cvpipe.task_config import load_model_config

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
SOURCE_SHAPES = dict(num_images=2000, image_size=128, min_objects=2, max_objects=6, min_object_size=16,
                     max_object_size=46, max_occlusion=0.35, clutter=8)  # the embedded default (params.yaml)
SHIFTED_SHAPES = dict(num_images=200, image_size=192, min_objects=1, max_objects=4, min_object_size=36,
                      max_object_size=90, max_occlusion=0.2, clutter=20)
ROUND = {"circle", "ellipse"}  # the shifted target's class 'round'; every other shape is 'angular'


def yolo_section(epochs: int, pretrained: str | None) -> dict:
    """The default params' YOLO section (params.yaml), with the schedule and start of this benchmark."""
    return {"task": "detection", "train": {
        "arch": "yolo", "epochs": epochs, "batch_size": 16, "lr": 0.006, "weight_decay": 0.0005, "grad_clip": 10.0,
        "nms_iou": 0.5, "augment": "batched", "pretrained": pretrained,
        "model": {"width": 16, "depth": 1, "strides": [8, 16], "head_convs": 1},
        "loss": {"weight_box": 5.0, "weight_obj": 1.0, "weight_cls": 1.0}}}


def train(section: dict, prepared: Path, out: Path, seed: int) -> tuple[list[dict], float]:
    """Train a model section on ``prepared``; the per-epoch history and the seconds it took."""
    config = load_model_config(section, "bench")
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    started = time.perf_counter()
    engine.train(config, prepared=prepared, model_dir=out, report_dir=out / "report", runtime=resolve_runtime("cpu"),
                 seed=seed, on_epoch_end=lambda epoch, row: history.append(row))
    return history, time.perf_counter() - started


def source_model(work: Path, epochs: int, seed: int) -> Path:
    """model.pt of YOLO trained on the embedded synthetic scenes (cached by its params)."""
    key = json.dumps({"shapes": SOURCE_SHAPES, "epochs": epochs, "seed": seed}, sort_keys=True)
    model_dir = work / "source"
    if (model_dir / "model.pt").is_file() and (model_dir / "key.json").is_file() and \
            (model_dir / "key.json").read_text() == key:
        return model_dir / "model.pt"
    raw, prepared = work / "source_raw", work / "source_prepared"
    generate_shapes(raw, seed=seed, **SOURCE_SHAPES)
    prepare_dataset(import_dataset("shapes", raw), prepared, seed=seed, image_size=SOURCE_SHAPES["image_size"],
                    fractions=(0.7, 0.15, 0.15), crop_size=48, crop_context=1.25)
    history, seconds = train(yolo_section(epochs, None), prepared, model_dir, seed)
    logging.info("source model: %d epochs in %.0f s, val mAP@0.5 %.3f", epochs, seconds, history[-1]["val_map50"])
    (model_dir / "key.json").write_text(key)
    return model_dir / "model.pt"


def target_dataset(target: str, work: Path, seed: int):
    if target == "raccoon":
        if not (RACCOON / "annotations").is_dir():
            raise SystemExit(f"raccoon dataset not found at {RACCOON}")
        return import_dataset("voc", RACCOON, {"images": "images", "annotations": "annotations"})
    raw = work / "shifted_raw"
    generate_shapes(raw, seed=seed + 1000, **SHIFTED_SHAPES)
    dataset = import_dataset("shapes", raw)
    names = dict(zip(dataset.categories["category_id"], dataset.categories["name"]))
    annotations = dataset.annotations.assign(
        category_id=[1 if names[c] in ROUND else 2 for c in dataset.annotations["category_id"]])
    categories = pd.DataFrame({"category_id": [1, 2], "name": ["round", "angular"]})
    return CanonicalDataset(images=dataset.images, annotations=annotations, categories=categories,
                            image_root=dataset.image_root)


def epochs_to(history: list[dict], key: str, level: float) -> str:
    for i, row in enumerate(history, 1):
        if row.get(key, 0.0) >= level:
            return str(i)
    return f"> {len(history)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=("raccoon", "shifted"), default="raccoon")
    parser.add_argument("--size", type=int, default=192, help="target image size (px)")
    parser.add_argument("--source-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=24, help="fine-tuning and scratch epochs")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("reports/bench_transfer"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    start = source_model(args.work, args.source_epochs, args.seed)
    prepared = args.work / f"{args.target}_prepared_{args.size}"
    if not (prepared / "meta.json").is_file():
        prepare_dataset(target_dataset(args.target, args.work, args.seed), prepared, seed=args.seed,
                        image_size=args.size, fractions=(0.7, 0.15, 0.15), crop_size=48, crop_context=1.25)
    arms = {}
    for arm, pretrained in (("scratch", None), ("fine-tuned", str(start))):
        arms[arm] = train(yolo_section(args.epochs, pretrained), prepared, args.work / f"{args.target}_{arm}",
                          args.seed)
    scratch_best = max(row["val_map50"] for row in arms["scratch"][0])
    rows = [("target", f"{args.target} at {args.size} px, {args.epochs} epochs, seed {args.seed}"),
            ("source", f"YOLO on the embedded shapes, {args.source_epochs} epochs ({start})")]
    for arm, (history, seconds) in arms.items():
        best50 = max(row["val_map50"] for row in history)
        best = max(row["val_map50_95"] for row in history)
        rows += [(f"{arm}: best val mAP@0.5 / @[.5:.95]", f"{best50:.3f} / {best:.3f}"),
                 (f"{arm}: epochs to scratch's best mAP@0.5 ({scratch_best:.3f})",
                  epochs_to(history, "val_map50", scratch_best)),
                 (f"{arm}: epochs to 90 % of it ({0.9 * scratch_best:.3f})",
                  epochs_to(history, "val_map50", 0.9 * scratch_best)),
                 (f"{arm}: val mAP@0.5 by epoch", " ".join(f"{row['val_map50']:.2f}" for row in history)),
                 (f"{arm}: seconds per epoch", f"{seconds / len(history):.1f}")]
    report(rows, f"bench_transfer_{args.target}.json")
    np.save(args.work / f"{args.target}_curves.npy", np.array([[r["val_map50"] for r in h] for h, _ in
                                                               arms.values()]))


if __name__ == "__main__":
    main()
