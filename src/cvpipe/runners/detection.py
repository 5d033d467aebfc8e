"""The detectors' train, evaluate, tune and export stages (YOLO-style, SSD, DETR alike).

Files (``model_dir`` = models/<name>, ``report_dir`` = reports/<name>):
- train:    model_dir/model.pt, model_dir/checkpoints/last.pt, report_dir/training.csv
- evaluate: report_dir/metrics.json (COCO stats: map50_95, map50, ..., latency); in report_dir/evaluate/:
            per_class.json, pr_curve.csv + pr_curve.png, overlays.png, coco_summary.txt
- tune:     model_dir/thresholds.json, report_dir/tune.json (operating point on val and its P/R/F1 on test);
            in report_dir/tune/: tune_grid.csv, tune_grid.png
- export:   model_dir/model.onnx (boxes + scores, decoding inside the graph; NMS/score filter in
            cvpipe.postprocess.detections with the thresholds stored in the ONNX metadata), report_dir/export.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from cvpipe.config import DetectorConfig, ExportConfig
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.device import CPU, Runtime
from cvpipe.errors import ParityError
from cvpipe.export import export_onnx, onnx_session, run_onnx
from cvpipe.models.detector import DecodedDetector
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.registry import build_criterion, build_detector
from cvpipe.plots import save_curve, save_detection_overlays, save_grid_curves
from cvpipe.postprocess.detections import select_detections_numpy as select
from cvpipe.runners import StageOutcome, export_latencies, save_trained, write_json
from cvpipe.tasks.classification import latency_ms
from cvpipe.tasks.detection import (COCO_MAX_DETECTIONS, COCO_SCORE_THRESHOLD, coco_scores, load_ground_truth,
                                    predict_dense, split_targets, train_detector)
from cvpipe.training.checkpoint import fingerprint as make_fingerprint
from cvpipe.tuning.detection_thresholds import count_matches, tune_detection_thresholds

log = logging.getLogger(__name__)


def load_config(params: dict[str, Any], model: str) -> DetectorConfig:
    return DetectorConfig.from_params(params, model)


def onnx_input_example(prepared: Path) -> np.ndarray:
    return to_model_input(np.asarray(load_array(prepared, "test", "images")[:1])).numpy()


def _nms(model: torch.nn.Module, iou: float | None) -> float | None:
    return iou if model.uses_nms else None


def load_trained(model_dir: Path) -> tuple[torch.nn.Module, DetectorConfig, dict[str, Any]]:
    saved = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    train = saved["train"]
    model = build_detector(train["arch"], saved["meta"], train["model"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), train, saved["meta"]


def train(config: DetectorConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
          seed: int, on_epoch_end: Callable[[int, dict[str, float]], None]) -> StageOutcome:
    meta = load_meta(prepared)
    cfg = config.train
    torch.manual_seed(seed)
    model = build_detector(cfg.arch, meta, cfg.model, pretrained=cfg.pretrained)
    model = runtime.prepare_model(model)
    criterion = build_criterion(cfg.arch, model, cfg.loss).to(runtime.device)
    result = train_detector(model, criterion, prepared_dir=prepared, runtime=runtime, seed=seed, epochs=cfg.epochs,
                            batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            grad_clip=cfg.grad_clip, nms_iou=_nms(model, cfg.nms_iou),
                            checkpoint_path=model_dir / "checkpoints" / "last.pt",
                            fingerprint=make_fingerprint(cfg, meta["data_hash"], seed), on_epoch_end=on_epoch_end)
    return save_trained(model, result.history, resumed_from_epoch=result.resumed_from_epoch, model_dir=model_dir,
                        report_dir=report_dir, train_config=dataclasses.asdict(cfg), meta=meta,
                        meta_keys=("class_names", "mean", "std", "image_size", "data_hash"), final_metric="val_map50")


def evaluate(config: DetectorConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
             latency_runs: int) -> StageOutcome:
    """COCO protocol on test: score ≥ 0.001, NMS at the training IoU, 100 detections per image."""
    model, train_cfg, meta = load_trained(model_dir)
    model = runtime.prepare_model(model)
    images = load_array(prepared, "test", "images")
    gt = load_ground_truth(prepared, "test")
    started = time.perf_counter()
    boxes, scores = predict_dense(model, images, runtime)
    batched_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
    dets = select(boxes, scores, score_threshold=COCO_SCORE_THRESHOLD, iou_threshold=_nms(model, train_cfg["nms_iou"]),
                  max_detections=COCO_MAX_DETECTIONS)
    stats = coco_scores(gt, dets)
    lat = latency_ms(_DenseOnly(model), to_model_input(np.asarray(images[:1])), runtime, latency_runs)
    metrics = {k: stats[k] for k in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large",
                                     "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")}
    metrics.update(latency_ms_p50=lat["p50"], latency_ms_p95=lat["p95"], batched_ms_per_image=batched_ms,
                   images=int(len(images)))
    (report_dir / "evaluate").mkdir(parents=True, exist_ok=True)
    (report_dir / "evaluate" / "coco_summary.txt").write_text(stats["summary"])
    curve = pd.DataFrame({"recall": stats["pr_curve"]["recall"], "precision": stats["pr_curve"]["precision"]})
    curve.to_csv(report_dir / "evaluate" / "pr_curve.csv", index=False)
    save_curve(curve["recall"].to_numpy(), {"precision @ IoU 0.5 (mean over classes)": curve["precision"].to_numpy()},
               report_dir / "evaluate" / "pr_curve.png", xlabel="recall", title="Precision-recall on test (COCO protocol)")
    targets = split_targets(prepared, "test")
    shown = min(8, len(images))
    save_detection_overlays(np.asarray(images[:shown]), targets[:shown],
                            [{k: v[d["scores"] >= 0.3] for k, v in d.items()} for d in dets[:shown]],
                            meta["class_names"], report_dir / "evaluate" / "overlays.png")
    paths = [write_json(report_dir / "metrics.json", metrics),
             write_json(report_dir / "evaluate" / "per_class.json", stats["per_class"]),
             report_dir / "evaluate" / "coco_summary.txt", report_dir / "evaluate" / "pr_curve.csv", report_dir / "evaluate" / "pr_curve.png",
             report_dir / "evaluate" / "overlays.png"]
    return StageOutcome(metrics={f"test_{k}": float(v) for k, v in metrics.items()}, artifacts=paths)


class _DenseOnly(torch.nn.Module):
    """forward = decode(model(x)): what one inference costs before post-processing."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode(self.model(x))


