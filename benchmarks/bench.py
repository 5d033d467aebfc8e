"""Speed figures of the pipeline's hot paths, printed as a table (a benchmark, not a test).

    python benchmarks/bench.py [--prepared data/prepared] [--models classifier yolo ...]

Measures, on whatever device ``runtime.device`` resolves to:
- reading a training batch from the memory-mapped arrays vs decoding the same images from PNG;
- per configured model and ``train.augment`` mode (``--modes``, per_sample and batched by default): the training
  data path alone (loader and augmentation, no model), training steps on one batch, their ratio; ``--compile``
  adds the train steps under torch.compile;
- inference: batched images/s and single-image latency (p50) per model;
- on CUDA, the mean GPU utilisation during the train steps (nvidia-smi, sampled every 0.2 s).
Needs ``data/prepared`` (run ``dvc repro prepare`` first).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from report import report  # benchmarks/report.py (scripts run from this folder's path)

from cvpipe.config import load_config
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.device import eval_mode, resolve_runtime


class GpuUtilisation:
    """Mean GPU utilisation (%) over a block, sampled from ``nvidia-smi`` every 0.2 s in a thread; ``mean`` stays
    None off CUDA or without nvidia-smi."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self.index = device.index if device.index is not None else torch.cuda.current_device() if self.enabled else 0
        self.samples: list[float] = []
        self.mean: float | None = None

    def _sample(self, stop: threading.Event) -> None:
        while not stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                self.samples.append(float(out.stdout.strip()))

    def __enter__(self) -> "GpuUtilisation":
        if self.enabled:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, args=(self._stop,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.mean = sum(self.samples) / len(self.samples) if self.samples else None


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


def bench_model(name: str, params, prepared: Path, runtime, steps: int, augment: str | None = None,
                compile_too: bool = False) -> list[tuple[str, str]]:
    """Per configured model: the training data path alone (loader + augmentation, no model), train steps on one
    fixed augmented batch, their ratio, and inference throughput. ``augment`` overrides a detector's
    ``train.augment`` (per_sample | batched); ``compile_too`` also times the train steps under torch.compile."""
    import dataclasses

    from torch.utils.data import DataLoader

    from cvpipe.build import build_criterion
    from cvpipe.engine import build, fetched_whole, to_device
    from cvpipe.registry import get_task

    config = params.model(name)
    if augment is not None:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, augment=augment))
        name = f"{name} [{augment}]"
    task = get_task(config.task)
    meta = load_meta(prepared)
    model = build(task, config, meta, pretrained=False)
    criterion = build_criterion(config.task, config.train, **task.criterion_arguments(config, meta)).to(runtime.device)
    data = fetched_whole(task.train_data(prepared, config), runtime)  # the engine's loader

    def batches(count: int):
        loader = DataLoader(data.dataset, batch_size=config.train.batch_size, shuffle=True, collate_fn=data.collate,
                            drop_last=True)
        for i, (inputs, targets) in enumerate(loader):
            if i == count:
                return
            if data.device_augment is not None:
                inputs, targets = data.device_augment(inputs.to(runtime.device), to_device(targets, runtime.device))
            else:
                inputs, targets = inputs.to(runtime.device).float(), to_device(targets, runtime.device)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            yield inputs, targets

    count = max(1, min(10, len(data.dataset) // config.train.batch_size))
    list(batches(1))  # warm-up
    started = time.perf_counter()
    seen = sum(len(inputs) for inputs, _ in batches(count))
    data_rate = seen / (time.perf_counter() - started)

    inputs, targets = next(batches(1))
    loss_of = lambda out: criterion(out, targets)["loss"]  # noqa: E731
    model = runtime.prepare_model(model)
    x = runtime.prepare_input(inputs.float())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with runtime.autocast():
            loss = loss_of(model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    with GpuUtilisation(runtime.device) as gpu:
        train_rate = len(x) / _timed(step, max(steps, 20) if gpu.enabled else steps)
    gpu_note = f", GPU utilisation {gpu.mean:.0f}%" if gpu.mean is not None else ""
    compiled_rows = []
    if compile_too:  # the same steps through torch.compile (runtime.compile): first call compiles
        eager_model = model
        model = torch.compile(eager_model)
        started = time.perf_counter()
        step()
        first_s = time.perf_counter() - started
        compiled_rate = len(x) / _timed(step, steps)
        model = eager_model
        compiled_rows = [(f"{name}: train steps, torch.compile",
                          f"{compiled_rate:,.0f} images/s ({compiled_rate / train_rate:.2f}x eager); "
                          f"first step {first_s:.0f} s")]
    with eval_mode(model):
        infer_s = _timed(lambda: model(x), steps)
        one = x[:1]
        single_s = float(np.median([_timed(lambda: model(one), 1) for _ in range(20)]))
    both = 1 / (1 / data_rate + 1 / train_rate)  # one process doing both in turn
    return [(f"{name}: data path (no model)", f"{data_rate:,.0f} images/s"),
            (f"{name}: train steps", f"{train_rate:,.0f} images/s (batch {len(x)}){gpu_note}"),
            (f"{name}: data path / train", f"{data_rate / train_rate:.1f}x; both in turn {both:,.0f} images/s"),
            (f"{name}: inference", f"{len(x) / infer_s:,.0f} images/s batched, {single_s * 1000:.2f} ms single"),
            *compiled_rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--raw-images", type=Path, default=Path("data/raw/shapes/images"))
    parser.add_argument("--models", nargs="*", default=None, help="default: pipeline.models")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the train steps under torch.compile")
    parser.add_argument("--modes", nargs="*", default=["per_sample", "batched"], help="train.augment modes")
    args = parser.parse_args()
    params = load_config(args.params)
    rt = params.runtime
    runtime = resolve_runtime(rt.device, amp=rt.amp, num_threads=rt.num_threads,
                              channels_last=rt.channels_last, cpu_amp=rt.cpu_amp,
                              resident_data_gb=rt.resident_data_gb)
    rows = [("device", f"{runtime.device} (torch threads {torch.get_num_threads()}, amp {runtime.amp})")]
    rows += bench_loading(args.prepared, args.raw_images, batch=64)
    for name in args.models or params.pipeline.models:
        for mode in args.modes:
            added = bench_model(name, params, args.prepared, runtime, args.steps, augment=mode,
                                compile_too=args.compile and mode == args.modes[-1])
            rows += added
            print("\n".join(f"{label}  {value}" for label, value in added), flush=True)
    report(rows, "benchmark.json")


if __name__ == "__main__":
    main()
