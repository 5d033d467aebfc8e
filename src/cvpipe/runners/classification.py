"""The classifier's train, evaluate, tune and export stages.

Files (``model_dir`` = models/<name>, ``report_dir`` = reports/<name>):
- train:    model_dir/model.pt (weights + config + class names), model_dir/checkpoints/last.pt,
            report_dir/training.csv (one row per epoch; DVC plot)
- evaluate: report_dir/metrics.json (top1, top5, latency); in report_dir/evaluate/: per_class.json,
            confusion.csv (DVC confusion plot), confusion.png, samples.png
- tune:     model_dir/thresholds.json, report_dir/tune.json; in report_dir/tune/: tune_curve.csv, tune_curve.png
- export:   model_dir/model.onnx, report_dir/export.json
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from cvpipe.config import ClassifierConfig, ExportConfig
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.device import Runtime
from cvpipe.errors import ParityError
from cvpipe.export import export_onnx, onnx_session, run_onnx
from cvpipe.models.preprocess import to_model_input
from cvpipe.plots import save_confusion_matrix, save_curve, save_prediction_grid
from cvpipe.runners import StageOutcome, export_latencies, save_trained, write_json
from cvpipe.tasks.classification import (build_classifier, classification_metrics, latency_ms, predict_probs,
                                         train_classifier)
from cvpipe.tuning.reject_threshold import accepted_precision, choose_reject_threshold

log = logging.getLogger(__name__)


def load_config(params: dict[str, Any], model: str) -> ClassifierConfig:
    return ClassifierConfig.from_params(params, model)


def onnx_input_example(prepared: Path) -> np.ndarray:
    """One preprocessed test crop, the input example stored with the registered model."""
    return to_model_input(np.asarray(load_array(prepared, "test", "crops")[:1])).numpy()


def load_trained(model_dir: Path) -> tuple[torch.nn.Module, ClassifierConfig, dict[str, Any]]:
    """The trained classifier saved by :func:`train` (random init, then its weights)."""
    saved = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    config = ClassifierConfig(**{k: v for k, v in saved["train"].items() if k not in ("tune", "export")})
    model = build_classifier(dataclasses.replace(config, pretrained=None), saved["meta"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), config, saved["meta"]


def train(config: ClassifierConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
          seed: int, on_epoch_end: Callable[[int, dict[str, float]], None]) -> StageOutcome:
    meta = load_meta(prepared)
    model, result = train_classifier(config, prepared_dir=prepared, meta=meta, runtime=runtime, seed=seed,
                                     checkpoint_path=model_dir / "checkpoints" / "last.pt",
                                     on_epoch_end=on_epoch_end)
    return save_trained(model, result.history, resumed_from_epoch=result.resumed_from_epoch, model_dir=model_dir,
                        report_dir=report_dir, train_config=dataclasses.asdict(config), meta=meta,
                        meta_keys=("class_names", "mean", "std", "crop_size", "data_hash"), final_metric="val_top1")


def evaluate(config: ClassifierConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
             latency_runs: int) -> StageOutcome:
    model, _, meta = load_trained(model_dir)
    model = runtime.prepare_model(model)
    names = meta["class_names"]
    crops = load_array(prepared, "test", "crops")
    labels = np.asarray(load_array(prepared, "test", "crop_labels"))
    probs = predict_probs(model, crops, runtime)
    scores = classification_metrics(probs, labels, names)
    preds = probs.argmax(axis=1)
    lat = latency_ms(model, to_model_input(crops[:1]), runtime, latency_runs)
    metrics = {"top1": scores["top1"], "top5": scores["top5"], "latency_ms_p50": lat["p50"],
               "latency_ms_p95": lat["p95"], "samples": int(len(labels))}
    (report_dir / "evaluate").mkdir(parents=True, exist_ok=True)
    paths = [write_json(report_dir / "metrics.json", metrics),
             write_json(report_dir / "evaluate" / "per_class.json", scores["per_class"])]
    with (report_dir / "evaluate" / "confusion.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((names[t], names[p]) for t, p in zip(labels, preds))
    save_confusion_matrix(scores["confusion"], names, report_dir / "evaluate" / "confusion.png")
    # Sample grid: wrong predictions first (they are what people look for), then the rest.
    order = np.r_[np.flatnonzero(preds != labels), np.flatnonzero(preds == labels)][:32]
    save_prediction_grid(np.asarray(crops[order]), labels[order], preds[order], probs[order].max(axis=1), names,
                         report_dir / "evaluate" / "samples.png")
    paths += [report_dir / "evaluate" / "confusion.csv", report_dir / "evaluate" / "confusion.png", report_dir / "evaluate" / "samples.png"]
    return StageOutcome(metrics={f"test_{k}": float(v) for k, v in metrics.items()}, artifacts=paths)


def tune(config: ClassifierConfig, *, prepared: Path, model_dir: Path, report_dir: Path,
         runtime: Runtime) -> StageOutcome:
    """Reject threshold chosen on val (target precision from params), then reported on test."""
    model, _, _ = load_trained(model_dir)
    model = runtime.prepare_model(model)
    val_probs = predict_probs(model, load_array(prepared, "val", "crops"), runtime)
    val_labels = np.asarray(load_array(prepared, "val", "crop_labels"))
    test_probs = predict_probs(model, load_array(prepared, "test", "crops"), runtime)
    test_labels = np.asarray(load_array(prepared, "test", "crop_labels"))
    (report_dir / "tune").mkdir(parents=True, exist_ok=True)
    point = choose_reject_threshold(val_probs, val_labels, config.tune.target_precision)
    if not point.target_met:
        log.warning("no threshold reaches precision %.3f on val; using the most precise one (%.3f)",
                    config.tune.target_precision, point.precision)
    test_precision, test_coverage = accepted_precision(test_probs, test_labels, point.threshold)
    result = {"reject_threshold": point.threshold, "target_precision": config.tune.target_precision,
              "target_met_on_val": point.target_met, "val_precision": point.precision,
              "val_coverage": point.coverage, "test_precision": test_precision, "test_coverage": test_coverage}
    grid = np.round(np.linspace(0, 1, 101), 4)
    curve = [accepted_precision(val_probs, val_labels, t) for t in grid]
    curve_path = report_dir / "tune" / "tune_curve.csv"
    pd.DataFrame({"threshold": grid, "precision": [c[0] for c in curve],
                  "coverage": [c[1] for c in curve]}).to_csv(curve_path, index=False)
    save_curve(grid, {"precision (val)": np.array([c[0] for c in curve]),
                      "coverage (val)": np.array([c[1] for c in curve])}, report_dir / "tune" / "tune_curve.png",
               xlabel="reject threshold (max softmax probability)", title="Reject threshold on validation",
               marker_x=point.threshold)
    paths = [write_json(model_dir / "thresholds.json", {"reject_threshold": point.threshold}),
             write_json(report_dir / "tune.json", result), curve_path, report_dir / "tune" / "tune_curve.png"]
    return StageOutcome(metrics={k: float(v) for k, v in result.items()}, artifacts=paths)


def export(config: ClassifierConfig, export_config: ExportConfig, *, prepared: Path, model_dir: Path,
           report_dir: Path) -> StageOutcome:
    """ONNX with dynamic batch; logits and top-1 compared with PyTorch on test crops; latency of both."""
    model, _, meta = load_trained(model_dir)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    crops = np.asarray(load_array(prepared, "test", "crops")[: export_config.parity_images])
    inputs = to_model_input(crops)
    onnx_path = export_onnx(model, inputs[:2], model_dir / "model.onnx", opset=export_config.opset,
                            metadata={"class_names": meta["class_names"], "input": "float32 [B,3,H,W] 0..255",
                                      **thresholds})
    session = onnx_session(onnx_path)
    with torch.no_grad():
        torch_logits = model(inputs).numpy()
    onnx_logits = run_onnx(session, inputs.numpy())[0]
    max_diff = float(np.abs(torch_logits - onnx_logits).max())
    agreement = float((torch_logits.argmax(1) == onnx_logits.argmax(1)).mean())
    result = {"max_abs_diff": max_diff, "top1_agreement": agreement, "parity_images": int(len(crops)),
              **export_latencies(model, session, inputs[:1], export_config.latency_runs)}
    write_json(report_dir / "export.json", result)
    if max_diff > config.export.max_abs_diff or agreement < config.export.min_top1_agreement:
        raise ParityError(f"{onnx_path}: ONNX disagrees with PyTorch on {len(crops)} test crops: max |diff| "
                          f"{max_diff:.2e} (allowed {config.export.max_abs_diff:.0e}), top-1 agreement "
                          f"{agreement:.4f} (required {config.export.min_top1_agreement})")
    return StageOutcome(metrics={f"export_{k}": float(v) for k, v in result.items()},
                        artifacts=[onnx_path, report_dir / "export.json"])
