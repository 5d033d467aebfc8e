"""Object detection (YOLO-style, SSD, DETR: any model of the contract in :mod:`cvpipe.models.detector`).

- train: the architecture's criterion on augmented scenes; validation mAP (COCO protocol) per epoch.
- evaluate: COCO stats on test (score ≥ 0.001, NMS at the training IoU, 100 detections per image);
  evaluate/per_class.json, pr_curve.csv + .png, overlays.png, coco_summary.txt.
- tune: score threshold × NMS IoU on validation (objective F1 or recall at a precision); its P/R/F1 on test;
  tune/tune_grid.csv + .png.
- export: boxes [B, A, 4] xyxy px + scores [B, A, K], decoding inside the graph; NMS and the score filter in
  :mod:`cvpipe.postprocess.detections` with the thresholds from the ONNX metadata.
- serving: one row per image: boxes (on the caller's pixel grid), scores, labels, class_names.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from cvpipe.data.arrays import load_array
from cvpipe.data.detection_dataset import (DetectionDataset, batched_detection_augment, collate_detection,
                                           detection_augment)
from cvpipe.data.ground_truth import detection_targets, first_images, load_ground_truth
from cvpipe.device import CPU, Runtime
from cvpipe.onnx_inference import run_onnx
from cvpipe.inference import predict_dense
from cvpipe.matching.grid_assignment import strides_for_objects
from cvpipe.metrics.detection import COCO_MAX_DETECTIONS, COCO_SCORE_THRESHOLD, coco_scores
from cvpipe.models.detector import DecodedDetector
from cvpipe.plots import save_curve, save_detection_overlays, save_grid_curves
from cvpipe.postprocess.detections import select_detections_numpy as select
from cvpipe.tasks.base import Evaluation, Parity, Task, TrainData, Trained, Tuning, write_json
from cvpipe.tasks.serving.detection import DetectionServing
from cvpipe.tuning.detection_thresholds import count_matches, tune_detection_thresholds

log = logging.getLogger(__name__)
STATS = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large", "ar1", "ar10", "ar100", "ar_small",
         "ar_medium", "ar_large")


def nms_iou(model: nn.Module, iou: float | None) -> float | None:
    """The NMS IoU to use: ``iou`` for models that need NMS, None for set predictors (DETR)."""
    return iou if model.uses_nms else None


def coco_protocol(iou: float | None) -> dict[str, Any]:
    return dict(score_threshold=COCO_SCORE_THRESHOLD, iou_threshold=iou, max_detections=COCO_MAX_DETECTIONS)


def write_pr_curve(stats: dict[str, Any], out_dir: Path, label: str, title: str) -> list[Path]:
    """pr_curve.csv (a DVC plot) and pr_curve.png of COCO's IoU-0.5 precision-recall curve."""
    curve = pd.DataFrame({"recall": stats["pr_curve"]["recall"], "precision": stats["pr_curve"]["precision"]})
    curve.to_csv(out_dir / "pr_curve.csv", index=False)
    save_curve(curve["recall"].to_numpy(), {label: curve["precision"].to_numpy()}, out_dir / "pr_curve.png",
               xlabel="recall", title=title)
    return [out_dir / "pr_curve.csv", out_dir / "pr_curve.png"]


def write_tuning_grid(rows: list[dict[str, Any]], out_dir: Path, *, series: str, chosen: tuple[float, float],
                      ylabel: str) -> list[Path]:
    """The validation grid of a threshold search as tune_grid.csv and its F1 curves per ``series`` value."""
    grid = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid.to_csv(out_dir / "tune_grid.csv", index=False)
    save_grid_curves(grid, out_dir / "tune_grid.png", x="score_threshold", y="f1", series=series, chosen=chosen,
                     xlabel="score threshold", ylabel=ylabel, title="Operating point grid (validation)")
    return [out_dir / "tune_grid.csv", out_dir / "tune_grid.png"]