def _prf(dets: list[dict[str, np.ndarray]], targets: list[dict[str, np.ndarray]]) -> dict[str, float]:
    tp = fp = fn = 0
    for d, t in zip(dets, targets):
        a, b, c = count_matches(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"])
        tp, fp, fn = tp + a, fp + b, fn + c
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def tune(config: DetectorConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime) -> StageOutcome:
    """Score threshold × NMS IoU grid on validation; the chosen point's precision/recall/F1 on test."""
    model, _, _ = load_trained(model_dir)
    model = runtime.prepare_model(model)
    cfg = config.tune
    iou_grid = list(cfg.nms_iou_thresholds) if model.uses_nms else [None]
    val_boxes, val_scores = predict_dense(model, load_array(prepared, "val", "images"), runtime)
    point = tune_detection_thresholds(val_boxes, val_scores, split_targets(prepared, "val"),
                                      score_thresholds=list(cfg.score_thresholds), iou_thresholds=iou_grid,
                                      max_detections=cfg.max_detections, objective=cfg.objective,
                                      target_precision=cfg.target_precision)
    test_boxes, test_scores = predict_dense(model, load_array(prepared, "test", "images"), runtime)
    test_dets = select(test_boxes, test_scores, score_threshold=point.score_threshold,
                       iou_threshold=point.iou_threshold, max_detections=cfg.max_detections)
    test = _prf(test_dets, split_targets(prepared, "test"))
    thresholds = {"score_threshold": point.score_threshold, "nms_iou_threshold": point.iou_threshold,
                  "max_detections": cfg.max_detections}
    result = {**thresholds, "objective": cfg.objective, "target_met_on_val": point.target_met,
              "val_precision": point.precision, "val_recall": point.recall, "val_f1": point.f1,
              **{f"test_{k}": v for k, v in test.items()}}
    grid = pd.DataFrame(point.grid)
    (report_dir / "tune").mkdir(parents=True, exist_ok=True)
    grid.to_csv(report_dir / "tune" / "tune_grid.csv", index=False)
    save_grid_curves(grid, report_dir / "tune" / "tune_grid.png", x="score_threshold", y="f1", series="iou_threshold",
                     chosen=(point.score_threshold, point.iou_threshold), xlabel="score threshold",
                     ylabel="F1 at IoU 0.5 (validation)", title="Operating point grid (validation)")
    paths = [write_json(model_dir / "thresholds.json", thresholds), write_json(report_dir / "tune.json", result),
             report_dir / "tune" / "tune_grid.csv", report_dir / "tune" / "tune_grid.png"]
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and v is not None}
    return StageOutcome(metrics=metrics, artifacts=paths)


