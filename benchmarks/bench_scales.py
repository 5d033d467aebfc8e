"""The detectors' scale presets (``train.model.scale: n | s | m``, :mod:`cvpipe.models.scales`) side by side:
parameters, GFLOPs of one forward pass, and CPU images/s of inference and of training steps (a benchmark, not a test).

    python benchmarks/bench_scales.py [--sizes 128 416] [--archs yolo ssd detr] [--threads 2] [--batch 8]

GFLOPs are counted by ``torch.utils.flop_counter`` (multiply-adds × 2 of convolutions, matmuls and attention) for
one image at each size. Throughput: ``--batch`` random images, 3 classes, 4 random boxes per image for the
training step (forward + the architecture's loss + backward + AdamW), median of ``--repeat`` timed runs after one
warm-up; float32, channels_last as the default runtime trains.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from report import report  # benchmarks/report.py (scripts run from this folder's path)
from torch.utils.flop_counter import FlopCounterMode

from cvpipe.build import build_criterion, build_model
from cvpipe.models.scales import SCALES
from cvpipe.task_config import load_model_config

NUM_CLASSES = 3
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def targets(batch: int, size: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    out = []
    for _ in range(batch):
        lo = torch.rand(4, 2, generator=generator) * size * 0.6
        wh = (0.1 + torch.rand(4, 2, generator=generator) * 0.3) * size
        out.append({"boxes": torch.cat([lo, lo + wh], 1), "labels": torch.randint(0, NUM_CLASSES, (4,),
                                                                                 generator=generator)})
    return out


def timed(fn, repeat: int) -> float:
    fn()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure(arch: str, scale: str, size: int, batch: int, repeat: int) -> tuple[str, str]:
    config = load_model_config({"task": "detection", "train": {"arch": arch, "model": {"scale": scale},
                                                               **({"nms_iou": None} if arch == "detr" else {})}},
                               "bench")
    model = build_model("detection", config.train, num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    criterion = build_criterion("detection", config.train, num_classes=NUM_CLASSES)
    model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, size, size, generator=generator) * 255
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(one)
    gflops = counter.get_total_flops() / 1e9
    images = (torch.rand(batch, 3, size, size, generator=generator) * 255).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        infer_s = timed(lambda: model.decode(model(images)), repeat)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch_targets = targets(batch, size, generator)

    def step() -> None:
        loss = criterion(model(images), batch_targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_s = timed(step, repeat)
    return (f"{arch} {scale} @ {size} px",
            f"{params / 1e6:5.2f} M params  {gflops:6.2f} GFLOPs  inference {batch / infer_s:7.1f} img/s  "
            f"training {batch / train_s:6.1f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=sorted(SCALES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 416])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [("threads / batch", f"{args.threads} / {args.batch}")]
    for arch in args.archs:
        for scale in SCALES[arch]:
            for size in args.sizes:
                rows.append(measure(arch, scale, size, args.batch, args.repeat))
                print(*rows[-1], sep="  ", flush=True)
    report(rows, "bench_scales.json")


if __name__ == "__main__":
    main()