def prf(dets: list[dict[str, np.ndarray]], targets: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Precision, recall and F1 at IoU 0.5 of final detections against the targets (greedy, class-aware)."""
    tp = fp = fn = 0
    for d, t in zip(dets, targets):
        a, b, c = count_matches(d["boxes"], d["scores"], d["labels"], t["boxes"], t["labels"])
        tp, fp, fn = tp + a, fp + b, fn + c
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


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


def served_coco_results(pyfunc: Any, prepared: Path, with_masks: bool) -> tuple[dict[str, Any], list[dict]]:
    """The test split's COCO ground truth and ``pyfunc``'s COCO-protocol results on the test images."""
    from cvpipe.metrics.detection import detections_to_coco

    gt = load_ground_truth(prepared, "test")
    table = pyfunc.predict(np.asarray(load_array(prepared, "test", "images")),
                           params={"score_threshold": COCO_SCORE_THRESHOLD, "max_detections": COCO_MAX_DETECTIONS})
    dets = [{"boxes": np.asarray(row.boxes, dtype=np.float64).reshape(-1, 4),
             "scores": np.asarray(row.scores, dtype=np.float64), "labels": np.asarray(row.labels, dtype=np.int64),
             **({"segmentations": list(row.masks)} if with_masks else {})} for row in table.itertuples()]
    image_ids = [im["id"] for im in sorted(gt["images"], key=lambda im: im["index"])]
    return gt, detections_to_coco(dets, image_ids, [c["id"] for c in gt["categories"]])


class DetectionTask(DetectionServing, Task):
    name = "detection"
    final_metrics = ("val_map50",)
    onnx_outputs = ("boxes", "scores")

    def graph(self, model: nn.Module) -> nn.Module:
        return DecodedDetector(model)

    def resolve_config(self, config: Any, meta: dict[str, Any]) -> Any:
        """``train.model.strides: auto`` → the level set that covers the prepared objects
        (:func:`cvpipe.matching.grid_assignment.strides_for_objects` on the largest class's high-percentile long
        side, from prepare's ``image_size_choice``)."""
        if config.train.model.get("strides") != "auto":
            return config
        classes = (meta.get("image_size_choice") or {}).get("classes") or []
        largest = max((c["high_long_side_px"] for c in classes), default=None)
        strides = list(strides_for_objects(largest))
        log.info("train.model.strides auto → %s (largest objects %s px long at %s px)", strides,
                 "unknown" if largest is None else f"{largest:g}", meta.get("image_size"))
        model = {**config.train.model, "strides": strides}
        return dataclasses.replace(config, train=dataclasses.replace(config.train, model=model))

    def train_data(self, prepared: Path, config: Any) -> TrainData:
        if config.train.augment == "batched":  # plain samples; the engine augments whole batches on the device
            return TrainData(DetectionDataset.from_prepared(prepared, "train", with_masks=self.with_masks),
                             collate_detection, device_augment=batched_detection_augment())
        return TrainData(DetectionDataset.from_prepared(prepared, "train", transform=detection_augment(),
                                                        with_masks=self.with_masks), collate_detection)

    def validator(self, prepared: Path, config: Any, runtime: Runtime) -> Callable[[nn.Module], dict[str, float]]:
        cap = config.train.val_images
        images, gt = load_array(prepared, "val", "images")[:cap], first_images(load_ground_truth(prepared, "val"), cap)

        def validate(net: nn.Module) -> dict[str, float]:
            if len(images) == 0:
                return {}
            dets = select(*predict_dense(net, images, runtime), **coco_protocol(nms_iou(net, config.train.nms_iou)))
            stats = coco_scores(gt, dets)
            return {"map50": stats["map50"], "map50_95": stats["map50_95"]}

        return validate

    def evaluate(self, trained: Trained, model: nn.Module, prepared: Path, runtime: Runtime,
                 out_dir: Path) -> Evaluation:
        """COCO protocol on test: score ≥ 0.001, NMS at the training IoU, 100 detections per image."""
        images = load_array(prepared, "test", "images")
        gt = load_ground_truth(prepared, "test")
        started = time.perf_counter()
        boxes, scores = predict_dense(model, images, runtime)
        batched_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        dets = select(boxes, scores, **coco_protocol(nms_iou(model, trained.config.train.nms_iou)))
        stats = coco_scores(gt, dets)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "coco_summary.txt").write_text(stats["summary"])
        shown = min(8, len(images))
        save_detection_overlays(np.asarray(images[:shown]), detection_targets(prepared, "test")[:shown],
                                [{k: v[d["scores"] >= 0.3] for k, v in d.items()} for d in dets[:shown]],
                                trained.meta["class_names"], out_dir / "overlays.png")
        metrics = {**{k: stats[k] for k in STATS}, "batched_ms_per_image": batched_ms, "images": int(len(images))}
        return Evaluation(metrics, [write_json(out_dir / "per_class.json", stats["per_class"]),
                                    out_dir / "coco_summary.txt", *write_pr_curve(stats, out_dir, "precision @ IoU 0.5 (mean over classes)",
                                                    "Precision-recall on test (COCO protocol)"),
                                    out_dir / "overlays.png"])

    def tune(self, trained: Trained, model: nn.Module, tune: Any, prepared: Path, runtime: Runtime,
             out_dir: Path) -> Tuning:
        """Score threshold × NMS IoU grid on validation; the chosen point's precision/recall/F1 on test."""
        iou_grid = list(tune.nms_iou_thresholds) if model.uses_nms else [None]
        val_boxes, val_scores = predict_dense(model, load_array(prepared, "val", "images"), runtime)
        point = tune_detection_thresholds(val_boxes, val_scores, detection_targets(prepared, "val"),
                                          score_thresholds=list(tune.score_thresholds), iou_thresholds=iou_grid,
                                          max_detections=tune.max_detections, objective=tune.objective,
                                          target_precision=tune.target_precision)
        test_boxes, test_scores = predict_dense(model, load_array(prepared, "test", "images"), runtime)
        test_dets = select(test_boxes, test_scores, score_threshold=point.score_threshold,
                           iou_threshold=point.iou_threshold, max_detections=tune.max_detections)
        test = prf(test_dets, detection_targets(prepared, "test"))
        thresholds = {"score_threshold": point.score_threshold, "nms_iou_threshold": point.iou_threshold,
                      "max_detections": tune.max_detections}
        report = {**thresholds, "objective": tune.objective, "target_met_on_val": point.target_met,
                  "val_precision": point.precision, "val_recall": point.recall, "val_f1": point.f1,
                  **{f"test_{k}": v for k, v in test.items()}}
        return Tuning(thresholds, report, write_tuning_grid(
            point.grid, out_dir, series="iou_threshold", chosen=(point.score_threshold, point.iou_threshold),
            ylabel="F1 at IoU 0.5 (validation)"))

    def onnx_metadata(self, trained: Trained) -> dict[str, Any]:
        return {"class_names": trained.meta["class_names"], "uses_nms": bool(trained.model.uses_nms),
                "input": "float32 [B,3,S,S] 0..255", "boxes": "xyxy absolute px"}

    def parity(self, trained: Trained, graph: nn.Module, session: Any, inputs: torch.Tensor, prepared: Path,
               thresholds: dict[str, Any], tolerances: Any) -> Parity:
        """Dense outputs, detections after the shared post-processing, and test mAP of both."""
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
        same = same_count and all((a["labels"] == b["labels"]).all() for a, b in zip(torch_dets, onnx_dets))
        # mAP of both on the whole test split, COCO protocol.
        from cvpipe.models.preprocess import to_model_input

        images = np.asarray(load_array(prepared, "test", "images"))
        gt = load_ground_truth(prepared, "test")
        coco = coco_protocol(nms_iou(trained.model, thresholds["nms_iou_threshold"]))
        map_torch = coco_scores(gt, select(*predict_dense(trained.model, images, CPU), **coco))["map50_95"]
        map_onnx = coco_scores(gt, select(*run_onnx(session, to_model_input(images).numpy(), batch_size=64),
                                          **coco))["map50_95"]
        figures = {"max_box_diff": box_diff, "max_score_diff": score_diff, "same_detections": bool(same),
                   "map50_95_torch": map_torch, "map50_95_onnx": map_onnx}
        return Parity(figures, parity_problems(tolerances, box_diff=box_diff, score_diff=score_diff, same=same,
                                               map_torch=map_torch, map_onnx=map_onnx))

    def scorer(self, pyfunc: Any, metric: str, prepared: Path) -> Any:
        """One test image per unit; detections at COCO's protocol with the version's own tuned NMS IoU."""
        from cvpipe.lifecycle.bootstrap import CocoScorer

        return CocoScorer(*served_coco_results(pyfunc, prepared, with_masks=False), metric)
