"""Semantic segmentation over the prepared scenes: train, predict probabilities, score (with and without
post-processing)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import IGNORE_INDEX
from cvpipe.data.segmentation_dataset import SegmentationDataset, binary_target, segmentation_augment
from cvpipe.device import Runtime, predict_in_batches
from cvpipe.metrics.segmentation import segmentation_scores, update_confusion
from cvpipe.postprocess.masks import clean_mask, probabilities_to_labels
from cvpipe.training.loop import FitResult, adamw_one_cycle, fit


def predict_probabilities(model: nn.Module, images: np.ndarray, runtime: Runtime,
                          batch_size: int = 32) -> np.ndarray:
    """float16 [N, C, S, S] probabilities (softmax over K+1 channels, or sigmoid of 1 in binary mode)."""
    def probabilities(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        logits = net(x).float()
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        return [probs.half()]  # float16 per batch: a split's probabilities at half the memory

    return predict_in_batches(model, images, runtime, batch_size, probabilities)[0]


def labels_from_probabilities(probs: np.ndarray, *, threshold: float | None, min_area: int,
                              fill_holes: bool) -> np.ndarray:
    """Label maps [N, S, S] after thresholding/argmax and connected-component cleaning (min_area 0 = none)."""
    labels = probabilities_to_labels(probs.astype(np.float32), threshold)
    if min_area <= 0 and not fill_holes:
        return labels
    return np.stack([clean_mask(m, min_area=min_area, fill_holes=fill_holes) for m in labels])


def split_targets(prepared_dir: str | Path, split: str, binary: bool) -> np.ndarray:
    masks = np.asarray(load_array(prepared_dir, split, "semantic")).astype(np.int64)
    return binary_target(masks) if binary else masks


def score_labels(labels: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict:
    """mIoU, Dice, pixel accuracy from one confusion matrix over the whole split."""
    confusion = update_confusion(None, labels, targets, len(class_names), ignore_index=IGNORE_INDEX)
    return segmentation_scores(confusion, class_names)


def train_segmenter(model: nn.Module, criterion: nn.Module, *, prepared_dir: str | Path, runtime: Runtime,
                    seed: int, epochs: int, batch_size: int, lr: float, weight_decay: float, binary: bool,
                    class_names: list[str], checkpoint_path: str | Path, fingerprint: str,
                    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """AdamW + one-cycle over augmented scenes; validation mIoU/Dice (no cleaning) every epoch."""
    train_set = SegmentationDataset.from_prepared(prepared_dir, "train", binary=binary,
                                                  transform=segmentation_augment())
    if len(train_set) == 0:
        raise ValueError(f"{prepared_dir}/train holds no images: nothing to train on")
    val_images = load_array(prepared_dir, "val", "images")
    val_targets = split_targets(prepared_dir, "val", binary)

    def make_batches(epoch: int) -> DataLoader:
        return DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) > batch_size,
                          generator=torch.Generator().manual_seed(seed + epoch))

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, masks = batch
        return criterion(net(runtime.prepare_input(images.float())).float(), masks.to(runtime.device))

    def evaluate(net: nn.Module) -> dict[str, float]:
        if len(val_images) == 0:
            return {}
        labels = labels_from_probabilities(predict_probabilities(net, val_images, runtime), threshold=None,
                                           min_area=0, fill_holes=False)
        scores = score_labels(labels, val_targets, class_names)
        return {"miou": scores["miou"], "dice": scores["dice"]}

    optimizer, scheduler = adamw_one_cycle(model, lr=lr, weight_decay=weight_decay,
                                           total_steps=epochs * len(make_batches(0)), pct_start=0.1)
    return fit(model, runtime=runtime, make_batches=make_batches, loss_fn=loss_fn, evaluate=evaluate,
               optimizer=optimizer, scheduler=scheduler, epochs=epochs, seed=seed, checkpoint_path=checkpoint_path,
               fingerprint=fingerprint, on_epoch_end=on_epoch_end)
