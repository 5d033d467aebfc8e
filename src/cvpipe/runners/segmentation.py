"""U-Net semantic segmentation: train, evaluate, tune and export stages.

Files (``model_dir`` = models/<name>, ``report_dir`` = reports/<name>):
- train:    model_dir/model.pt, model_dir/checkpoints/last.pt, report_dir/training.csv
- evaluate: report_dir/metrics.json (miou, dice, pixel_accuracy of the raw argmax / 0.5 masks, latency);
            in report_dir/evaluate/: per_class.json, overlays.png
- tune:     model_dir/thresholds.json (mask threshold, min component area), report_dir/tune.json (validation
            choice; test scores raw and cleaned, so the cleaning shows its worth); in report_dir/tune/:
            tune_grid.csv, tune_grid.png
- export:   model_dir/model.onnx (logits), report_dir/export.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from cvpipe.config import ExportConfig, SegmenterConfig, checked_kwargs
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.device import Runtime
from cvpipe.errors import ConfigError, ParityError
from cvpipe.export import export_onnx, onnx_session, run_onnx
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.weights import load_pretrained
from cvpipe.plots import save_grid_curves, save_segmentation_overlays
from cvpipe.runners import StageOutcome, export_latencies, save_trained, write_json
from cvpipe.tasks.classification import latency_ms
from cvpipe.tasks.segmentation import (labels_from_probabilities, predict_probabilities, score_labels, split_targets,
                                       train_segmenter)
from cvpipe.training.checkpoint import fingerprint as make_fingerprint


def load_config(params: dict[str, Any], model: str) -> SegmenterConfig:
    return SegmenterConfig.from_params(params, model)


def onnx_input_example(prepared: Path) -> np.ndarray:
    return to_model_input(np.asarray(load_array(prepared, "test", "images")[:1])).numpy()


def _build(arch: str, meta: dict[str, Any], binary: bool, kwargs: dict[str, Any]) -> torch.nn.Module:
    from cvpipe.models.unet import build_unet

    if arch != "unet":
        raise ConfigError(f"params.yaml: segmentation arch {arch!r} is unknown; choose 'unet'")
    return build_unet(len(meta["class_names"]), meta["mean"], meta["std"], binary=binary,
                      **checked_kwargs(build_unet, kwargs, "models.<name>.train.model (unet)"))


def _class_names(meta: dict[str, Any], binary: bool) -> list[str]:
    return ["foreground"] if binary else list(meta["class_names"])


def load_trained(model_dir: Path) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    saved = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    train = saved["train"]
    model = _build(train["arch"], saved["meta"], train["binary"], train["model"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), train, saved["meta"]


def train(config: SegmenterConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
          seed: int, on_epoch_end: Callable[[int, dict[str, float]], None]) -> StageOutcome:
    from cvpipe.losses.segmentation import SegmentationLoss

    meta = load_meta(prepared)
    cfg = config.train
    torch.manual_seed(seed)
    model = _build(cfg.arch, meta, cfg.binary, cfg.model)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    model = runtime.prepare_model(model)
    names = _class_names(meta, cfg.binary)
    criterion = SegmentationLoss(num_classes=len(names), binary=cfg.binary,
                                 **checked_kwargs(SegmentationLoss, cfg.loss, "models.<name>.train.loss"))
    result = train_segmenter(model, criterion, prepared_dir=prepared, runtime=runtime, seed=seed, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, binary=cfg.binary,
                             class_names=names, checkpoint_path=model_dir / "checkpoints" / "last.pt",
                             fingerprint=make_fingerprint(cfg, meta["data_hash"], seed), on_epoch_end=on_epoch_end)
    return save_trained(model, result.history, resumed_from_epoch=result.resumed_from_epoch, model_dir=model_dir,
                        report_dir=report_dir, train_config=dataclasses.asdict(cfg), meta=meta,
                        meta_keys=("class_names", "mean", "std", "image_size", "data_hash"), final_metric="val_miou")


def evaluate(config: SegmenterConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
             latency_runs: int) -> StageOutcome:
    """Split-level confusion matrix on test of the raw masks (argmax, or sigmoid ≥ 0.5 in binary mode)."""
    model, train_cfg, meta = load_trained(model_dir)
    model = runtime.prepare_model(model)
    names = _class_names(meta, train_cfg["binary"])
    images = load_array(prepared, "test", "images")
    targets = split_targets(prepared, "test", train_cfg["binary"])
    probs = predict_probabilities(model, images, runtime)
    raw = labels_from_probabilities(probs, threshold=None, min_area=0, fill_holes=False)
    raw_scores = score_labels(raw, targets, names)
    lat = latency_ms(model, to_model_input(np.asarray(images[:1])), runtime, latency_runs)
    metrics = {"miou": raw_scores["miou"], "dice": raw_scores["dice"], "pixel_accuracy": raw_scores["pixel_accuracy"],
               "latency_ms_p50": lat["p50"], "latency_ms_p95": lat["p95"], "images": int(len(images))}
    (report_dir / "evaluate").mkdir(parents=True, exist_ok=True)
    shown = min(6, len(images))
    save_segmentation_overlays(np.asarray(images[:shown]), targets[:shown], raw[:shown], names,
                               report_dir / "evaluate" / "overlays.png")
    paths = [write_json(report_dir / "metrics.json", metrics),
             write_json(report_dir / "evaluate" / "per_class.json", raw_scores["per_class"]),
             report_dir / "evaluate" / "overlays.png"]
    return StageOutcome(metrics={f"test_{k}": float(v) for k, v in metrics.items()}, artifacts=paths)


def tune(config: SegmenterConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime) -> StageOutcome:
    """Mask threshold (binary mode) × minimum component area on validation, objective mean Dice; then test."""
    model, train_cfg, meta = load_trained(model_dir)
    model = runtime.prepare_model(model)
    binary = train_cfg["binary"]
    names = _class_names(meta, binary)
    cfg = config.tune
    thresholds: list[float | None] = list(cfg.thresholds) if binary else [None]
    val_probs = predict_probabilities(model, load_array(prepared, "val", "images"), runtime)
    val_targets = split_targets(prepared, "val", binary)
    grid = []
    for threshold in thresholds:
        for min_area in cfg.min_areas:
            labels = labels_from_probabilities(val_probs, threshold=threshold, min_area=min_area,
                                               fill_holes=cfg.fill_holes)
            scores = score_labels(labels, val_targets, names)
            grid.append({"threshold": threshold, "min_area": min_area, "dice": scores["dice"], "miou": scores["miou"]})
    best = max(grid, key=lambda g: (g["dice"], -g["min_area"]))  # ties: the lighter cleaning
    test_probs = predict_probabilities(model, load_array(prepared, "test", "images"), runtime)
    test_labels = labels_from_probabilities(test_probs, threshold=best["threshold"], min_area=best["min_area"],
                                            fill_holes=cfg.fill_holes)
    test_targets = split_targets(prepared, "test", binary)
    test = score_labels(test_labels, test_targets, names)
    raw = score_labels(labels_from_probabilities(test_probs, threshold=None, min_area=0, fill_holes=False),
                       test_targets, names)
    chosen = {"mask_threshold": best["threshold"], "min_area": best["min_area"], "fill_holes": cfg.fill_holes}
    result = {**chosen, "val_dice": best["dice"], "val_miou": best["miou"], "test_dice": test["dice"],
              "test_miou": test["miou"], "test_pixel_accuracy": test["pixel_accuracy"],
              "test_raw_dice": raw["dice"], "test_raw_miou": raw["miou"]}
    (report_dir / "tune").mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(grid)
    table.to_csv(report_dir / "tune" / "tune_grid.csv", index=False)
    save_grid_curves(table, report_dir / "tune" / "tune_grid.png", x="min_area", y="dice", series="threshold",
                     chosen=(best["min_area"], best["threshold"]), xlabel="minimum component area (px)",
                     ylabel="mean Dice (validation)", title="Mask cleaning grid (validation)")
    paths = [write_json(model_dir / "thresholds.json", chosen), write_json(report_dir / "tune.json", result),
             report_dir / "tune" / "tune_grid.csv", report_dir / "tune" / "tune_grid.png"]
    return StageOutcome(metrics={k: float(v) for k, v in result.items() if isinstance(v, (int, float))},
                        artifacts=paths)


def export(config: SegmenterConfig, export_config: ExportConfig, *, prepared: Path, model_dir: Path,
           report_dir: Path) -> StageOutcome:
    """ONNX logits with a dynamic batch axis; label maps compared with PyTorch (IoU) on test images."""
    model, train_cfg, meta = load_trained(model_dir)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    inputs = to_model_input(np.asarray(load_array(prepared, "test", "images")[: export_config.parity_images]))
    onnx_path = export_onnx(model, inputs[:2], model_dir / "model.onnx", opset=export_config.opset,
                            metadata={"class_names": _class_names(meta, train_cfg["binary"]),
                                      "binary": train_cfg["binary"], "input": "float32 [B,3,H,W] 0..255",
                                      "output": "logits [B,C,H,W]", **thresholds})
    session = onnx_session(onnx_path)
    with torch.no_grad():
        torch_logits = model(inputs).numpy()
    onnx_logits = run_onnx(session, inputs.numpy(), batch_size=16)[0]
    diff = float(np.abs(torch_logits - onnx_logits).max())

    def labels(logits: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(logits)
        probs = torch.sigmoid(t) if t.shape[1] == 1 else torch.softmax(t, dim=1)
        return labels_from_probabilities(probs.numpy(), threshold=thresholds["mask_threshold"],
                                         min_area=thresholds["min_area"], fill_holes=thresholds["fill_holes"])

    a, b = labels(torch_logits) > 0, labels(onnx_logits) > 0
    union = np.logical_or(a, b).sum()
    mask_iou = float(np.logical_and(a, b).sum() / union) if union else 1.0
    label_agreement = float((labels(torch_logits) == labels(onnx_logits)).mean())
    result = {"max_logit_diff": diff, "mask_iou": mask_iou, "label_agreement": label_agreement,
              "parity_images": int(len(inputs)),
              **export_latencies(model, session, inputs[:1], export_config.latency_runs)}
    write_json(report_dir / "export.json", result)
    tol = config.export
    if diff > tol.logits_atol or mask_iou < tol.min_mask_iou:
        raise ParityError(f"{onnx_path}: ONNX disagrees with PyTorch: max |logit diff| {diff:.3g} (allowed "
                          f"{tol.logits_atol}), foreground mask IoU {mask_iou:.4f} (required {tol.min_mask_iou})")
    return StageOutcome(metrics={f"export_{k}": float(v) for k, v in result.items()},
                        artifacts=[onnx_path, report_dir / "export.json"])
