"""Whole-batch fetching (train.augment: batched) and capped validation subsets."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from cvpipe.data.arrays import CropDataset
from cvpipe.data.detection_dataset import DetectionDataset, collate_detection
from cvpipe.data.ground_truth import first_images, load_ground_truth
from cvpipe.data.segmentation_dataset import SegmentationDataset
from cvpipe.data.whole_batches import WholeBatches, whole_batch
from cvpipe.device import resolve_runtime
from cvpipe.registry import get_task
from tests.conftest import model_config


def _datasets(prepared):
    return {
        "detection": (DetectionDataset.from_prepared(prepared, "train", with_masks=True), collate_detection),
        "segmentation": (SegmentationDataset.from_prepared(prepared, "train"), None),
        "binary": (SegmentationDataset.from_prepared(prepared, "train", binary=True), None),
        "crops": (CropDataset.from_prepared(prepared, "train"), None),
    }


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("resident", [True, False], ids=["in-memory", "memory-mapped"])
@pytest.mark.parametrize("kind", ["detection", "segmentation", "binary", "crops"])
def test_whole_batches_equal_the_per_image_loader(tiny_prepared, kind, resident):
    """Same sampler seed → the same batches, image for image and target for target, as the per-image path."""
    dataset, collate = _datasets(tiny_prepared)[kind]
    whole = WholeBatches(dataset, resident_bytes=(1 << 40) if resident else 0)
    assert whole.resident is resident and len(whole) == len(dataset)
    per_image = DataLoader(dataset, batch_size=5, shuffle=True, collate_fn=collate,
                           generator=torch.Generator().manual_seed(7))
    batched = DataLoader(whole, batch_size=5, shuffle=True, collate_fn=whole_batch,
                         generator=torch.Generator().manual_seed(7))
    count = 0
    for (want_images, want_targets), (images, targets) in zip(per_image, batched, strict=True):
        assert images.dtype == torch.uint8 and images.is_contiguous()
        assert torch.equal(images, want_images) and _same(targets, want_targets)
        count += len(images)
    assert count == len(dataset)


def test_first_images_keeps_those_images_and_only_their_annotations(tiny_prepared):
    gt = load_ground_truth(tiny_prepared, "val")
    sub = first_images(gt, 3)
    assert sorted(im["index"] for im in sub["images"]) == [0, 1, 2]
    kept = {im["id"] for im in sub["images"]}
    assert sub["annotations"] == [a for a in gt["annotations"] if a["image_id"] in kept]
    assert sub["categories"] == gt["categories"] and first_images(gt, None) is gt


@pytest.mark.parametrize("arch,task,scorer", [
    ("yolo", "detection", "coco_scores"), ("yolact", "instance_segmentation", "coco_scores"),
    ("unet", "segmentation", "score_labels"), ("small_resnet", "classification", "topk_accuracy")])
def test_val_images_caps_the_validation_subset(tiny_prepared, monkeypatch, arch, task, scorer):
    """val_images: N → the validator's scorer sees exactly the first N validation items (predictions and ground
    truth alike); null → all of them."""
    import importlib

    from cvpipe.data.arrays import load_array
    from cvpipe.data.prepare import load_meta
    from cvpipe.engine import build

    module = importlib.import_module(f"cvpipe.tasks.{task}")
    seen = []
    real = getattr(module, scorer)

    def spy(truth, predicted, *args, **kwargs):
        seen.append((truth, predicted))
        return real(truth, predicted, *args, **kwargs)

    monkeypatch.setattr(module, scorer, spy)
    impl = get_task(task)
    torch.manual_seed(0)
    runtime = resolve_runtime("cpu")
    full = model_config({"task": task, "train": {"arch": arch, "epochs": 1}})
    net = build(impl, full, load_meta(tiny_prepared)).eval()
    total = len(load_array(tiny_prepared, "val", "crops" if task == "classification" else "images"))
    assert total > 3
    for cap, expected in ((None, total), (3, 3)):
        seen.clear()
        config = model_config({"task": task, "train": {"arch": arch, "epochs": 1, "val_images": cap}})
        assert impl.validator(tiny_prepared, config, runtime)(net) and seen
        for truth, predicted in seen:
            if scorer == "coco_scores":  # (ground truth, per-image detections)
                assert truth == first_images(load_ground_truth(tiny_prepared, "val"), cap)
                assert len(predicted) == expected
            elif scorer == "score_labels":  # (predicted label maps, targets)
                assert len(truth) == len(predicted) == expected
            else:  # (probabilities, labels, k)
                assert len(truth) == len(predicted) == expected
