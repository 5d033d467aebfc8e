"""A small micrograph set through U-Net: the default schedule vs ``train.min_steps`` vs min_steps + elastic
deformation (a benchmark, not a test).

    python benchmarks/bench_small_segmentation.py [--images 30] [--size 256] [--variants default,min_steps,elastic]
        [--min-steps N] [--image-size 128] [--threads 1] [--seeds 0,1]

The data imitate an ISBI-2012-style electron-micrograph set (the case of the issue: 21 training images, grey,
0/255 masks): ``--images`` grey ``--size`` px scenes of curved Voronoi cells (foreground, 255) separated by dark
membranes 3-7 px wide with faint stretches (background, 0), dark round organelles inside cells that are *not*
membrane, cell texture, blur and noise (see :func:`micrograph`; ~78 % foreground, as ISBI 2012). They are written
as PNG folders (``images/``, ``masks/``), imported by the ``masks`` importer and prepared with params.yaml's
``prepare`` section (70/15/15 split: 21/4/5 images of 30; ``--image-size`` overrides its size), as a user's run
with only ``data.source: masks``, ``data.path`` and ``models.unet.train.binary: true`` set would be.

Every variant trains params.yaml's ``models.unet`` with ``binary: true`` and differs only in:
- default:    ``min_steps: null``, ``elastic: null`` (the schedule as it was: epochs x steps of one pass);
- min_steps:  params.yaml's ``min_steps`` (or ``--min-steps``), no elastic;
- elastic:    that min_steps and params.yaml's ``elastic`` (or U-Net's ``{std: 0.02, grid: 3}``).
For each: optimizer steps, training seconds (the epochs' wall time, validation included) and seconds per step,
test Dice and mIoU of the raw masks (sigmoid >= 0.5, no tuning) and pixel accuracy, as the evaluate stage reports
them. Seconds depend on ``--threads`` and on what else the machine runs; compare them within one invocation.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from cvpipe import engine
from cvpipe.config import load_params
from cvpipe.data.importers import import_dataset
from cvpipe.data.prepare import prepare_dataset
from cvpipe.device import resolve_runtime
from cvpipe.task_config import load_model_config

log = logging.getLogger("bench_small_segmentation")
REPO = Path(__file__).resolve().parents[1]


def micrograph(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grey image [size, size] and its mask (255 cell, 0 membrane). Cells: Voronoi regions of ~size²/1100
    seeds in coordinates bent by a smooth random field (curved walls); membranes: their borders dilated to 3-7 px,
    dark, with a contrast that fades along the wall (faint stretches, as in real micrographs); organelles: dark
    discs and ellipses inside cells, as dark as membranes (the model must tell them apart by shape and context);
    texture: smoothed noise; then a blur and pixel noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)

    def smooth(scale: float) -> np.ndarray:  # zero-mean noise smoothed over ``scale`` px, max |·| = 1
        field = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), scale)
        return field / (np.abs(field).max() + 1e-6)

    by, bx = yy + smooth(size / 10) * size / 25, xx + smooth(size / 10) * size / 25
    seeds = rng.uniform(0, size, (max(6, size * size // 1100), 2)).astype(np.float32)
    cell = np.argmin((by[..., None] - seeds[:, 0]) ** 2 + (bx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    border = (np.diff(cell, axis=0, prepend=cell[:1]) != 0) | (np.diff(cell, axis=1, prepend=cell[:, :1]) != 0)
    membrane = ndimage.binary_dilation(border, iterations=1)
    membrane |= ndimage.binary_dilation(border, iterations=3) & (smooth(size / 16) > 0.1)  # walls of varying width
    texture = smooth(2.0) * 45 + smooth(size / 20) * 25
    contrast = 0.45 + 0.55 * (smooth(size / 12) + 1) / 2  # 0.45-1: faint stretches of wall
    image = 170 + texture
    image[membrane] -= (95 * contrast)[membrane]
    for _ in range(int(rng.integers(size // 16, size // 8))):  # organelles, inside cells only
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 100, size / 30, 2)
        blob = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1) & ~ndimage.binary_dilation(membrane, iterations=2)
        image[blob] = rng.normal(85, 15, int(blob.sum()))
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 10, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), np.where(membrane, 0, 255).astype(np.uint8)


def write_set(root: Path, count: int, size: int, seed: int) -> Path:
    """``images/NNN.png`` (8-bit grey) and ``masks/NNN.png`` (0/255): the layout of ``data.source: masks``."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k in range(count):
        image, mask = micrograph(rng, size)
        Image.fromarray(image).save(root / "images" / f"{k:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k:03d}.png")
    return root


