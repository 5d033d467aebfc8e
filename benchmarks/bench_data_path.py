"""Augmented detection images/s: today's per-sample path vs the batched module (a benchmark, not a test).

    python benchmarks/bench_data_path.py [--size 128] [--batch 64] [--slow-images 320] [--threads 1]

Both paths read the same synthetic prepared-like arrays held in memory (uint8 images [N, S, S, 3], boxes
[K, 4] xyxy px, box_labels [K], box_offsets [N + 1], as prepare writes them):
- slow: ``DetectionDataset`` with ``detection_augment()`` through a ``DataLoader`` with no workers;
- batched: what the training engine runs with ``train.augment: batched``: the same dataset behind
  ``WholeBatches`` (the split held in memory as one uint8 [N, 3, S, S] tensor, each batch one ``index_select``
  plus its per-image targets) through a ``DataLoader`` with no workers, then ``BatchAugment`` (uint8 out, like the
  slow path, and float32 0..255 out, what the models take).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from cvpipe.data.batch_augment import BatchAugment
from cvpipe.data.detection_dataset import DetectionDataset, collate_detection, detection_augment
from cvpipe.data.whole_batches import WholeBatches, whole_batch

log = logging.getLogger("bench_data_path")


def synthetic_prepared(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(images, boxes, box_labels, box_offsets) shaped like a prepared split, 1-6 boxes per image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    per_image = rng.integers(1, 7, count)
    offsets = np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64)
    lo = rng.uniform(0, size * 0.7, (offsets[-1], 2))
    boxes = np.concatenate([lo, lo + rng.uniform(8, size * 0.3, (offsets[-1], 2))], 1).clip(0, size)
    return images, boxes.astype(np.float32), rng.integers(0, 5, offsets[-1]).astype(np.int64), offsets


def slow_path(arrays: tuple[np.ndarray, ...], batch: int, images: int) -> float:
    """images/s of DetectionDataset + detection_augment() + DataLoader(num_workers=0)."""
    dataset = DetectionDataset(*arrays, transform=detection_augment())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0, collate_fn=collate_detection,
                        generator=torch.Generator().manual_seed(0))
    seen, it = 0, iter(loader)
    next(it)  # warm-up
    started = time.perf_counter()
    while seen < images:
        try:
            seen += len(next(it)[0])
        except StopIteration:
            it = iter(loader)
    return seen / (time.perf_counter() - started)


def batched_path(arrays: tuple[np.ndarray, ...], batch: int, steps: int, out_dtype: torch.dtype) -> float:
    """images/s of WholeBatches + DataLoader(num_workers=0) + BatchAugment, boxes and labels as per-image
    targets."""
    dataset = WholeBatches(DetectionDataset(*arrays), resident_bytes=1 << 40)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0, collate_fn=whole_batch,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    aug, gen = BatchAugment(out_dtype=out_dtype), torch.Generator().manual_seed(0)
    it = iter(loader)

    def step() -> None:
        nonlocal it
        try:
            images, targets = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets = next(it)
        aug(images, targets, generator=gen)

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--count", type=int, default=1024, help="images in the synthetic split")
    parser.add_argument("--slow-images", type=int, default=320, help="images to time on the per-sample path")
    parser.add_argument("--steps", type=int, default=60, help="batches to time on the batched path")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    arrays = synthetic_prepared(args.count, args.size)
    slow = slow_path(arrays, args.batch, args.slow_images)
    fast_u8 = batched_path(arrays, args.batch, args.steps, torch.uint8)
    fast_f32 = batched_path(arrays, args.batch, args.steps, torch.float32)
    log.info("size %d px, batch %d, %d thread(s)", args.size, args.batch, args.threads)
    log.info("%-46s %10.0f images/s", "per-sample transforms.v2 + DataLoader(0 workers)", slow)
    log.info("%-46s %10.0f images/s  (%.0fx)", "BatchAugment, uint8 out", fast_u8, fast_u8 / slow)
    log.info("%-46s %10.0f images/s  (%.0fx)", "BatchAugment, float32 0..255 out", fast_f32, fast_f32 / slow)


if __name__ == "__main__":
    main()
