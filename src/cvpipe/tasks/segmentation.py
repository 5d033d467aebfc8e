"""Semantic segmentation (U-Net, :mod:`cvpipe.models.unet`): one label per pixel, K classes or binary.

- train: cross-entropy + soft Dice on augmented scenes (``train.elastic``: plus the U-Net paper's elastic
  deformation, batched augmentation only); validation mIoU/Dice (no cleaning) per epoch.
- evaluate: mIoU, Dice and pixel accuracy on test from one split-level confusion matrix of the raw masks
  (argmax, or sigmoid ≥ 0.5 in binary mode); evaluate/per_class.json, overlays.png.
- tune: mask threshold (binary mode) × minimum component area on validation, objective mean Dice; test scores
  raw and cleaned, so the cleaning shows its worth; tune/tune_grid.csv + .png.
- export: logits [B, C, H, W]; parity on the logits and the IoU of the post-processed label maps.
- serving: int64 label maps [N, H, W] on the caller's pixel grid (0 = background, k = class k).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cvpipe.data.arrays import load_array
from cvpipe.data.ground_truth import semantic_targets
from cvpipe.data.prepare import IGNORE_INDEX
from cvpipe.data.segmentation_dataset import SegmentationDataset, batched_segmentation_augment, segmentation_augment
from cvpipe.device import Runtime
from cvpipe.onnx_inference import run_onnx
from cvpipe.inference import predict_probabilities
from cvpipe.metrics.segmentation import score_labels, update_confusion
from cvpipe.plots import save_grid_curves, save_segmentation_overlays
from cvpipe.postprocess.masks import labels_from_probabilities, probabilities_from_logits
from cvpipe.tasks.base import Evaluation, Parity, Task, TrainData, Trained, Tuning, write_json
from cvpipe.tasks.serving.segmentation import SegmentationServing


def raw_labels(probs: np.ndarray) -> np.ndarray:
    """Label maps before any tuning: argmax, or probability ≥ 0.5 in binary mode; no cleaning."""
    return labels_from_probabilities(probs, threshold=None, min_area=0, fill_holes=False)


class SegmentationTask(SegmentationServing, Task):
    name = "segmentation"
    final_metrics = ("val_miou",)

    def class_names(self, config: Any, meta: dict[str, Any]) -> list[str]:
        return ["foreground"] if config.train.binary else list(meta["class_names"])

    def model_arguments(self, config: Any, meta: dict[str, Any]) -> dict[str, Any]:
        return {**super().model_arguments(config, meta), "binary": config.train.binary}

    def criterion_arguments(self, config: Any, meta: dict[str, Any]) -> dict[str, Any]:
        return {**super().criterion_arguments(config, meta), "binary": config.train.binary}

    def init_arguments(self, config: Any, prepared: Path) -> dict[str, Any]:
        """Binary mode: the head starts at the training masks' background share (ISBI-style cell masks are mostly
        foreground; the default 0.9 background prior would make the first many steps predict background only).
        Multi-class mode keeps the builder's default prior."""
        if not config.train.binary:
            return {}
        masks = np.asarray(load_array(prepared, "train", "semantic"))
        labelled = np.count_nonzero(masks != IGNORE_INDEX)
        background = np.count_nonzero(masks == 0) / labelled if labelled else 0.9
        return {"background_prior": float(np.clip(background, 0.01, 0.99))}

    def train_data(self, prepared: Path, config: Any) -> TrainData:
        if config.train.augment == "batched":  # plain samples; the engine augments whole batches on the device
            elastic = config.train.elastic  # None: affine and colour only
            augment = (batched_segmentation_augment() if elastic is None
                       else batched_segmentation_augment(elastic_std=elastic.std, elastic_grid=elastic.grid))
            return TrainData(SegmentationDataset.from_prepared(prepared, "train", binary=config.train.binary),
                             device_augment=augment)
        return TrainData(SegmentationDataset.from_prepared(prepared, "train", binary=config.train.binary,
                                                           transform=segmentation_augment()))

    def validator(self, prepared: Path, config: Any, runtime: Runtime) -> Callable[[nn.Module], dict[str, float]]:
        from cvpipe.data.prepare import load_meta

        cap = config.train.val_images
        images = load_array(prepared, "val", "images")[:cap]
        targets = semantic_targets(prepared, "val", config.train.binary)[:cap]
        names = self.class_names(config, load_meta(prepared))

        def validate(net: nn.Module) -> dict[str, float]:
            if len(images) == 0:
                return {}
            scores = score_labels(raw_labels(predict_probabilities(net, images, runtime)), targets, names)
            return {"miou": scores["miou"], "dice": scores["dice"]}

        return validate

    def evaluate(self, trained: Trained, model: nn.Module, prepared: Path, runtime: Runtime,
                 out_dir: Path) -> Evaluation:
        binary = trained.config.train.binary
        names = self.class_names(trained.config, trained.meta)
        images = load_array(prepared, "test", "images")
        targets = semantic_targets(prepared, "test", binary)
        raw = raw_labels(predict_probabilities(model, images, runtime))
        scores = score_labels(raw, targets, names)
        out_dir.mkdir(parents=True, exist_ok=True)
        shown = min(6, len(images))
        save_segmentation_overlays(np.asarray(images[:shown]), targets[:shown], raw[:shown], names,
                                   out_dir / "overlays.png")
        metrics = {"miou": scores["miou"], "dice": scores["dice"], "pixel_accuracy": scores["pixel_accuracy"],
                   "images": int(len(images))}
        return Evaluation(metrics, [write_json(out_dir / "per_class.json", scores["per_class"]),
                                    out_dir / "overlays.png"])

    def tune(self, trained: Trained, model: nn.Module, tune: Any, prepared: Path, runtime: Runtime,
             out_dir: Path) -> Tuning:
        """Mask threshold (binary mode) × minimum component area on validation, objective mean Dice; then test."""
        binary = trained.config.train.binary
        names = self.class_names(trained.config, trained.meta)
        thresholds: list[float | None] = list(tune.thresholds) if binary else [None]
        val_probs = predict_probabilities(model, load_array(prepared, "val", "images"), runtime)
        val_targets = semantic_targets(prepared, "val", binary)
        grid = []
        for threshold in thresholds:
            for min_area in tune.min_areas:
                labels = labels_from_probabilities(val_probs, threshold=threshold, min_area=min_area,
                                                   fill_holes=tune.fill_holes)
                scores = score_labels(labels, val_targets, names)
                grid.append({"threshold": threshold, "min_area": min_area, "dice": scores["dice"],
                             "miou": scores["miou"]})
        best = max(grid, key=lambda g: (g["dice"], -g["min_area"]))  # ties: the lighter cleaning
        test_probs = predict_probabilities(model, load_array(prepared, "test", "images"), runtime)
        test_targets = semantic_targets(prepared, "test", binary)
        test = score_labels(labels_from_probabilities(test_probs, threshold=best["threshold"],
                                                      min_area=best["min_area"], fill_holes=tune.fill_holes),
                            test_targets, names)
        raw = score_labels(raw_labels(test_probs), test_targets, names)
        chosen = {"mask_threshold": best["threshold"], "min_area": best["min_area"], "fill_holes": tune.fill_holes}
        report = {**chosen, "val_dice": best["dice"], "val_miou": best["miou"], "test_dice": test["dice"],
                  "test_miou": test["miou"], "test_pixel_accuracy": test["pixel_accuracy"],
                  "test_raw_dice": raw["dice"], "test_raw_miou": raw["miou"]}
        out_dir.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(grid)
        table.to_csv(out_dir / "tune_grid.csv", index=False)
        save_grid_curves(table, out_dir / "tune_grid.png", x="min_area", y="dice", series="threshold",
                         chosen=(best["min_area"], best["threshold"]), xlabel="minimum component area (px)",
                         ylabel="mean Dice (validation)", title="Mask cleaning grid (validation)")
        return Tuning(chosen, report, [out_dir / "tune_grid.csv", out_dir / "tune_grid.png"])

    def onnx_metadata(self, trained: Trained) -> dict[str, Any]:
        return {"class_names": self.class_names(trained.config, trained.meta), "binary": trained.config.train.binary,
                "input": "float32 [B,3,H,W] 0..255", "output": "logits [B,C,H,W]"}

    def parity(self, trained: Trained, graph: nn.Module, session: Any, inputs: torch.Tensor, prepared: Path,
               thresholds: dict[str, Any], tolerances: Any) -> Parity:
        """Logits, and the label maps after the tuned threshold and cleaning (foreground IoU, agreement)."""
        with torch.no_grad():
            torch_logits = graph(inputs).numpy()
        onnx_logits = run_onnx(session, inputs.numpy(), batch_size=16)[0]
        diff = float(np.abs(torch_logits - onnx_logits).max())

        def labels(logits: np.ndarray) -> np.ndarray:
            return labels_from_probabilities(probabilities_from_logits(logits).astype(np.float32),
                                             threshold=thresholds["mask_threshold"],
                                             min_area=thresholds["min_area"], fill_holes=thresholds["fill_holes"])

        torch_labels, onnx_labels = labels(torch_logits), labels(onnx_logits)
        a, b = torch_labels > 0, onnx_labels > 0
        union = np.logical_or(a, b).sum()
        mask_iou = float(np.logical_and(a, b).sum() / union) if union else 1.0
        figures = {"max_logit_diff": diff, "mask_iou": mask_iou,
                   "label_agreement": float((torch_labels == onnx_labels).mean())}
        problems = []
        if diff > tolerances.logits_atol:
            problems.append(f"max |logit diff| {diff:.3g} > {tolerances.logits_atol}")
        if mask_iou < tolerances.min_mask_iou:
            problems.append(f"foreground mask IoU {mask_iou:.4f} < {tolerances.min_mask_iou}")
        return Parity(figures, problems)

    def scorer(self, pyfunc: Any, metric: str, prepared: Path) -> Any:
        """One test image per unit: the confusion matrix of the served (thresholded, cleaned) label map."""
        from cvpipe.lifecycle.bootstrap import ConfusionScorer

        model = pyfunc.unwrap_python_model()
        targets = semantic_targets(prepared, "test", bool(model.meta.get("binary")))
        labels = pyfunc.predict(np.asarray(load_array(prepared, "test", "images")))
        confusions = np.stack([update_confusion(None, p, t, len(model.class_names), ignore_index=IGNORE_INDEX)
                               for p, t in zip(labels, targets)])
        return ConfusionScorer(confusions, metric)