def export(config: DetectorConfig, export_config: ExportConfig, *, prepared: Path, model_dir: Path,
           report_dir: Path) -> StageOutcome:
    """ONNX (decode inside the graph) checked against PyTorch after the shared post-processing."""
    model, _, meta = load_trained(model_dir)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    images = np.asarray(load_array(prepared, "test", "images"))
    inputs = to_model_input(images[: export_config.parity_images])
    graph = DecodedDetector(model).eval()
    onnx_path = export_onnx(graph, inputs[:2], model_dir / "model.onnx", opset=export_config.opset,
                            output_names=("boxes", "scores"),
                            metadata={"class_names": meta["class_names"], "uses_nms": bool(model.uses_nms),
                                      "input": "float32 [B,3,S,S] 0..255", "boxes": "xyxy absolute px", **thresholds})
    session = onnx_session(onnx_path)
    chosen = dict(score_threshold=thresholds["score_threshold"], iou_threshold=thresholds["nms_iou_threshold"],
                  max_detections=thresholds["max_detections"])
    with torch.no_grad():
        torch_boxes, torch_scores = (t.numpy() for t in graph(inputs))
    onnx_boxes, onnx_scores = run_onnx(session, inputs.numpy())
    box_diff = float(np.abs(torch_boxes - onnx_boxes).max())
    score_diff = float(np.abs(torch_scores - onnx_scores).max())
    torch_dets = select(torch_boxes, torch_scores, **chosen)
    onnx_dets = select(onnx_boxes, onnx_scores, **chosen)
    same_count = all(len(a["scores"]) == len(b["scores"]) for a, b in zip(torch_dets, onnx_dets))
    same_labels = same_count and all((a["labels"] == b["labels"]).all() for a, b in zip(torch_dets, onnx_dets))
    # mAP of both on the whole test split, COCO protocol.
    gt = load_ground_truth(prepared, "test")
    nms = thresholds["nms_iou_threshold"] if model.uses_nms else None
    all_torch = predict_dense(model, images, CPU)
    all_onnx = run_onnx(session, to_model_input(images).numpy(), batch_size=64)
    coco = dict(score_threshold=COCO_SCORE_THRESHOLD, iou_threshold=nms, max_detections=COCO_MAX_DETECTIONS)
    map_torch = coco_scores(gt, select(*all_torch, **coco))["map50_95"]
    map_onnx = coco_scores(gt, select(*all_onnx, **coco))["map50_95"]
    result = {"max_box_diff": box_diff, "max_score_diff": score_diff, "same_detections": bool(same_labels),
              "map50_95_torch": map_torch, "map50_95_onnx": map_onnx, "parity_images": int(len(inputs)),
              **export_latencies(graph, session, inputs[:1], export_config.latency_runs)}
    write_json(report_dir / "export.json", result)
    problems = parity_problems(config.export, box_diff=box_diff, score_diff=score_diff, same=same_labels,
                               map_torch=map_torch, map_onnx=map_onnx)
    if problems:
        raise ParityError(f"{onnx_path}: ONNX disagrees with PyTorch: " + "; ".join(problems))
    return StageOutcome(metrics={f"export_{k}": float(v) for k, v in result.items()},
                        artifacts=[onnx_path, report_dir / "export.json"])


def parity_problems(tol: Any, *, box_diff: float, score_diff: float, same: bool, map_torch: float, map_onnx: float,
                    what: str = "test mAP") -> list[str]:
    """What breaks the detector parity gate (tolerances ``box_atol``, ``score_atol``, ``map_tolerance``)."""
    problems = []
    if box_diff > tol.box_atol:
        problems.append(f"box difference {box_diff:.3g} px > {tol.box_atol}")
    if score_diff > tol.score_atol:
        problems.append(f"score difference {score_diff:.3g} > {tol.score_atol}")
    if not same:
        problems.append("different detections (count or labels) after post-processing")
    if abs(map_torch - map_onnx) > tol.map_tolerance:
        problems.append(f"{what} {map_onnx:.4f} (ONNX) vs {map_torch:.4f} (PyTorch), tolerance {tol.map_tolerance}")
    return problems
