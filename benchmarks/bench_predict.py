"""``cvpipe predict`` speed: start-up and images/s per model (a benchmark, not a test).

    python benchmarks/bench_predict.py [--models yolo unet ...] [--images 200] [--photo-size 640 480]

Uses the pipeline's exported ``models/<m>/model.onnx`` where ``make pipeline`` left one, otherwise exports the
configured architecture untrained (said so in the output: an untrained detector's score distribution changes
how many candidates reach NMS). Writes ``--images`` JPEG files at a photo size (classifier: crop-sized files)
made from synthetic scenes, then reports, per model:

- start-up: wall time of a whole ``cvpipe predict`` process on one image (interpreter, imports, session,
  one prediction, exit), next to the time ``import torch, torchvision`` alone takes in a fresh interpreter, which
  the ONNX path no longer pays;
- throughput: images/s of :func:`cvpipe.predict.predict` (decode, letterbox, onnxruntime, post-processing,
  writers) without and with overlays, against the baseline measured in the same run: onnxruntime alone on the
  same images already letterboxed (the ratio is the share of the model's own speed that reaches the user).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report import report  # benchmarks/report.py (scripts run from this folder's path)

SETTINGS = {"score_threshold": 0.3, "nms_iou_threshold": 0.5, "max_detections": 100, "mask_threshold": 0.5,
            "min_area": 0, "reject_threshold": 0.0}  # an untrained export's stand-ins for the tuned values


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def prepared_data(work: Path, params) -> Path:
    """A small prepared split of the embedded synthetic data at the configured sizes."""
    from cvpipe.data.importers import import_dataset
    from cvpipe.data.prepare import prepare_dataset
    from cvpipe.data.synthetic import generate_shapes

    shapes = {**dataclasses.asdict(params.data.shapes), "num_images": 60}
    generate_shapes(work / "raw", seed=0, **shapes)
    prep = params.prepare
    prepare_dataset(import_dataset("shapes", work / "raw"), work / "prepared", seed=0, image_size=prep.image_size,
                    fractions=(0.4, 0.2, 0.4), crop_size=prep.crop_size, crop_context=prep.crop_context)
    return work / "prepared"


def onnx_model(name: str, params, prepared: Path, work: Path) -> tuple[Path, str]:
    """The pipeline's exported model of ``name``, or the configured architecture exported untrained."""
    exported = Path("models") / name / "model.onnx"
    if exported.is_file():
        return exported, "trained (models/)"
    import torch

    from cvpipe.data.arrays import load_array
    from cvpipe.data.prepare import load_meta
    from cvpipe.engine import build
    from cvpipe.export import export_onnx
    from cvpipe.registry import get_task
    from cvpipe.tasks.base import Trained

    config = params.model(name)
    task = get_task(config.task)
    meta = load_meta(prepared)
    model = build(task, config, meta, pretrained=False).eval()
    side = np.asarray(load_array(prepared, "test", task.input_array)).shape[1]  # the model's input size
    thresholds = {k: SETTINGS[k] for k in task.serving_params}
    path = export_onnx(task.graph(model), torch.rand(2, 3, side, side) * 255, work / f"{name}.onnx", opset=18,
                       output_names=task.onnx_outputs,
                       metadata={"task": task.name, **task.onnx_metadata(Trained(model, config, meta)), **thresholds})
    return path, "untrained export"


def write_images(folder: Path, prepared: Path, array: str, count: int, size: tuple[int, int]) -> list[Path]:
    from cvpipe.data.arrays import load_array

    source = np.asarray(load_array(prepared, "test", array))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(source[i % len(source)]).resize(size, Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def _per_image(out: Path) -> float | None:
    """Mean detections (or instances) per image in a predict output folder; None for other tasks."""
    if not (out / "results.json").is_file():
        return None
    images = json.loads((out / "images.json").read_text())["images"]
    return len(json.loads((out / "results.json").read_text())) / max(len(images), 1)


def onnx_only_rate(model: Path, paths: list[Path], batch: int) -> float:
    """onnxruntime alone: images/s on the same files, decoded and letterboxed beforehand (not timed)."""
    from cvpipe.image_io import read_image
    from cvpipe.onnx_inference import run_onnx
    from cvpipe.onnx_predictor import OnnxPredictor

    predictor = OnnxPredictor()
    predictor.load_onnx(model)
    inputs = np.concatenate([predictor.to_input(read_image(p)[None])[0] for p in paths])
    run_onnx(predictor.session, inputs[:batch], batch_size=batch)  # warm-up
    started = time.perf_counter()
    run_onnx(predictor.session, inputs, batch_size=batch)
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", nargs="*", default=None, help="default: pipeline.models")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--photo-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="detectors: override the (stand-in) threshold, e.g. to load NMS on an untrained model")
    args = parser.parse_args()

    from cvpipe.config import load_config
    from cvpipe.predict import predict
    from cvpipe.registry import get_task

    params = load_config(args.params)
    torch_import = float(np.median([_wall([sys.executable, "-c", "import torch, torchvision"]) for _ in range(3)]))
    rows = [("import torch, torchvision (fresh interpreter)", f"{torch_import:.2f} s")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = prepared_data(work, params)
        for name in args.models or params.pipeline.models:
            task = get_task(params.model(name).task)
            crops, serving_params = task.input_array == "crops", task.serving_params
            model, origin = onnx_model(name, params, prepared, work)
            size = (96, 96) if crops else tuple(args.photo_size)
            paths = write_images(work / "images" / name, prepared, "crops" if crops else "images", args.images, size)
            startup = float(np.median([_wall([sys.executable, "-m", "cvpipe.cli", "predict", str(paths[0]), "--model",
                                               str(model), "--out", str(work / "one"), "--quiet", "--no-overlays"])
                                        for _ in range(3)]))
            overrides = {"score_threshold": args.score_threshold} if "score_threshold" in serving_params else {}
            plain = predict(str(paths[0].parent), str(model), work / "out" / name, batch_size=args.batch_size,
                            overlays=False, progress=False, overrides=overrides)
            drawn = predict(str(paths[0].parent), str(model), work / "drawn" / name, batch_size=args.batch_size,
                            overlays=True, progress=False, overrides=overrides)
            baseline = onnx_only_rate(model, paths, args.batch_size)
            size_text = f"{size[0]}x{size[1]} JPEG"
            found = _per_image(work / "out" / name)
            rows += [(f"{name}: model", f"{origin}, {args.images} x {size_text}" + (f", {found:.1f} found per image"
                                                                                   if found is not None else "")),
                     (f"{name}: start-up, one image", f"{startup:.2f} s (whole process, no overlays)"),
                     (f"{name}: onnxruntime alone (baseline)", f"{baseline:,.0f} images/s"),
                     (f"{name}: predict, no overlays", f"{plain['images_per_second']:,.0f} images/s "
                                                      f"({plain['images_per_second'] / baseline:.2f}x baseline)"),
                     (f"{name}: predict, overlays", f"{drawn['images_per_second']:,.0f} images/s "
                                                    f"({drawn['images_per_second'] / baseline:.2f}x baseline)")]
            print("\n".join(f"{label:<40}  {value}" for label, value in rows[-5:]), flush=True)
    report(rows, "benchmark_predict.json")


if __name__ == "__main__":
    main()
