"""Speed figures of the pipeline's hot paths, printed as a table (a benchmark, not a test).

    python benchmarks/bench.py [--prepared data/prepared] [--models classifier yolo ...]

Measures, on whatever device ``runtime.device`` resolves to:
- reading a training batch from the memory-mapped arrays vs decoding the same images from PNG;
- training throughput (images/s over a few optimizer steps, after warm-up) per configured model;
- inference: batched images/s and single-image latency (p50) per model.
Needs ``data/prepared`` (run ``dvc repro prepare`` first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cvpipe.config import RuntimeConfig, from_section, load_params
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.device import eval_mode, resolve_runtime
from cvpipe.models.preprocess import to_model_input


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def bench_loading(prepared: Path, raw_images: Path, batch: int) -> list[tuple[str, str]]:
    images = load_array(prepared, "train", "images")
    idx = np.random.default_rng(0).choice(len(images), size=min(batch, len(images)), replace=False)
    mmap_s = _timed(lambda: np.asarray(images[np.sort(idx)]), 20)
    rows = [("load batch from memmap", f"{len(idx) / mmap_s:,.0f} images/s")]
    files = sorted(raw_images.glob("*.png"))[: len(idx)]
    if files:
        png_s = _timed(lambda: [np.asarray(Image.open(f).convert("RGB")) for f in files], 3)
        rows.append(("decode same batch from PNG", f"{len(files) / png_s:,.0f} images/s"))
    return rows


def bench_model(name: str, params: dict, prepared: Path, runtime, steps: int) -> list[tuple[str, str]]:
    from cvpipe.models.registry import build_criterion, build_detector
    from cvpipe.tasks.classification import build_classifier
    from cvpipe.config import ClassifierConfig, model_task
    from cvpipe.runners import runner_for

    meta = load_meta(prepared)
    task = model_task(params, name)
    if task == "classification":
        config = ClassifierConfig.from_params(params, name)
        model = build_classifier(config, meta)
        data = np.asarray(load_array(prepared, "train", "crops")[: config.batch_size])
        labels = torch.as_tensor(np.asarray(load_array(prepared, "train", "crop_labels")[: config.batch_size]))
        loss_of = lambda out: torch.nn.functional.cross_entropy(out.float(), labels.to(runtime.device))  # noqa: E731
    elif task == "segmentation":
        from cvpipe.losses.segmentation import SegmentationLoss
        from cvpipe.runners.segmentation import _build, _class_names
        from cvpipe.data.segmentation_dataset import SegmentationDataset

        config = runner_for(task).load_config(params, name).train
        model = _build(config.arch, meta, config.binary, config.model)
        criterion = SegmentationLoss(num_classes=len(_class_names(meta, config.binary)), binary=config.binary,
                                     **config.loss)
        dataset = SegmentationDataset.from_prepared(prepared, "train", binary=config.binary)
        data = np.asarray(dataset.images[: config.batch_size])
        masks = torch.stack([dataset[i][1] for i in range(len(data))]).to(runtime.device)
        loss_of = lambda out: criterion(out.float(), masks)["loss"]  # noqa: E731
    else:  # detection and instance segmentation: the training dataset's targets (masks for mask models)
        from cvpipe.data.detection_dataset import DetectionDataset

        config = runner_for(task).load_config(params, name).train
        model = build_detector(config.arch, meta, config.model)
        criterion = build_criterion(config.arch, model, config.loss).to(runtime.device)
        dataset = DetectionDataset.from_prepared(prepared, "train",
                                                 with_masks=bool(getattr(model, "predicts_masks", False)))
        data = np.asarray(dataset.images[: config.batch_size])
        targets = [{k: v.to(runtime.device) for k, v in dataset.target(i).items()} for i in range(len(data))]
        loss_of = lambda out: criterion(out, targets)["loss"]  # noqa: E731
    model = runtime.prepare_model(model)
    x = runtime.prepare_input(to_model_input(data))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with runtime.autocast():
            loss = loss_of(model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    train_s = _timed(step, steps)
    with eval_mode(model):
        infer_s = _timed(lambda: model(x), steps)
        one = x[:1]
        single_s = float(np.median([_timed(lambda: model(one), 1) for _ in range(20)]))
    return [(f"{name}: train", f"{len(x) / train_s:,.0f} images/s (batch {len(x)})"),
            (f"{name}: inference", f"{len(x) / infer_s:,.0f} images/s batched, {single_s * 1000:.2f} ms single")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--raw-images", type=Path, default=Path("data/raw/shapes/images"))
    parser.add_argument("--models", nargs="*", default=None, help="default: pipeline.models")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    params = load_params(args.params)
    rt = from_section(RuntimeConfig, params.get("runtime"), "runtime")
    runtime = resolve_runtime(rt.device, amp=rt.amp, num_threads=rt.num_threads)
    rows = [("device", f"{runtime.device} (torch threads {torch.get_num_threads()}, amp {runtime.amp})")]
    rows += bench_loading(args.prepared, args.raw_images, batch=64)
    for name in args.models or params["pipeline"]["models"]:
        rows += bench_model(name, params, args.prepared, runtime, args.steps)
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    Path("reports").mkdir(exist_ok=True)
    Path("reports/benchmark.json").write_text(json.dumps(dict(rows), indent=2))


if __name__ == "__main__":
    main()
