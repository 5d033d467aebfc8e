"""Ablation of the YOLO-style detector's recipe on real photographs (a benchmark that prints figures, not a test).

    python benchmarks/bench_recipes.py [--size 192] [--epochs 24] [--variants base levels3 ema scale_s defaults]

Each variant trains from scratch on the raccoon set (``../shared/datasets/raccoon``, 200 web photographs, one
class, VOC), same split, seed and schedule, and is scored on the test split by the evaluate stage's COCO protocol:
- ``base``: the default params' YOLO (strides [8, 16], scale n);
- ``levels3``: strides [8, 16, 32], what ``strides: auto`` resolves to when objects are larger than 4 × 16 px;
- ``ema``: ``levels3`` + ``ema_decay`` 0.995 (an average over the last ~200 steps);
- ``scale_s``: ``levels3`` at scale s (wider, two head convs);
- ``defaults``: what params.yaml's YOLO now does on such data: ``strides: auto`` and ``min_steps: 1100``.
Printed: test mAP@[.5:.95] and mAP@0.5, best validation mAP@0.5 and training seconds per variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import torch
from bench_transfer import RACCOON, yolo_section
from report import report  # benchmarks/report.py (scripts run from this folder's path)

from cvpipe import engine
from cvpipe.data.importers import import_dataset
from cvpipe.data.prepare import prepare_dataset
from cvpipe.device import resolve_runtime
from cvpipe.task_config import load_model_config

VARIANTS = {
    "base": {},
    "levels3": {"model": {"strides": [8, 16, 32]}},
    "ema": {"model": {"strides": [8, 16, 32]}, "ema_decay": 0.995},
    "scale_s": {"model": {"strides": [8, 16, 32], "scale": "s", "width": None, "depth": None, "head_convs": None}},
    "defaults": {"model": {"strides": "auto"}, "min_steps": 1100},
}


def section(variant: str, epochs: int) -> dict:
    out = copy.deepcopy(yolo_section(epochs, None))
    change = VARIANTS[variant]
    out["train"]["model"].update(change.get("model", {}))
    out["train"]["model"] = {k: v for k, v in out["train"]["model"].items() if v is not None}
    out["train"].update({k: v for k, v in change.items() if k != "model"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("reports/bench_recipes"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    prepared = args.work / f"raccoon_{args.size}"
    if not (prepared / "meta.json").is_file():
        prepare_dataset(import_dataset("voc", RACCOON, {"images": "images", "annotations": "annotations"}),
                        prepared, seed=args.seed, image_size=args.size, fractions=(0.7, 0.15, 0.15), crop_size=48,
                        crop_context=1.25)
    runtime = resolve_runtime("cpu")
    rows = [("data", f"raccoon at {args.size} px, {args.epochs} epochs, seed {args.seed}, {args.threads} threads")]
    for variant in args.variants:
        config = load_model_config(section(variant, args.epochs), "bench")
        out = args.work / variant
        history: list[dict] = []
        started = time.perf_counter()
        engine.train(config, prepared=prepared, model_dir=out, report_dir=out / "report", runtime=runtime,
                     seed=args.seed, on_epoch_end=lambda epoch, row: history.append(row))
        seconds = time.perf_counter() - started
        engine.evaluate(prepared=prepared, model_dir=out, report_dir=out / "report", runtime=runtime, latency_runs=2)
        test = json.loads((out / "report" / "metrics.json").read_text())
        rows.append((variant, f"test mAP@[.5:.95] {test['map50_95']:.3f}  mAP@0.5 {test['map50']:.3f}  best val "
                              f"mAP@0.5 {max(r.get('val_map50', 0.0) for r in history):.3f}  {seconds:.0f} s"))
        print(*rows[-1], sep="  ", flush=True)
    report(rows, "bench_recipes.json")


if __name__ == "__main__":
    main()
