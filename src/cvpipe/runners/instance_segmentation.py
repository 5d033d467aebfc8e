"""Instance segmentation's train, evaluate, tune and export stages (YOLACT-style, :mod:`cvpipe.models.yolact`).

Files (``model_dir`` = models/<name>, ``report_dir`` = reports/<name>):
- train:    as the detectors (the same loop; mask targets added, validation mask mAP per epoch)
- evaluate: report_dir/metrics.json (mask COCO stats as mask_map50_95, mask_map50, ... beside box map50_95,
            map50, ...); in report_dir/evaluate/: per_class.json, pr_curve.csv + .png (mask, IoU 0.5),
            overlays.png (one colour per instance), coco_summary.txt (segm and bbox)
- tune:     model_dir/thresholds.json (score, NMS IoU, mask threshold), report_dir/tune.json; in
            report_dir/tune/: tune_grid.csv, tune_grid.png
- export:   model_dir/model.onnx (boxes, scores, mask_coeffs, protos; NMS and mask assembly in
            cvpipe.postprocess with the thresholds stored in the ONNX metadata), report_dir/export.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from cvpipe.config import ExportConfig, InstanceSegmenterConfig
from cvpipe.data.arrays import load_array
from cvpipe.device import CPU, Runtime
from cvpipe.errors import ConfigError, ParityError
from cvpipe.export import export_onnx, onnx_session, run_onnx
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.yolact import DecodedInstanceSegmenter
from cvpipe.plots import save_curve, save_grid_curves, save_instance_overlays
from cvpipe.runners import StageOutcome, export_latencies, write_json
from cvpipe.runners import detection as detection_runner
from cvpipe.tasks.classification import latency_ms
from cvpipe.tasks.detection import COCO_MAX_DETECTIONS, COCO_SCORE_THRESHOLD, coco_scores, load_ground_truth
from cvpipe.tasks.instance_segmentation import (DenseInstances, decode_rles, dense_from_arrays, ground_truth_instances,
                                                iter_instances, paired_mask_iou, predict_instances, select_instances)
from cvpipe.tuning.instance_thresholds import tune_instance_thresholds

onnx_input_example = detection_runner.onnx_input_example


def load_config(params: dict[str, Any], model: str) -> InstanceSegmenterConfig:
    return InstanceSegmenterConfig.from_params(params, model)


def load_trained(model_dir: Path) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    model, train_cfg, meta = detection_runner.load_trained(model_dir)
    if not getattr(model, "predicts_masks", False):
        raise ConfigError(f"{model_dir}/model.pt: arch {train_cfg['arch']!r} predicts no masks; task "
                          "instance_segmentation needs one that does (yolact)")
    return model, train_cfg, meta


def train(config: InstanceSegmenterConfig, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
          seed: int, on_epoch_end: Callable[[int, dict[str, float]], None]) -> StageOutcome:
    """The detectors' training (mask targets and validation mask mAP come with a mask-predicting arch)."""
    if config.train.arch != "yolact":
        raise ConfigError(f"params.yaml: task instance_segmentation needs train.arch 'yolact', got {config.train.arch!r}")
    outcome = detection_runner.train(config, prepared=prepared, model_dir=model_dir, report_dir=report_dir,
                                     runtime=runtime, seed=seed, on_epoch_end=on_epoch_end)
    history = pd.read_csv(report_dir / "training.csv")
    outcome.metrics["final_val_mask_map50"] = float(history["val_mask_map50"].iloc[-1])
    return outcome


def _coco_instances(dense: DenseInstances, nms_iou: float | None, mask_threshold: float) -> list[dict[str, Any]]:
    """Instances by the COCO protocol (score ≥ 0.001, 100 per image), for pycocotools."""
    return select_instances(dense, score_threshold=COCO_SCORE_THRESHOLD, iou_threshold=nms_iou,
                            max_detections=COCO_MAX_DETECTIONS, mask_threshold=mask_threshold)


