"""Deterministic synthetic "shapes" scenes: one scene set for every task.

Each scene is an RGB image on a textured background with several filled shapes (circle, square,
triangle, ellipse, star, hexagon) of random size, rotation and colour, overlapping each other,
plus thin clutter strokes that are not objects. Annotations are COCO instances: a box and an RLE
instance mask per object, so detection, instance and semantic segmentation and (through
object-centred crops) classification all train from the same files.

Determinism: scene ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` only, so the same
seed gives the same bytes, whatever the number of scenes or the order they are written in.
Occlusion is bounded: a new object is placed only where it hides at most ``max_occlusion`` of any
earlier object, so every visible shape is labelled and no label is mostly hidden.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from cvpipe.data.masks import encode_mask

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "ellipse", "star", "hexagon")
PLACEMENT_TRIES = 30  # attempts to place one object before giving up on it


@dataclass(frozen=True)
class SceneObject:
    """One visible object: 1-based COCO category id, visible mask [H, W] bool."""

    category_id: int
    mask: np.ndarray


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float, aspect: float) -> list[tuple[float, float]]:
    """Vertices of a shape of bounding size ``size`` px centred at (cx, cy), rotated by ``angle`` rad."""
    r = size / 2.0
    if kind == "circle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif kind == "ellipse":
        pts = [(r * math.cos(t), r / aspect * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif kind == "square":
        s = r / math.sqrt(2) * 1.25
        pts = [(-s, -s), (s, -s), (s, s), (-s, s)]
    elif kind == "triangle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(t), rad * math.sin(t)))
    elif kind == "hexagon":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in np.arange(6) * math.pi / 3]
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth two-colour gradient plus low-frequency blobs and pixel noise, float32 [H, W, 3] in 0..255."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, 2 * math.pi)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)[..., None]
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c0, c1 = rng.uniform(40, 215, size=3), rng.uniform(40, 215, size=3)
    img = c0 * (1 - t) + c1 * t
    coarse = rng.normal(0, 12, size=(8, 8, 3)).astype(np.float32)
    img = img + np.kron(coarse, np.ones((size // 8 + 1, size // 8 + 1, 1), np.float32))[:size, :size]
    return img + rng.normal(0, 6, size=img.shape)


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that differs clearly from the mean colour it is drawn over."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - under).sum() > 150:
            return colour
    return 255.0 - under


def render_scene(rng: np.random.Generator, *, image_size: int, min_objects: int, max_objects: int,
                 min_object_size: int, max_object_size: int, max_occlusion: float,
                 clutter: int) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw one scene. Returns the image uint8 [H, W, 3] and its objects (visible masks, front-most last)."""
    img = _background(rng, image_size)
    masks: list[np.ndarray] = []  # visible mask per placed object
    full_areas: list[int] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        kind_idx = int(rng.integers(len(CLASS_NAMES)))
        for _try in range(PLACEMENT_TRIES):
            size = float(rng.uniform(min_object_size, max_object_size))
            cx, cy = rng.uniform(size * 0.4, image_size - size * 0.4, size=2)
            poly = _polygon(CLASS_NAMES[kind_idx], cx, cy, size, rng.uniform(0, 2 * math.pi), rng.uniform(1.7, 2.3))
            canvas = Image.new("L", (image_size, image_size), 0)
            ImageDraw.Draw(canvas).polygon(poly, fill=1)
            new = np.asarray(canvas, dtype=bool)
            if new.sum() < 0.2 * min_object_size ** 2:
                continue  # mostly outside the image
            if all((m & new).sum() <= max_occlusion * a - (a - m.sum()) for m, a in zip(masks, full_areas)):
                break
        else:
            continue  # no room left in this scene for another object
        masks = [m & ~new for m in masks]
        masks.append(new)
        full_areas.append(int(new.sum()))
        labels.append(kind_idx + 1)
        colour = _object_colour(rng, img[new].mean(axis=0))
        shade = rng.normal(0, 8, size=(int(new.sum()), 3))
        img[new] = colour + shade
    for _ in range(clutter):
        canvas = Image.new("L", (image_size, image_size), 0)
        x0, y0, x1, y1 = rng.uniform(0, image_size, size=4)
        ImageDraw.Draw(canvas).line([(x0, y0), (x1, y1)], fill=1, width=1)
        stroke = np.asarray(canvas, dtype=bool)
        img[stroke] = img[stroke] * 0.5 + rng.uniform(0, 255, size=3) * 0.5
    objects = [SceneObject(c, m) for c, m in zip(labels, masks)]
    return np.clip(img, 0, 255).astype(np.uint8), objects


def mask_to_coco(mask: np.ndarray) -> dict[str, Any]:
    """Box [x, y, w, h] (pixel-edge coordinates), area and RLE of a boolean mask [H, W]."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    return {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "segmentation": encode_mask(mask)}


def generate_shapes(out_dir: str | Path, *, seed: int, num_images: int, image_size: int, min_objects: int,
                    max_objects: int, min_object_size: int, max_object_size: int, max_occlusion: float,
                    clutter: int) -> dict[str, Any]:
    """Write ``num_images`` scenes to ``out_dir/images/*.png`` and ``out_dir/annotations.json`` (COCO).

    Returns the COCO dict. File names are ``scene_{i:05d}.png``; image ids are ``i + 1``.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num_images), desc="generate", unit="scene"):
        rng = np.random.default_rng([seed, i])
        img, objects = render_scene(rng, image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                                    min_object_size=min_object_size, max_object_size=max_object_size,
                                    max_occlusion=max_occlusion, clutter=clutter)
        name = f"scene_{i:05d}.png"
        Image.fromarray(img).save(out_dir / "images" / name, optimize=False)
        images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": obj.category_id,
                                "iscrowd": 0, **mask_to_coco(obj.mask)})
    coco = {
        "info": {"description": "cvpipe synthetic shapes", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASS_NAMES)],
    }
    with (out_dir / "annotations.json").open("w") as fh:
        json.dump(coco, fh)
    return coco
