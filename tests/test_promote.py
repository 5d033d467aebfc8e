"""Promotion: the bootstrap scorers against pycocotools / the split-level metrics, and champion/challenger
decisions on a real MLflow registry with hand-built ONNX classifiers whose accuracy is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cvpipe.export import save_onnx
from cvpipe.lifecycle.bootstrap import (AccuracyScorer, CocoScorer, ConfusionScorer, paired_bootstrap)
from cvpipe.metrics.detection import coco_evaluate
from cvpipe.metrics.segmentation import segmentation_scores, update_confusion


def _detection_case(seed: int = 0, num_images: int = 8) -> tuple[dict, list[dict]]:
    """COCO GT (2 classes, 1-4 boxes per image) and jittered predictions with false positives."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    for i in range(num_images):
        images.append({"id": 10 + i, "index": i, "width": 64, "height": 64, "file_name": f"{i}.png"})
        for _ in range(rng.integers(1, 5)):
            x, y, w, h = rng.uniform(0, 40), rng.uniform(0, 40), rng.uniform(8, 24), rng.uniform(8, 24)
            cat = int(rng.integers(1, 3))
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": cat,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.uniform() < 0.8:
                jitter = rng.normal(0, 2.0, 4)
                predictions.append({"image_id": 10 + i, "category_id": cat, "score": float(rng.uniform(0.3, 1)),
                                    "bbox": [x + jitter[0], y + jitter[1], w + abs(jitter[2]), h + abs(jitter[3])]})
        predictions.append({"image_id": 10 + i, "category_id": int(rng.integers(1, 3)),
                            "score": float(rng.uniform(0, 0.6)), "bbox": [1.0, 1.0, 10.0, 10.0]})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, predictions


def _resampled_dataset(gt: dict, predictions: list[dict], drawn: list[int]) -> tuple[dict, list[dict]]:
    """The images at ``drawn`` (repeats become distinct copies) as a COCO dataset of their own."""
    images, annotations, results = [], [], []
    for slot, index in enumerate(drawn):
        old = gt["images"][index]["id"]
        images.append({**gt["images"][index], "id": 1000 + slot, "index": slot})
        for ann in gt["annotations"]:
            if ann["image_id"] == old:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": 1000 + slot})
        results += [{**p, "image_id": 1000 + slot} for p in predictions if p["image_id"] == old]
    return {**gt, "images": images, "annotations": annotations}, results


@pytest.mark.parametrize("metric", ["map50_95", "map50"])
def test_coco_scorer_equals_cocoeval_on_the_split_and_on_a_resample_with_repeats(metric):
    gt, predictions = _detection_case()
    scorer = CocoScorer(gt, predictions, metric)
    assert scorer(np.arange(8)) == pytest.approx(coco_evaluate(gt, predictions)[metric], abs=1e-12)
    drawn = [0, 0, 3, 5, 5, 5, 7, 2]
    sub_gt, sub_predictions = _resampled_dataset(gt, predictions, drawn)
    assert scorer(np.array(drawn)) == pytest.approx(coco_evaluate(sub_gt, sub_predictions)[metric], abs=1e-12)