def evaluate(config: InstanceSegmenterConfig, *, prepared: Path, model_dir: Path, report_dir: Path,
             runtime: Runtime, latency_runs: int) -> StageOutcome:
    """Mask and box COCO metrics on test (masks binarised at 0.5; tune picks the deployed threshold)."""
    model, train_cfg, meta = load_trained(model_dir)
    model = runtime.prepare_model(model)
    images = load_array(prepared, "test", "images")
    gt = load_ground_truth(prepared, "test")
    started = time.perf_counter()
    dense = predict_instances(model, images, runtime)
    batched_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
    instances = _coco_instances(dense, train_cfg["nms_iou"], mask_threshold=0.5)
    segm, bbox = coco_scores(gt, instances, iou_type="segm"), coco_scores(gt, instances)
    lat = latency_ms(DecodedInstanceSegmenter(model), to_model_input(np.asarray(images[:1])), runtime, latency_runs)
    metrics = {f"mask_{k}": segm[k] for k in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large",
                                              "ar100")}
    metrics.update({k: bbox[k] for k in ("map50_95", "map50", "map75", "ar100")})
    metrics.update(latency_ms_p50=lat["p50"], latency_ms_p95=lat["p95"], batched_ms_per_image=batched_ms,
                   images=int(len(images)))
    out = report_dir / "evaluate"
    out.mkdir(parents=True, exist_ok=True)
    (out / "coco_summary.txt").write_text(f"iouType=segm\n{segm['summary']}\niouType=bbox\n{bbox['summary']}")
    curve = pd.DataFrame({"recall": segm["pr_curve"]["recall"], "precision": segm["pr_curve"]["precision"]})
    curve.to_csv(out / "pr_curve.csv", index=False)
    save_curve(curve["recall"].to_numpy(), {"mask precision @ IoU 0.5 (mean over classes)": curve["precision"].to_numpy()},
               out / "pr_curve.png", xlabel="recall", title="Mask precision-recall on test (COCO protocol)")
    shown = min(6, len(images))
    truth = ground_truth_instances(gt)
    size = tuple(images.shape[1:3])
    predictions = []
    for inst in instances[:shown]:
        keep = inst["scores"] >= 0.3
        predictions.append({"masks": decode_rles([r for r, k in zip(inst["segmentations"], keep) if k], size),
                            "labels": inst["labels"][keep], "scores": inst["scores"][keep]})
    save_instance_overlays(np.asarray(images[:shown]), [decode_rles(t["rles"], size) for t in truth[:shown]],
                           predictions, meta["class_names"], out / "overlays.png",
                           title="instances, one colour per object (predictions with score ≥ 0.3, masks at 0.5)")
    per_class = [{**m, "box_ap50_95": b["ap50_95"], "box_ap50": b["ap50"]}
                 for m, b in zip(segm["per_class"], bbox["per_class"])]
    paths = [write_json(report_dir / "metrics.json", metrics), write_json(out / "per_class.json", per_class),
             out / "coco_summary.txt", out / "pr_curve.csv", out / "pr_curve.png", out / "overlays.png"]
    return StageOutcome(metrics={f"test_{k}": float(v) for k, v in metrics.items()}, artifacts=paths)


def tune(config: InstanceSegmenterConfig, *, prepared: Path, model_dir: Path, report_dir: Path,
         runtime: Runtime) -> StageOutcome:
    """Score threshold × mask threshold on validation (objective in cvpipe.tuning.instance_thresholds); the
    chosen point's figures on test."""
    model, train_cfg, _ = load_trained(model_dir)
    model = runtime.prepare_model(model)
    cfg = config.tune
    nms_iou = train_cfg["nms_iou"]

    def grid_on(split: str, score_thresholds: tuple[float, ...], mask_thresholds: tuple[float, ...]):
        dense = predict_instances(model, load_array(prepared, split, "images"), runtime)
        detections = iter_instances(dense, score_threshold=min(score_thresholds), iou_threshold=nms_iou,
                                    max_detections=cfg.max_detections, mask_thresholds=mask_thresholds)
        return tune_instance_thresholds(detections, ground_truth_instances(load_ground_truth(prepared, split)),
                                        score_thresholds=score_thresholds, mask_thresholds=mask_thresholds)

    point = grid_on("val", cfg.score_thresholds, cfg.mask_thresholds)
    test = grid_on("test", (point.score_threshold,), (point.mask_threshold,))
    thresholds = {"score_threshold": point.score_threshold, "nms_iou_threshold": nms_iou,
                  "mask_threshold": point.mask_threshold, "max_detections": cfg.max_detections}
    result = {**thresholds, "objective": "mean F1 over mask IoU 0.50:0.95", "val_f1": point.f1,
              "val_precision50": point.precision50, "val_recall50": point.recall50, "val_f1_50": point.f1_50,
              "test_f1": test.f1, "test_precision50": test.precision50, "test_recall50": test.recall50,
              "test_f1_50": test.f1_50}
    grid = pd.DataFrame(point.grid)
    out = report_dir / "tune"
    out.mkdir(parents=True, exist_ok=True)
    grid.to_csv(out / "tune_grid.csv", index=False)
    save_grid_curves(grid, out / "tune_grid.png", x="score_threshold", y="f1", series="mask_threshold",
                     chosen=(point.score_threshold, point.mask_threshold), xlabel="score threshold",
                     ylabel="F1, mean over mask IoU 0.5:0.95 (val)", title="Operating point grid (validation)")
    paths = [write_json(model_dir / "thresholds.json", thresholds), write_json(report_dir / "tune.json", result),
             out / "tune_grid.csv", out / "tune_grid.png"]
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
    return StageOutcome(metrics=metrics, artifacts=paths)


