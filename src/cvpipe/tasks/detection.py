"""Detection over the prepared scenes: train any detector of the contract in models/detector.py, predict,
score with pycocotools.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cvpipe.data.arrays import load_array
from cvpipe.data.detection_dataset import DetectionDataset, collate_detection, detection_augment
from cvpipe.device import Runtime, predict_in_batches
from cvpipe.metrics.detection import coco_evaluate, detections_to_coco
from cvpipe.postprocess.detections import select_detections_numpy
from cvpipe.tasks.instance_segmentation import predict_instances, select_instances
from cvpipe.training.loop import FitResult, adamw_one_cycle, fit

log = logging.getLogger(__name__)
COCO_SCORE_THRESHOLD = 0.001  # the COCO protocol scores (almost) every candidate, capped at 100 per image
COCO_MAX_DETECTIONS = 100


def predict_dense(model: nn.Module, images: np.ndarray, runtime: Runtime,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Decoded candidates for uint8 images [N, S, S, 3]: boxes [N, A, 4] xyxy abs px, scores [N, A, K]."""
    boxes, scores = predict_in_batches(model, images, runtime, batch_size,
                                       lambda net, x: [t.float() for t in net.decode(net(x))])
    return boxes, scores


def load_ground_truth(prepared_dir: str | Path, split: str) -> dict[str, Any]:
    """The split's COCO ground truth in prepared coordinates (image order = array order)."""
    with (Path(prepared_dir) / split / "instances.json").open() as fh:
        return json.load(fh)


def split_targets(prepared_dir: str | Path, split: str) -> list[dict[str, np.ndarray]]:
    """Per-image ground truth {"boxes" [N, 4], "labels" [N]} from the prepared arrays."""
    dataset = DetectionDataset.from_prepared(prepared_dir, split)
    return [{k: v.numpy() for k, v in dataset.target(i).items()} for i in range(len(dataset))]


def coco_scores(gt: dict[str, Any], detections: list[dict[str, np.ndarray]], iou_type: str = "bbox") -> dict[str, Any]:
    """COCO metrics of per-image detections (in ``gt``'s image order) through pycocotools."""
    image_ids = [im["id"] for im in sorted(gt["images"], key=lambda im: im["index"])]
    category_ids = [c["id"] for c in gt["categories"]]
    return coco_evaluate(gt, detections_to_coco(detections, image_ids, category_ids), iou_type=iou_type)


def train_detector(model: nn.Module, criterion: nn.Module, *, prepared_dir: str | Path, runtime: Runtime, seed: int,
                   epochs: int, batch_size: int, lr: float, weight_decay: float, grad_clip: float | None,
                   nms_iou: float | None, checkpoint_path: str | Path, fingerprint: str,
                   on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """AdamW + one-cycle over augmented training scenes; validation mAP (COCO protocol) every epoch.

    A model with ``predicts_masks = True`` (instance segmentation) gets instance masks in its targets and is
    also scored with mask mAP (``iouType="segm"``, masks binarised at 0.5) on validation.
    """
    with_masks = bool(getattr(model, "predicts_masks", False))
    train_set = DetectionDataset.from_prepared(prepared_dir, "train", transform=detection_augment(),
                                               with_masks=with_masks)
    if len(train_set) == 0:
        raise ValueError(f"{prepared_dir}/train holds no images: nothing to train on")
    val_images = load_array(prepared_dir, "val", "images")
    val_gt = load_ground_truth(prepared_dir, "val")

    def make_batches(epoch: int) -> DataLoader:
        return DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=collate_detection,
                          drop_last=len(train_set) > batch_size, generator=torch.Generator().manual_seed(seed + epoch))

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        images, targets = batch
        targets = [{k: v.to(runtime.device) for k, v in t.items()} for t in targets]
        outputs = net(runtime.prepare_input(images.float()))
        return criterion(outputs, targets)

    def evaluate(net: nn.Module) -> dict[str, float]:
        if len(val_images) == 0:
            return {}
        coco = dict(score_threshold=COCO_SCORE_THRESHOLD, iou_threshold=nms_iou, max_detections=COCO_MAX_DETECTIONS)
        if not with_masks:
            stats = coco_scores(val_gt, select_detections_numpy(*predict_dense(net, val_images, runtime), **coco))
            return {"map50": stats["map50"], "map50_95": stats["map50_95"]}
        dense = predict_instances(net, val_images, runtime)
        instances = select_instances(dense, mask_threshold=0.5, **coco)
        boxes, masks = coco_scores(val_gt, instances), coco_scores(val_gt, instances, iou_type="segm")
        return {"map50": boxes["map50"], "map50_95": boxes["map50_95"], "mask_map50": masks["map50"],
                "mask_map50_95": masks["map50_95"]}

    optimizer, scheduler = adamw_one_cycle(model, lr=lr, weight_decay=weight_decay,
                                           total_steps=epochs * len(make_batches(0)), pct_start=0.1)
    return fit(model, runtime=runtime, make_batches=make_batches, loss_fn=loss_fn, evaluate=evaluate,
               optimizer=optimizer, scheduler=scheduler, epochs=epochs, seed=seed, checkpoint_path=checkpoint_path,
               fingerprint=fingerprint, on_epoch_end=on_epoch_end, grad_clip=grad_clip)
