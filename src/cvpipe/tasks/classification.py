"""Classification of the object-centred crops (prepare's ``crops`` / ``crop_labels`` arrays).

- train: cross-entropy on augmented crops; validation top-1 per epoch.
- evaluate: top-1/top-5 on test; evaluate/per_class.json, confusion.csv (DVC confusion plot), confusion.png,
  samples.png (wrong predictions first).
- tune: a reject threshold on the max softmax probability, chosen on validation for a target precision;
  tune/tune_curve.csv + .png.
- export: logits [B, K]; parity on the logits and top-1 agreement.
- serving: one row per image: label, class_name, score, accepted (score ≥ reject threshold).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cvpipe.data.arrays import CropDataset, load_array
from cvpipe.data.transforms import batched_classification_augment, classification_augment
from cvpipe.device import Runtime
from cvpipe.onnx_inference import run_onnx
from cvpipe.inference import predict_probs
from cvpipe.metrics.classification import confusion_matrix, per_class_precision_recall, topk_accuracy
from cvpipe.plots import save_confusion_matrix, save_curve, save_prediction_grid
from cvpipe.tasks.base import Evaluation, Parity, Task, TrainData, Trained, Tuning, write_json
from cvpipe.tasks.serving.classification import ClassificationServing
from cvpipe.tuning.reject_threshold import accepted_precision, choose_reject_threshold

log = logging.getLogger(__name__)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """top1, top5 (clipped to K), confusion matrix and per-class precision/recall."""
    confusion = confusion_matrix(labels, probs.argmax(axis=1), len(class_names))
    precision, recall = per_class_precision_recall(confusion)
    return {
        "top1": topk_accuracy(probs, labels, 1),
        "top5": topk_accuracy(probs, labels, 5),
        "confusion": confusion,
        "per_class": [{"class": n, "precision": float(p), "recall": float(r), "support": int(s)}
                      for n, p, r, s in zip(class_names, precision, recall, confusion.sum(axis=1))],
    }


def _labels(prepared: Path, split: str) -> np.ndarray:
    return np.asarray(load_array(prepared, split, "crop_labels"))


class ClassificationTask(ClassificationServing, Task):
    name = "classification"
    input_array = "crops"
    meta_keys = ("class_names", "mean", "std", "crop_size", "data_hash")
    final_metrics = ("val_top1",)

    def train_data(self, prepared: Path, config: Any) -> TrainData:
        if config.train.augment == "batched":  # plain crops; the engine augments whole batches on the device
            return TrainData(CropDataset.from_prepared(prepared, "train"),
                             device_augment=batched_classification_augment())
        return TrainData(CropDataset.from_prepared(prepared, "train", transform=classification_augment()))

    def validator(self, prepared: Path, config: Any, runtime: Runtime) -> Callable[[nn.Module], dict[str, float]]:
        cap = config.train.val_images
        crops, labels = load_array(prepared, "val", "crops")[:cap], _labels(prepared, "val")[:cap]
        return lambda net: {"top1": topk_accuracy(predict_probs(net, crops, runtime), labels, 1)} if len(labels) else {}

    def evaluate(self, trained: Trained, model: nn.Module, prepared: Path, runtime: Runtime,
                 out_dir: Path) -> Evaluation:
        names = trained.meta["class_names"]
        crops, labels = load_array(prepared, "test", "crops"), _labels(prepared, "test")
        probs = predict_probs(model, crops, runtime)
        scores = classification_metrics(probs, labels, names)
        preds = probs.argmax(axis=1)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "confusion.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["actual", "predicted"])
            writer.writerows((names[t], names[p]) for t, p in zip(labels, preds))
        save_confusion_matrix(scores["confusion"], names, out_dir / "confusion.png")
        # Sample grid: wrong predictions first (they are what people look for), then the rest.
        order = np.r_[np.flatnonzero(preds != labels), np.flatnonzero(preds == labels)][:32]
        save_prediction_grid(np.asarray(crops[order]), labels[order], preds[order], probs[order].max(axis=1), names,
                             out_dir / "samples.png")
        return Evaluation(metrics={"top1": scores["top1"], "top5": scores["top5"], "samples": int(len(labels))},
                          artifacts=[write_json(out_dir / "per_class.json", scores["per_class"]),
                                     out_dir / "confusion.csv", out_dir / "confusion.png", out_dir / "samples.png"])

    def tune(self, trained: Trained, model: nn.Module, tune: Any, prepared: Path, runtime: Runtime,
             out_dir: Path) -> Tuning:
        """Reject threshold chosen on val (target precision from params), then reported on test."""
        val_probs = predict_probs(model, load_array(prepared, "val", "crops"), runtime)
        val_labels = _labels(prepared, "val")
        test_probs = predict_probs(model, load_array(prepared, "test", "crops"), runtime)
        point = choose_reject_threshold(val_probs, val_labels, tune.target_precision)
        if not point.target_met:
            log.warning("no threshold reaches precision %.3f on val; using the most precise one (%.3f)",
                        tune.target_precision, point.precision)
        test_precision, test_coverage = accepted_precision(test_probs, _labels(prepared, "test"), point.threshold)
        report = {"reject_threshold": point.threshold, "target_precision": tune.target_precision,
                  "target_met_on_val": point.target_met, "val_precision": point.precision,
                  "val_coverage": point.coverage, "test_precision": test_precision, "test_coverage": test_coverage}
        grid = np.round(np.linspace(0, 1, 101), 4)
        curve = [accepted_precision(val_probs, val_labels, t) for t in grid]
        out_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"threshold": grid, "precision": [c[0] for c in curve],
                      "coverage": [c[1] for c in curve]}).to_csv(out_dir / "tune_curve.csv", index=False)
        save_curve(grid, {"precision (val)": np.array([c[0] for c in curve]),
                          "coverage (val)": np.array([c[1] for c in curve])}, out_dir / "tune_curve.png",
                   xlabel="reject threshold (max softmax probability)", title="Reject threshold on validation",
                   marker_x=point.threshold)
        return Tuning(thresholds={"reject_threshold": point.threshold}, report=report,
                      artifacts=[out_dir / "tune_curve.csv", out_dir / "tune_curve.png"])

    def parity(self, trained: Trained, graph: nn.Module, session: Any, inputs: torch.Tensor, prepared: Path,
               thresholds: dict[str, Any], tolerances: Any) -> Parity:
        """Logits and top-1 of onnxruntime vs PyTorch on the test crops."""
        with torch.no_grad():
            torch_logits = graph(inputs).numpy()
        onnx_logits = run_onnx(session, inputs.numpy())[0]
        max_diff = float(np.abs(torch_logits - onnx_logits).max())
        agreement = float((torch_logits.argmax(1) == onnx_logits.argmax(1)).mean())
        problems = []
        if max_diff > tolerances.max_abs_diff:
            problems.append(f"max |logit diff| {max_diff:.2e} > {tolerances.max_abs_diff:.0e}")
        if agreement < tolerances.min_top1_agreement:
            problems.append(f"top-1 agreement {agreement:.4f} < {tolerances.min_top1_agreement}")
        return Parity({"max_abs_diff": max_diff, "top1_agreement": agreement}, problems)

    def scorer(self, pyfunc: Any, metric: str, prepared: Path) -> Any:
        """One object crop per unit: ``top1`` = arg-max label equals the crop's label (reject threshold ignored)."""
        from cvpipe.lifecycle.bootstrap import AccuracyScorer

        predicted = pyfunc.predict(np.asarray(load_array(prepared, "test", "crops")))["label"].to_numpy()
        return AccuracyScorer(predicted == _labels(prepared, "test"))