def export(config: InstanceSegmenterConfig, export_config: ExportConfig, *, prepared: Path, model_dir: Path,
           report_dir: Path) -> StageOutcome:
    """ONNX (four dense outputs) checked against PyTorch after the shared NMS + mask assembly: box and score
    differences, identical detections, mean mask IoU of paired instances, and test mask mAP of both."""
    model, _, meta = load_trained(model_dir)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    images = np.asarray(load_array(prepared, "test", "images"))
    size = tuple(images.shape[1:3])
    inputs = to_model_input(images[: export_config.parity_images])
    graph = DecodedInstanceSegmenter(model).eval()
    onnx_path = export_onnx(graph, inputs[:2], model_dir / "model.onnx", opset=export_config.opset,
                            output_names=("boxes", "scores", "mask_coeffs", "protos"),
                            metadata={"class_names": meta["class_names"], "input": "float32 [B,3,S,S] 0..255",
                                      "boxes": "xyxy absolute px", "masks": "sigmoid(coeffs @ protos), bilinear "
                                      "to the input size, cropped to the box, > mask_threshold", **thresholds})
    session = onnx_session(onnx_path)
    chosen = dict(score_threshold=thresholds["score_threshold"], iou_threshold=thresholds["nms_iou_threshold"],
                  max_detections=thresholds["max_detections"], mask_threshold=thresholds["mask_threshold"])
    with torch.no_grad():
        torch_out = [t.numpy() for t in graph(inputs)]
    onnx_out = run_onnx(session, inputs.numpy())
    box_diff = float(np.abs(torch_out[0] - onnx_out[0]).max())
    score_diff = float(np.abs(torch_out[1] - onnx_out[1]).max())
    torch_inst = select_instances(dense_from_arrays(*torch_out, image_size=size), **chosen)
    onnx_inst = select_instances(dense_from_arrays(*onnx_out, image_size=size), **chosen)
    same = all(len(a["labels"]) == len(b["labels"]) and (a["labels"] == b["labels"]).all()
               for a, b in zip(torch_inst, onnx_inst))
    ious = np.concatenate([paired_mask_iou(a["segmentations"], b["segmentations"])
                           for a, b in zip(torch_inst, onnx_inst)]) if same else np.zeros(1)
    mask_iou = float(ious.mean()) if len(ious) else 1.0
    gt = load_ground_truth(prepared, "test")
    all_torch = predict_instances(model, images, CPU)
    all_onnx = dense_from_arrays(*run_onnx(session, to_model_input(images).numpy(), batch_size=64), image_size=size)
    map_torch, map_onnx = (coco_scores(gt, _coco_instances(dense, thresholds["nms_iou_threshold"],
                                                           thresholds["mask_threshold"]), iou_type="segm")["map50_95"]
                           for dense in (all_torch, all_onnx))
    result = {"max_box_diff": box_diff, "max_score_diff": score_diff, "same_detections": bool(same),
              "mask_iou_mean": mask_iou, "mask_iou_min": float(ious.min()) if len(ious) else 1.0,
              "mask_map50_95_torch": map_torch, "mask_map50_95_onnx": map_onnx, "parity_images": int(len(inputs)),
              **export_latencies(graph, session, inputs[:1], export_config.latency_runs)}
    write_json(report_dir / "export.json", result)
    tol = config.export
    problems = detection_runner.parity_problems(tol, box_diff=box_diff, score_diff=score_diff, same=same,
                                                map_torch=map_torch, map_onnx=map_onnx, what="test mask mAP")
    if same and mask_iou < tol.min_mask_iou:
        problems.append(f"mean mask IoU {mask_iou:.4f} between PyTorch and ONNX < {tol.min_mask_iou}")
    if problems:
        raise ParityError(f"{onnx_path}: ONNX disagrees with PyTorch: " + "; ".join(problems))
    return StageOutcome(metrics={f"export_{k}": float(v) for k, v in result.items()},
                        artifacts=[onnx_path, report_dir / "export.json"])
