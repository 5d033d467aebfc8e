"""Classification over the object-centred crops: build, train (cross-entropy), predict, score."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cvpipe.config import ClassifierConfig
from cvpipe.data.arrays import CropDataset, load_array
from cvpipe.data.transforms import classification_augment
from cvpipe.device import Runtime, eval_mode, predict_in_batches
from cvpipe.metrics.classification import confusion_matrix, per_class_precision_recall, topk_accuracy
from cvpipe.models.classifier import SmallResNet
from cvpipe.models.weights import load_pretrained
from cvpipe.training.checkpoint import fingerprint as make_fingerprint
from cvpipe.training.loop import FitResult, adamw_one_cycle, fit

log = logging.getLogger(__name__)


def build_classifier(config: ClassifierConfig, meta: dict[str, Any]) -> nn.Module:
    """The configured classifier for the prepared data described by ``meta`` (classes, mean/std)."""
    model = SmallResNet(num_classes=len(meta["class_names"]), mean=meta["mean"], std=meta["std"],
                        width=config.width, blocks_per_stage=config.blocks_per_stage,
                        stem_stride=config.stem_stride)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    return model


def predict_probs(model: nn.Module, crops: np.ndarray, runtime: Runtime, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities [N, K] for uint8 crops [N, C, C, 3], in batches."""
    probs = predict_in_batches(model, crops, runtime, batch_size,
                               lambda net, x: [torch.softmax(net(x).float(), dim=1)])
    k = model.head.out_features if hasattr(model, "head") else 0
    return probs[0] if probs else np.zeros((0, k), np.float32)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """top1, top5 (clipped to K), confusion matrix and per-class precision/recall."""
    k = len(class_names)
    confusion = confusion_matrix(labels, probs.argmax(axis=1), k)
    precision, recall = per_class_precision_recall(confusion)
    return {
        "top1": topk_accuracy(probs, labels, 1),
        "top5": topk_accuracy(probs, labels, 5),
        "confusion": confusion,
        "per_class": [{"class": n, "precision": float(p), "recall": float(r), "support": int(s)}
                      for n, p, r, s in zip(class_names, precision, recall, confusion.sum(axis=1))],
    }


def train_classifier(config: ClassifierConfig, *, prepared_dir: str | Path, meta: dict[str, Any],
                     runtime: Runtime, seed: int, checkpoint_path: str | Path,
                     on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
                     ) -> tuple[nn.Module, FitResult]:
    """Train with cross-entropy (label smoothing) under AdamW + one-cycle; validate top-1 per epoch."""
    torch.manual_seed(seed)
    model = runtime.prepare_model(build_classifier(config, meta))
    train_set = CropDataset.from_prepared(prepared_dir, "train", transform=classification_augment())
    if len(train_set) == 0:
        raise ValueError(f"{prepared_dir}/train holds no crops: nothing to train on")
    val_crops = load_array(prepared_dir, "val", "crops")
    val_labels = np.asarray(load_array(prepared_dir, "val", "crop_labels"))

    def make_batches(epoch: int) -> DataLoader:
        return DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=len(train_set) > config.batch_size,
                          generator=torch.Generator().manual_seed(seed + epoch))

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits = net(runtime.prepare_input(images.float()))
        loss = F.cross_entropy(logits.float(), labels.to(runtime.device), label_smoothing=config.label_smoothing)
        return {"loss": loss}

    def evaluate(net: nn.Module) -> dict[str, float]:
        probs = predict_probs(net, val_crops, runtime)
        return {"top1": topk_accuracy(probs, val_labels, 1)} if len(val_labels) else {}

    optimizer, scheduler = adamw_one_cycle(model, lr=config.lr, weight_decay=config.weight_decay,
                                           total_steps=config.epochs * len(make_batches(0)), pct_start=0.2)
    run_id = make_fingerprint(config, meta["data_hash"], seed)
    result = fit(model, runtime=runtime, make_batches=make_batches, loss_fn=loss_fn, evaluate=evaluate,
                 optimizer=optimizer, scheduler=scheduler, epochs=config.epochs, seed=seed,
                 checkpoint_path=checkpoint_path, fingerprint=run_id, on_epoch_end=on_epoch_end)
    return model, result


def latency_ms(model: nn.Module, example: torch.Tensor, runtime: Runtime, runs: int) -> dict[str, float]:
    """p50/p95 wall time in ms of one forward pass on ``example`` (after warm-up)."""
    times = []
    with eval_mode(model):
        x = runtime.prepare_input(example)
        for i in range(runs + 3):
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            with runtime.autocast():
                model(x)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}
