"""Instance segmentation (YOLACT-style, :mod:`cvpipe.models.yolact`): a detector that also predicts masks.

- train: the detectors' loop with instance masks in the targets; validation box and mask mAP per epoch.
- evaluate: mask COCO stats (mask_map50_95, ...) beside box stats (map50_95, ...) on test, masks binarised at
  0.5; evaluate/per_class.json, pr_curve.csv + .png (mask, IoU 0.5), overlays.png (one colour per instance),
  coco_summary.txt (segm and bbox).
- tune: score threshold × mask threshold on validation (objective in :mod:`cvpipe.tuning.instance_thresholds`);
  tune/tune_grid.csv + .png.
- export: boxes, scores, mask_coeffs, protos; NMS and mask assembly in :mod:`cvpipe.postprocess` with the
  thresholds from the ONNX metadata.
- serving: the detection columns plus ``masks``: one COCO RLE per instance on the caller's pixel grid.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cvpipe.data.arrays import load_array
from cvpipe.data.ground_truth import first_images, ground_truth_instances, load_ground_truth
from cvpipe.device import CPU, Runtime
from cvpipe.errors import ConfigError
from cvpipe.onnx_inference import run_onnx
from cvpipe.inference import predict_instances
from cvpipe.metrics.detection import COCO_MAX_DETECTIONS, COCO_SCORE_THRESHOLD, coco_scores
from cvpipe.models.yolact import DecodedInstanceSegmenter
from cvpipe.plots import save_instance_overlays
from cvpipe.postprocess.instances import (DenseInstances, decode_rles, dense_from_arrays, iter_instances,
                                          paired_mask_iou, select_instances)
from cvpipe.tasks.base import Evaluation, Parity, Trained, Tuning, write_json
from cvpipe.tasks.detection import DetectionTask, parity_problems, served_coco_results, \
    write_pr_curve, write_tuning_grid
from cvpipe.tasks.serving.instance_segmentation import InstanceSegmentationServing
from cvpipe.tuning.instance_thresholds import tune_instance_thresholds

MASK_STATS = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large", "ar100")


def coco_instances(dense: DenseInstances, nms_iou: float | None, mask_threshold: float) -> list[dict[str, Any]]:
    """Instances by the COCO protocol (score ≥ 0.001, 100 per image), for pycocotools."""
    return select_instances(dense, score_threshold=COCO_SCORE_THRESHOLD, iou_threshold=nms_iou,
                            max_detections=COCO_MAX_DETECTIONS, mask_threshold=mask_threshold)


class InstanceSegmentationTask(InstanceSegmentationServing, DetectionTask):
    name = "instance_segmentation"
    final_metrics = ("val_map50", "val_mask_map50")
    onnx_outputs = ("boxes", "scores", "mask_coeffs", "protos")

    def check_model(self, model: nn.Module, config: Any) -> None:
        if not getattr(model, "predicts_masks", False):
            raise ConfigError(f"params.yaml: arch {config.train.arch!r} predicts no masks; task "
                              "instance_segmentation needs one that does")

    def graph(self, model: nn.Module) -> nn.Module:
        return DecodedInstanceSegmenter(model)

    def validator(self, prepared: Path, config: Any, runtime: Runtime) -> Callable[[nn.Module], dict[str, float]]:
        cap = config.train.val_images
        images, gt = load_array(prepared, "val", "images")[:cap], first_images(load_ground_truth(prepared, "val"), cap)

        def validate(net: nn.Module) -> dict[str, float]:
            if len(images) == 0:
                return {}
            instances = coco_instances(predict_instances(net, images, runtime), config.train.nms_iou, 0.5)
            boxes, masks = coco_scores(gt, instances), coco_scores(gt, instances, iou_type="segm")
            return {"map50": boxes["map50"], "map50_95": boxes["map50_95"], "mask_map50": masks["map50"],
                    "mask_map50_95": masks["map50_95"]}

        return validate

    def evaluate(self, trained: Trained, model: nn.Module, prepared: Path, runtime: Runtime,
                 out_dir: Path) -> Evaluation:
        """Mask and box COCO metrics on test (masks binarised at 0.5; tune picks the deployed threshold)."""
        images = load_array(prepared, "test", "images")
        gt = load_ground_truth(prepared, "test")
        started = time.perf_counter()
        dense = predict_instances(model, images, runtime)
        batched_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        instances = coco_instances(dense, trained.config.train.nms_iou, mask_threshold=0.5)
        segm, bbox = coco_scores(gt, instances, iou_type="segm"), coco_scores(gt, instances)
        metrics = {**{f"mask_{k}": segm[k] for k in MASK_STATS}, **{k: bbox[k] for k in ("map50_95", "map50", "map75",
                                                                                           "ar100")},
                   "batched_ms_per_image": batched_ms, "images": int(len(images))}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "coco_summary.txt").write_text(f"iouType=segm\n{segm['summary']}\niouType=bbox\n{bbox['summary']}")
        curve = write_pr_curve(segm, out_dir, "mask precision @ IoU 0.5 (mean over classes)",
                               "Mask precision-recall on test (COCO protocol)")
        shown = min(6, len(images))
        size = tuple(images.shape[1:3])
        predictions = []
        for inst in instances[:shown]:
            keep = inst["scores"] >= 0.3
            predictions.append({"masks": decode_rles([r for r, k in zip(inst["segmentations"], keep) if k], size),
                                "labels": inst["labels"][keep], "scores": inst["scores"][keep]})
        save_instance_overlays(np.asarray(images[:shown]),
                               [decode_rles(t["rles"], size) for t in ground_truth_instances(gt)[:shown]],
                               predictions, trained.meta["class_names"], out_dir / "overlays.png",
                               title="instances, one colour per object (predictions with score ≥ 0.3, masks at 0.5)")
        per_class = [{**m, "box_ap50_95": b["ap50_95"], "box_ap50": b["ap50"]}
                     for m, b in zip(segm["per_class"], bbox["per_class"])]
        return Evaluation(metrics, [write_json(out_dir / "per_class.json", per_class), out_dir / "coco_summary.txt",
                                    *curve, out_dir / "overlays.png"])

    def tune(self, trained: Trained, model: nn.Module, tune: Any, prepared: Path, runtime: Runtime,
             out_dir: Path) -> Tuning:
        """Score threshold × mask threshold on validation; the chosen point's figures on test."""
        nms_iou = trained.config.train.nms_iou

        def grid_on(split: str, score_thresholds: tuple[float, ...], mask_thresholds: tuple[float, ...]) -> Any:
            dense = predict_instances(model, load_array(prepared, split, "images"), runtime)
            detections = iter_instances(dense, score_threshold=min(score_thresholds), iou_threshold=nms_iou,
                                        max_detections=tune.max_detections, mask_thresholds=mask_thresholds)
            return tune_instance_thresholds(detections, ground_truth_instances(load_ground_truth(prepared, split)),
                                            score_thresholds=score_thresholds, mask_thresholds=mask_thresholds,
                                            split=split)

        point = grid_on("val", tune.score_thresholds, tune.mask_thresholds)
        test = grid_on("test", (point.score_threshold,), (point.mask_threshold,))
        thresholds = {"score_threshold": point.score_threshold, "nms_iou_threshold": nms_iou,
                      "mask_threshold": point.mask_threshold, "max_detections": tune.max_detections}
        report = {**thresholds, "objective": "mean F1 over mask IoU 0.50:0.95", "val_f1": point.f1,
                  "val_precision50": point.precision50, "val_recall50": point.recall50, "val_f1_50": point.f1_50,
                  "test_f1": test.f1, "test_precision50": test.precision50, "test_recall50": test.recall50,
                  "test_f1_50": test.f1_50}
        return Tuning(thresholds, report, write_tuning_grid(
            point.grid, out_dir, series="mask_threshold", chosen=(point.score_threshold, point.mask_threshold),
            ylabel="F1, mean over mask IoU 0.5:0.95 (val)"))

    def onnx_metadata(self, trained: Trained) -> dict[str, Any]:
        return {"class_names": trained.meta["class_names"], "input": "float32 [B,3,S,S] 0..255",
                "boxes": "xyxy absolute px", "masks": "sigmoid(coeffs @ protos), bilinear to the input size, "
                "cropped to the box, > mask_threshold"}

    def parity(self, trained: Trained, graph: nn.Module, session: Any, inputs: torch.Tensor, prepared: Path,
               thresholds: dict[str, Any], tolerances: Any) -> Parity:
        """Box and score differences, identical detections, mean mask IoU of paired instances after the shared
        NMS + mask assembly, and test mask mAP of both."""
        from cvpipe.models.preprocess import to_model_input

        images = np.asarray(load_array(prepared, "test", "images"))
        size = tuple(images.shape[1:3])
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
        all_onnx = dense_from_arrays(*run_onnx(session, to_model_input(images).numpy(), batch_size=64), image_size=size)
        map_torch, map_onnx = (coco_scores(gt, coco_instances(dense, thresholds["nms_iou_threshold"],
                                                              thresholds["mask_threshold"]), iou_type="segm")["map50_95"]
                               for dense in (predict_instances(trained.model, images, CPU), all_onnx))
        figures = {"max_box_diff": box_diff, "max_score_diff": score_diff, "same_detections": bool(same),
                   "mask_iou_mean": mask_iou, "mask_iou_min": float(ious.min()) if len(ious) else 1.0,
                   "mask_map50_95_torch": map_torch, "mask_map50_95_onnx": map_onnx}
        problems = parity_problems(tolerances, box_diff=box_diff, score_diff=score_diff, same=same,
                                   map_torch=map_torch, map_onnx=map_onnx, what="test mask mAP")
        if same and mask_iou < tolerances.min_mask_iou:
            problems.append(f"mean mask IoU {mask_iou:.4f} between PyTorch and ONNX < {tolerances.min_mask_iou}")
        return Parity(figures, problems)

    def scorer(self, pyfunc: Any, metric: str, prepared: Path) -> Any:
        """One test image per unit; instances at COCO's protocol, mask AP by pycocotools (``iouType="segm"``)."""
        from cvpipe.lifecycle.bootstrap import CocoScorer

        gt, results = served_coco_results(pyfunc, prepared, with_masks=True)
        return CocoScorer(gt, results, metric.removeprefix("mask_"), iou_type="segm")