def _with_masks(gt: dict, predictions: list[dict]) -> tuple[dict, list[dict]]:
    """The same case as instance segmentation: every box becomes an elliptic mask RLE (pixel-discretised, so mask
    IoU differs from box IoU)."""
    from cvpipe.data.masks import encode_mask

    yy, xx = np.mgrid[0:64, 0:64] + 0.5

    def rle(box: list[float]) -> dict:
        x, y, w, h = box
        return encode_mask(((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1.0)

    annotations = []
    for a in gt["annotations"]:
        mask = rle(a["bbox"])
        annotations.append({**a, "segmentation": mask, "area": float(mask_utils.area(
            {"size": mask["size"], "counts": mask["counts"].encode()}))})
    return {**gt, "annotations": annotations}, [{**p, "segmentation": rle(p["bbox"])} for p in predictions]


def test_coco_scorer_of_masks_equals_cocoeval_segm_with_repeats():
    gt, predictions = _with_masks(*_detection_case(seed=1))
    scorer = CocoScorer(gt, predictions, "map50_95", iou_type="segm")
    assert scorer(np.arange(8)) == pytest.approx(coco_evaluate(gt, predictions, iou_type="segm")["map50_95"], abs=1e-12)
    assert scorer(np.arange(8)) != pytest.approx(coco_evaluate(gt, predictions)["map50_95"], abs=1e-6)
    drawn = [1, 1, 2, 6, 6, 0, 7, 7]
    sub_gt, sub_predictions = _resampled_dataset(gt, predictions, drawn)
    assert scorer(np.array(drawn)) == pytest.approx(
        coco_evaluate(sub_gt, sub_predictions, iou_type="segm")["map50_95"], abs=1e-12)


def test_confusion_scorer_equals_the_split_level_mean_iou():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, (5, 16, 16))
    preds = np.where(rng.uniform(size=targets.shape) < 0.7, targets, rng.integers(0, 3, targets.shape))
    confusions = np.stack([update_confusion(None, p, t, 2) for p, t in zip(preds, targets)])
    expected = segmentation_scores(update_confusion(None, preds, targets, 2), ["a", "b"])
    assert ConfusionScorer(confusions, "miou")(np.arange(5)) == pytest.approx(expected["miou"])
    assert ConfusionScorer(confusions, "dice")(np.arange(5)) == pytest.approx(expected["dice"])


def test_paired_bootstrap_interval_separates_a_clear_win_from_a_tie():
    rng = np.random.default_rng(2)
    better = AccuracyScorer(rng.uniform(size=200) < 0.9)
    worse = AccuracyScorer(rng.uniform(size=200) < 0.5)
    win = paired_bootstrap(better, worse, resamples=200, confidence=0.95, seed=0)
    assert win.ci_low > 0.2 and win.ci_low <= win.difference <= win.ci_high
    tie = paired_bootstrap(better, better, resamples=50, confidence=0.95, seed=0)
    assert tie.difference == tie.ci_low == tie.ci_high == 0.0
    assert paired_bootstrap(better, worse, resamples=200, confidence=0.95, seed=0) == win  # seeded
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(better, AccuracyScorer(np.ones(10)), resamples=10, confidence=0.95, seed=0)


# ---- decisions on a real registry ------------------------------------------------------------------------------

CLASSES = ["red", "green", "blue"]


def _prepared(root: Path, data_hash: str, seed: int, class_names: list[str] = CLASSES) -> Path:
    """A prepared folder with 90 test crops (8 × 8) whose label is their dominant colour channel."""
    rng = np.random.default_rng(seed)
    labels = np.arange(90) % 3
    crops = rng.integers(0, 120, (90, 8, 8, 3)).astype(np.uint8)
    crops[np.arange(90), :, :, labels] = rng.integers(150, 256, (90, 8, 8)).astype(np.uint8)
    (root / "test").mkdir(parents=True, exist_ok=True)
    np.save(root / "test" / "crops.npy", crops)
    np.save(root / "test" / "crop_labels.npy", labels)
    (root / "meta.json").write_text(json.dumps({"class_names": class_names, "data_hash": data_hash}))
    return root


def _onnx_classifier(path: Path, *, good: bool, class_names: list[str] = CLASSES) -> Path:
    """logits = 0.01 × channel means (right on every crop) when ``good``, else constant (always class 0)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
             numpy_helper.from_array(np.array([0.01 if good else 0.0], np.float32), "scale"),
             numpy_helper.from_array(np.array([0, 0, 0] if good else [1, 0, 0], np.float32), "bias")]
    nodes = [helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "scale"], ["scaled"]), helper.make_node("Add", ["scaled", "bias"], ["logits"])]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    return save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path,
                     {"class_names": class_names, "reject_threshold": 0.0})


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A fresh sqlite tracking store + registry in tmp_path, active for the test; yields a registering function."""
    import mlflow

    from cvpipe import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.MlflowClient().create_experiment("toy", artifact_location=(tmp_path / "artifacts").as_uri())

    def register(*, good: bool, data_hash: str, class_names: list[str] = CLASSES) -> str:
        path = _onnx_classifier(tmp_path / f"{'good' if good else 'bad'}.onnx", good=good, class_names=class_names)
        with mlflow.start_run(experiment_id=experiment):
            return tracking.register_onnx_model(path, registered_name="toy-classifier", task="classification",
                                                input_example=np.zeros((1, 8, 8, 3), np.uint8),
                                                tags={"data_hash": data_hash})

    yield register
    mlflow.set_tracking_uri(previous)


def test_promotion_decisions_move_the_champion_alias_only_on_a_confident_win(registry, tmp_path):
    import mlflow

    from cvpipe.lifecycle.promote import PromoteConfig, promote

    client = mlflow.MlflowClient()
    prepared = _prepared(tmp_path / "prepared", "hash1", seed=0)
    config = PromoteConfig(resamples=100, latency_runs=3)

    def decide(version: str, **changes) -> dict:
        import dataclasses

        return promote(name="toy-classifier", task="classification", challenger_version=version, prepared=prepared,
                       config=dataclasses.replace(config, **changes), report_path=tmp_path / "promotion.json")

    def champion() -> str:
        return str(client.get_model_version_by_alias("toy-classifier", "champion").version)

    first = decide(registry(good=False, data_hash="hash1"))
    assert (first["outcome"], first["reason"], champion()) == ("promoted", "first model: no champion yet", "1")
    assert first["challenger"]["top1"] == pytest.approx(1 / 3)

    too_slow = decide(registry(good=True, data_hash="hash1"), latency_budget_ms=1e-9)
    assert too_slow["outcome"] == "kept" and "latency" in too_slow["reason"] and champion() == "1"

    win = decide(registry(good=True, data_hash="hash1"))
    assert win["outcome"] == "promoted" and champion() == "3"
    assert win["challenger"]["top1"] == 1.0 and win["champion"]["top1"] == pytest.approx(1 / 3)
    assert win["bootstrap"]["ci_low"] > 0.5 and win["bootstrap"]["resamples"] == 100
    assert json.loads((tmp_path / "promotion.json").read_text()) == win
    run = client.get_run(client.get_model_version("toy-classifier", "3").run_id)
    assert run.data.tags["promotion"] == "promoted" and run.data.metrics["promote_ci_low"] > 0.5
    assert [a.path for a in client.list_artifacts(run.info.run_id, "promote")] == ["promote/promotion.json"]

    lose = decide(registry(good=False, data_hash="hash1"))
    assert lose["outcome"] == "kept" and lose["bootstrap"]["ci_high"] < 0 and champion() == "3"
    tie = decide(registry(good=True, data_hash="hash1"), margin=0.0)
    assert tie["outcome"] == "kept" and tie["bootstrap"]["ci_low"] == 0.0 and champion() == "3"  # must *clear* it

    # New data: the champion (scored on hash1) is re-scored on the current split before comparing.
    prepared = _prepared(tmp_path / "prepared", "hash2", seed=1)
    rescored = decide(registry(good=False, data_hash="hash2"))
    assert rescored["champion"]["reevaluated"] is True and rescored["champion"]["top1"] == 1.0
    assert client.get_model_version("toy-classifier", "3").tags["eval_data_hash"] == "hash2"

    # Data with other classes: the champion cannot be scored on it; the challenger takes over.
    prepared = _prepared(tmp_path / "prepared", "hash3", seed=2, class_names=["c", "m", "y"])
    takeover = decide(registry(good=True, data_hash="hash3", class_names=["c", "m", "y"]))
    assert takeover["outcome"] == "promoted" and takeover["reason"].startswith("champion incompatible")
    assert champion() == "7"


def test_the_champion_loads_with_one_call_and_predicts_labels(registry, tmp_path):
    import mlflow

    from cvpipe.lifecycle.promote import PromoteConfig, promote

    prepared = _prepared(tmp_path / "prepared", "hash1", seed=0)
    version = registry(good=True, data_hash="hash1")
    promote(name="toy-classifier", task="classification", challenger_version=version, prepared=prepared,
            config=PromoteConfig(latency_runs=2), report_path=tmp_path / "promotion.json")
    model = mlflow.pyfunc.load_model("models:/toy-classifier@champion")
    crops = np.load(prepared / "test" / "crops.npy")
    table = model.predict(crops)
    assert list(table.columns) == ["label", "class_name", "score", "accepted"]
    assert (table["label"].to_numpy() == np.load(prepared / "test" / "crop_labels.npy")).all()
    assert table["class_name"][0] == "red"
    resized = model.predict(np.repeat(np.repeat(crops[:4], 3, axis=1), 3, axis=2))  # 24 × 24: resized to 8 × 8
    assert (resized["label"].to_numpy() == table["label"].to_numpy()[:4]).all()
    assert not model.predict(crops[:3], params={"reject_threshold": 0.99})["accepted"].any()
    assert model.metadata.signature.inputs is None and model.metadata.signature.params is not None
    with pytest.raises(Exception, match="uint8"):
        model.predict(crops.astype(np.float32))
