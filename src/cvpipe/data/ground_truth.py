"""Ground truth of a prepared split in the forms the tasks score against (prepared coordinates, array order)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.data.arrays import load_array
from cvpipe.data.detection_dataset import DetectionDataset
from cvpipe.data.segmentation_dataset import binary_target


def load_ground_truth(prepared_dir: str | Path, split: str) -> dict[str, Any]:
    """The split's COCO ground truth in prepared coordinates (image order = array order)."""
    with (Path(prepared_dir) / split / "instances.json").open() as fh:
        return json.load(fh)


def first_images(gt: dict[str, Any], count: int | None) -> dict[str, Any]:
    """``gt`` restricted to the images at array index < ``count`` and their annotations (None: all of it)."""
    if count is None:
        return gt
    images = [im for im in gt["images"] if im["index"] < count]
    kept = {im["id"] for im in images}
    return {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in kept]}


def detection_targets(prepared_dir: str | Path, split: str) -> list[dict[str, np.ndarray]]:
    """Per-image ground truth {"boxes" [N, 4], "labels" [N]} from the prepared arrays."""
    dataset = DetectionDataset.from_prepared(prepared_dir, split)
    return [{k: v.numpy() for k, v in dataset.target(i).items()} for i in range(len(dataset))]


def semantic_targets(prepared_dir: str | Path, split: str, binary: bool) -> np.ndarray:
    """Label maps int64 [N, S, S] (0 background, k class k, 255 ignored); binary mode: 1 = any class."""
    masks = np.asarray(load_array(prepared_dir, split, "semantic")).astype(np.int64)
    return binary_target(masks) if binary else masks


def ground_truth_instances(gt: dict[str, Any]) -> list[dict[str, Any]]:
    """Per image (in array order) of a prepared split's COCO ground truth: {"labels" int64 [G] 0-based,
    "rles": [G RLEs]} for the non-crowd instances that carry a mask."""
    order = {im["id"]: im["index"] for im in gt["images"]}
    per_image: list[dict[str, Any]] = [{"labels": [], "rles": []} for _ in order]
    for ann in gt["annotations"]:
        if ann.get("iscrowd") or "segmentation" not in ann or not isinstance(ann["segmentation"], dict):
            continue
        entry = per_image[order[ann["image_id"]]]
        entry["labels"].append(ann["category_id"] - 1)
        entry["rles"].append(ann["segmentation"])
    return [{"labels": np.asarray(e["labels"], np.int64), "rles": e["rles"]} for e in per_image]