def variant_section(params: dict, variant: str, min_steps: int | None) -> dict:
    """params.yaml's models.unet with binary: true and the variant's schedule/augmentation."""
    section = {**params["models"]["unet"], "train": dict(params["models"]["unet"]["train"], binary=True)}
    train = section["train"]
    steps = min_steps if min_steps is not None else train.get("min_steps")
    elastic = train.get("elastic") or {"std": 0.02, "grid": 3}
    if variant == "default":
        train.update(min_steps=None, elastic=None)
    elif variant == "min_steps":
        train.update(min_steps=steps, elastic=None)
    elif variant == "elastic":
        train.update(min_steps=steps, elastic=elastic)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose default, min_steps or elastic")
    return section


def run_variant(section: dict, prepared: Path, work: Path, seed: int) -> dict[str, float]:
    """Train and evaluate one config; its steps, seconds of training and test figures."""
    config = load_model_config(section, "models.unet")
    runtime = resolve_runtime("cpu")
    rows: list[dict] = []
    started = time.perf_counter()
    engine.train(config, prepared=prepared, model_dir=work / "model", report_dir=work / "report", runtime=runtime,
                 seed=seed, on_epoch_end=lambda epoch, row: rows.append(row))
    seconds = time.perf_counter() - started
    outcome = engine.evaluate(prepared=prepared, model_dir=work / "model", report_dir=work / "report",
                              runtime=runtime, latency_runs=1)
    return {"steps": rows[-1]["steps"], "train_s": seconds, "dice": outcome.metrics["test_dice"],
            "miou": outcome.metrics["test_miou"], "pixel_accuracy": outcome.metrics["test_pixel_accuracy"],
            "val_dice": rows[-1].get("val_dice", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="px of the written micrographs (prepare resizes)")
    parser.add_argument("--variants", default="default,min_steps,elastic")
    parser.add_argument("--min-steps", type=int, default=None, help="instead of params.yaml's models.unet min_steps")
    parser.add_argument("--image-size", default=None, help="instead of params.yaml's prepare.image_size (int or auto)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (the data seed is fixed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    prep = params["prepare"]
    size = prep["image_size"] if args.image_size is None else args.image_size
    size = int(size) if str(size).isdigit() else size
    with tempfile.TemporaryDirectory() as tmp:
        root = write_set(Path(tmp) / "micrographs", args.images, args.size, seed=1)
        prepared = Path(tmp) / "prepared"
        prepare_dataset(import_dataset("masks", root), prepared, seed=params["seed"], image_size=size,
                        fractions=(prep["train_fraction"], prep["val_fraction"], prep["test_fraction"]),
                        crop_size=prep["crop_size"], crop_context=prep["crop_context"])
        train = np.load(prepared / "train" / "images.npy", mmap_mode="r")
        test_n = len(np.load(prepared / "test" / "images.npy", mmap_mode="r"))
        print(f"{args.images} micrographs of {args.size} px → {train.shape[1]} px (prepare.image_size {size}): "
              f"{len(train)} train, {test_n} test; {args.threads} threads")
        print(f"{'variant':<10} {'seed':>4} {'steps':>6} {'train s':>8} {'s/step':>7} {'test Dice':>9} {'mIoU':>6} "
              f"{'pix acc':>7}")
        for seed in (int(s) for s in args.seeds.split(",")):
            for variant in args.variants.split(","):
                section = variant_section(params, variant, args.min_steps)
                r = run_variant(section, prepared, Path(tmp) / f"{variant}-{seed}", seed)
                print(f"{variant:<10} {seed:>4} {r['steps']:>6.0f} {r['train_s']:>8.1f} "
                      f"{r['train_s'] / r['steps']:>7.3f} {r['dice']:>9.4f} "
                      f"{r['miou']:>6.4f} {r['pixel_accuracy']:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
