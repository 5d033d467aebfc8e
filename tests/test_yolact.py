"""Instance segmentation (YOLACT-style): mask assembly by hand, the mask loss against its formula, separate
instances for touching objects of one class, mask tuning against hand counts, overfitting, ONNX parity and
the four stages end to end."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvpipe.data.arrays import load_array
from cvpipe.data.detection_dataset import DetectionDataset, detection_augment
from cvpipe.data.masks import encode_mask
from cvpipe.errors import ConfigError
from cvpipe.losses.yolact import YolactLoss
from cvpipe.metrics.detection import coco_evaluate, detections_to_coco, targets_to_coco
from cvpipe.models.yolact import DecodedInstanceSegmenter, build_yolact
from cvpipe.postprocess.instance_masks import assemble_masks, mask_probabilities
from cvpipe.data.ground_truth import ground_truth_instances, load_ground_truth
from cvpipe.postprocess.instances import (dense_from_arrays, paired_mask_iou,
                                                select_instances)
from cvpipe.tuning.instance_thresholds import instance_threshold_grid, tune_instance_thresholds
from tests.conftest import model_config, overfit, run_model_stages

MEAN, STD = [0.5] * 3, [0.2] * 3


def _model(**kwargs) -> torch.nn.Module:
    return build_yolact(6, MEAN, STD, width=8, num_prototypes=4, **kwargs)


def test_output_shapes_and_ranges():
    model = _model().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64) * 255)
        boxes, scores, coeffs, protos = model.decode_instances(out)
    locations = (64 // 8) ** 2 + (64 // 16) ** 2
    assert boxes.shape == (2, locations, 4) and scores.shape == (2, locations, 6)
    assert coeffs.shape == (2, locations, 4) and protos.shape == (2, 4, 16, 16)  # protos at stride 4
    assert coeffs.abs().max() <= 1 and protos.min() >= 0


def test_mask_probabilities_by_hand():
    protos = torch.zeros(2, 4, 4)
    protos[0] = 2.0  # constant prototype
    protos[1, :, 2:] = 3.0  # right half
    coeffs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 4.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    probs = mask_probabilities(protos, coeffs, boxes, (8, 8))
    assert probs.shape == (3, 8, 8)
    # detection 0: σ(2) everywhere inside its full-image box
    torch.testing.assert_close(probs[0], torch.full((8, 8), torch.sigmoid(torch.tensor(2.0)).item()))
    # detection 1: its box covers only x < 4, so the right half of prototype 1 is cropped away
    assert (probs[1][:, 4:] == 0).all()
    # detection 2: logits -2 on the left half, +1 far right: bilinear upsampling of the logits, then σ
    up = F.interpolate((-protos[0] + protos[1])[None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(probs[2], torch.sigmoid(up))
    masks = assemble_masks(protos, coeffs, boxes, (8, 8), threshold=0.5)
    expected = np.zeros((3, 8, 8), bool)
    expected[0] = True
    up1 = F.interpolate(protos[1][None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    expected[1, :, :4] = (torch.sigmoid(up1) > 0.5).numpy()[:, :4]  # only the column next to the step, x = 3
    expected[2] = (torch.sigmoid(up) > 0.5).numpy()
    np.testing.assert_array_equal(masks, expected)
    assert expected[1].sum() == 8 and expected[2][:, -1].all() and not expected[2][:, 0].any()
    with pytest.raises(ValueError, match="threshold"):
        assemble_masks(protos, coeffs, boxes, (8, 8), threshold=1.0)
    assert mask_probabilities(protos, coeffs[:0], boxes[:0], (8, 8)).shape == (0, 8, 8)


def test_touching_objects_of_one_class_come_out_as_separate_instances():
    """Two squares of the same class share an edge: connected components would merge them; prototypes with
    different coefficients keep them apart, and NMS keeps both (their boxes barely overlap)."""
    size = 32
    a = np.zeros((size, size), bool)
    a[8:20, 4:16] = True
    b = np.zeros((size, size), bool)
    b[8:20, 16:28] = True
    protos = torch.from_numpy(np.stack([a, b]).astype(np.float32) * 8.0 - 4.0)  # ±4 logits at full resolution
    boxes = np.array([[[4.0, 8.0, 16.0, 20.0], [16.0, 8.0, 28.0, 20.0]]], np.float32)
    scores = np.array([[[0.9], [0.8]]], np.float32)
    coeffs = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    dense = dense_from_arrays(boxes, scores, coeffs, protos.numpy()[None], image_size=(size, size))
    [found] = select_instances(dense, score_threshold=0.5, iou_threshold=0.5, max_detections=10, mask_threshold=0.5)
    assert len(found["segmentations"]) == 2 and (found["labels"] == 0).all()
    ious = paired_mask_iou(found["segmentations"], [encode_mask(a), encode_mask(b)])
    np.testing.assert_allclose(ious, 1.0)


def test_mask_loss_matches_its_formula():
    """L_mask against a direct evaluation of the docstring's sum for hand-picked positives."""
    torch.manual_seed(0)
    protos = torch.rand(1, 3, 4, 4)
    coeffs = torch.randn(1, 5, 3)
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, 0:4, 0:4] = 1
    masks[1, 2:8, 4:7] = 1
    target = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 2.0, 7.0, 8.0]]), "labels": torch.tensor([0, 1]),
              "masks": masks, "has_mask": torch.tensor([True, True])}
    loss = YolactLoss(num_classes=2)
    batch_idx, loc_idx, gt_idx = torch.tensor([0, 0, 0]), torch.tensor([1, 3, 4]), torch.tensor([0, 1, 1])
    value = loss.mask_term(protos, coeffs, [target], batch_idx, loc_idx, gt_idx)
    expected = []
    for a, g in zip(loc_idx.tolist(), gt_idx.tolist()):
        total, cells = 0.0, 0
        for i in range(4):
            for j in range(4):
                cx, cy = (j + 0.5) * 2, (i + 0.5) * 2  # proto cell centre in image px (stride 2)
                x1, y1, x2, y2 = target["boxes"][g].tolist()
                if x1 <= cx < x2 and y1 <= cy < y2:
                    soft = masks[g, 2 * i:2 * i + 2, 2 * j:2 * j + 2].float().mean()
                    p = torch.sigmoid((protos[0, :, i, j] * coeffs[0, a]).sum())
                    total += float(-(soft * torch.log(p) + (1 - soft) * torch.log(1 - p)))
                    cells += 1
        expected.append(total / max(cells, 1))
    assert value.item() == pytest.approx(np.mean(expected), rel=1e-5)
    # instances without a mask are skipped; none left → 0 with a graph
    target["has_mask"] = torch.tensor([False, False])
    zero = loss.mask_term(protos.requires_grad_(), coeffs, [target], batch_idx, loc_idx, gt_idx)
    assert zero.item() == 0.0 and zero.requires_grad


def _mask_term_by_hand(protos, coeffs, targets, batch_idx, loc_idx, gt_idx) -> float:
    """The docstring's L_mask with loops over positives and proto cells (image px per proto cell = stride)."""
    proto_h, proto_w = protos.shape[-2:]
    terms = []
    for b, a, g in zip(batch_idx.tolist(), loc_idx.tolist(), gt_idx.tolist()):
        target = targets[b]
        if not bool(target["has_mask"][g]):
            continue
        stride_h, stride_w = target["masks"].shape[-2] // proto_h, target["masks"].shape[-1] // proto_w
        x1, y1, x2, y2 = target["boxes"][g].tolist()
        total, cells = 0.0, 0
        for i in range(proto_h):
            for j in range(proto_w):
                if x1 <= (j + 0.5) * stride_w < x2 and y1 <= (i + 0.5) * stride_h < y2:
                    soft = target["masks"][g, stride_h * i:stride_h * (i + 1), stride_w * j:stride_w * (j + 1)]
                    soft = soft.float().mean()
                    prob = torch.sigmoid((protos[b, :, i, j] * coeffs[b, a]).sum())
                    total += float(-(soft * torch.log(prob) + (1 - soft) * torch.log(1 - prob)))
                    cells += 1
        terms.append(total / max(cells, 1))
    return float(np.mean(terms))


def test_batched_mask_loss_matches_the_formula_per_positive():
    """A batch of three images (one without positives, instance counts 3/0/2, a mask-less instance) with the
    positives in no particular order: the one batched product equals the formula evaluated positive by positive."""
    gen = torch.Generator().manual_seed(3)
    protos, coeffs = torch.rand(3, 4, 6, 6, generator=gen), torch.randn(3, 7, 4, generator=gen)
    targets = []
    for count, flags in ((3, [True, False, True]), (0, []), (2, [True, True])):
        corners = torch.randint(0, 6, (count, 2), generator=gen).float()
        boxes = torch.cat([corners, corners + torch.randint(3, 7, (count, 2), generator=gen).float()], 1)
        masks = torch.zeros(count, 12, 12, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[k, y0:y1, x0:x1] = torch.randint(0, 2, (y1 - y0, x1 - x0), generator=gen, dtype=torch.uint8)
        targets.append({"boxes": boxes, "labels": torch.zeros(count, dtype=torch.long), "masks": masks,
                        "has_mask": torch.tensor(flags, dtype=torch.bool)})
    batch_idx = torch.tensor([2, 0, 0, 2, 0, 0, 2])
    loc_idx = torch.tensor([6, 1, 5, 0, 2, 3, 4])
    gt_idx = torch.tensor([1, 0, 2, 0, 1, 0, 1])
    value = YolactLoss(num_classes=1).mask_term(protos, coeffs, targets, batch_idx, loc_idx, gt_idx)
    assert value.item() == pytest.approx(_mask_term_by_hand(protos, coeffs, targets, batch_idx, loc_idx, gt_idx),
                                         rel=1e-5)


def test_loss_needs_mask_targets_and_gives_finite_gradients(tiny_prepared):
    dataset = DetectionDataset.from_prepared(tiny_prepared, "train", with_masks=True)
    images = torch.stack([dataset[i][0] for i in range(2)]).float()
    targets = [dataset[i][1] for i in range(2)]
    model = _model()
    terms = YolactLoss(num_classes=6)(model(images), targets)
    assert set(terms) == {"loss_box", "loss_obj", "loss_cls", "loss_mask", "loss"}
    terms["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="masks"):
        YolactLoss(num_classes=6)(model(images), [{k: t[k] for k in ("boxes", "labels")} for t in targets])


def test_prepared_instance_masks_line_up_with_boxes_and_move_with_augmentation(tiny_prepared):
    dataset = DetectionDataset.from_prepared(tiny_prepared, "train", with_masks=True)
    target = dataset.target(0)
    assert target["masks"].shape[0] == len(target["boxes"]) and target["has_mask"].all()
    for mask, box in zip(target["masks"], target["boxes"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() < box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() < box[3] + 1
    augmented = DetectionDataset.from_prepared(tiny_prepared, "train", transform=detection_augment(), with_masks=True)
    torch.manual_seed(1)
    for i in range(len(augmented)):
        _, t = augmented[i]
        assert len(t["masks"]) == len(t["boxes"]) == len(t["labels"]) == len(t["has_mask"])
        for mask, box in zip(t["masks"], t["boxes"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs):  # the mask stays inside its (clamped) box after flips and affine jitter
                assert xs.min() >= box[0] - 2 and xs.max() < box[2] + 2
                assert ys.min() >= box[1] - 2 and ys.max() < box[3] + 2


def _square(x0: int, y0: int, side: int, size: int = 16) -> dict:
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return encode_mask(mask)


def test_instance_grid_counts_by_hand():
    """Two GT squares; three detections (a perfect one, one at IoU 2/3 and a false positive)."""
    gt = [{"labels": np.array([0, 0]), "rles": [_square(0, 0, 4), _square(8, 8, 5)]}]
    dets = [{"scores": np.array([0.9, 0.6, 0.3]), "labels": np.array([0, 0, 0]),
             "rles": {0.5: [_square(0, 0, 4), _square(8, 9, 5), _square(12, 0, 3)]}}]
    grid = instance_threshold_grid(dets, gt, score_thresholds=[0.2, 0.5, 0.7], mask_thresholds=[0.5])
    cells = {r["score_threshold"]: r for r in grid}
    # IoU of the shifted square: 20 / 30 → TP at IoU thresholds 0.50 … 0.65, FP above
    assert (cells[0.2]["tp"], cells[0.2]["fp"], cells[0.2]["fn"]) == (2, 1, 0)
    assert (cells[0.5]["tp"], cells[0.5]["fp"], cells[0.5]["fn"]) == (2, 0, 0)
    assert (cells[0.7]["tp"], cells[0.7]["fp"], cells[0.7]["fn"]) == (1, 0, 1)
    # objective at 0.5: F1 = 1 for t ∈ {0.50 … 0.65}; for the other 6 thresholds TP 1, FP 1, FN 1 → F1 0.5
    assert cells[0.5]["f1"] == pytest.approx((4 * 1.0 + 6 * 0.5) / 10)
    point = tune_instance_thresholds(dets, gt, score_thresholds=[0.2, 0.5, 0.7], mask_thresholds=[0.5])
    assert point.score_threshold == 0.5 and point.f1_50 == 1.0


def test_segm_metrics_through_pycocotools_with_rles():
    gt_masks = [_square(0, 0, 5), _square(8, 8, 5)]
    gt = targets_to_coco([{"boxes": np.array([[0, 0, 5, 5], [8, 8, 13, 13]]), "labels": np.array([0, 1])}],
                         ["a", "b"], image_size=(16, 16))
    for ann, rle in zip(gt["annotations"], gt_masks):
        ann["segmentation"], ann["area"] = rle, 25.0
    perfect = [{"boxes": np.array([[0, 0, 5, 5], [8, 8, 13, 13]]), "scores": np.array([0.9, 0.8]),
                "labels": np.array([0, 1]), "segmentations": gt_masks}]
    assert coco_evaluate(gt, detections_to_coco(perfect, [1], [1, 2]), iou_type="segm")["map50_95"] == pytest.approx(1.0)
    # same boxes, masks shifted by one row: box AP stays 1, mask IoU 20/30 passes 0.50 … 0.65 only → 4/10
    shifted = [dict(perfect[0], segmentations=[_square(0, 1, 5), _square(8, 9, 5)])]
    stats = coco_evaluate(gt, detections_to_coco(shifted, [1], [1, 2]), iou_type="segm")
    assert stats["map50"] == pytest.approx(1.0) and stats["map50_95"] == pytest.approx(0.4)
    assert coco_evaluate(gt, detections_to_coco(shifted, [1], [1, 2]))["map50_95"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="segmentations"):
        detections_to_coco([dict(perfect[0], segmentations=gt_masks[:1])], [1], [1, 2])


def test_overfits_four_prepared_images(tiny_prepared):
    torch.manual_seed(0)
    dataset = DetectionDataset.from_prepared(tiny_prepared, "train", with_masks=True)
    images = torch.stack([dataset[i][0] for i in range(4)]).float()
    targets = [dataset[i][1] for i in range(4)]
    model = overfit(build_yolact(6, MEAN, STD, width=16, num_prototypes=8), YolactLoss(num_classes=6), images, targets)
    with torch.no_grad():
        dense = dense_from_arrays(*(t.numpy() for t in model.decode_instances(model(images))), image_size=(64, 64))
    found = select_instances(dense, score_threshold=0.05, iou_threshold=0.5, max_detections=100, mask_threshold=0.5)
    gt = targets_to_coco(targets, [str(k) for k in range(6)], image_size=(64, 64))
    masks = [m for t in targets for m in t["masks"].numpy().astype(bool)]
    for ann, mask in zip(gt["annotations"], masks):
        ann["segmentation"], ann["area"] = encode_mask(mask), float(mask.sum())
    stats = coco_evaluate(gt, detections_to_coco(found, [1, 2, 3, 4], list(range(1, 7))), iou_type="segm")
    assert stats["map50"] >= 0.9


def test_onnx_export_matches_pytorch(tmp_path):
    from cvpipe.export import export_onnx
    from cvpipe.onnx_inference import onnx_session, run_onnx

    model = _model().eval()
    images = torch.rand(3, 3, 64, 64) * 255
    export_onnx(DecodedInstanceSegmenter(model), images[:2], tmp_path / "m.onnx", opset=18,
                output_names=("boxes", "scores", "mask_coeffs", "protos"))
    onnx_out = run_onnx(onnx_session(tmp_path / "m.onnx"), images.numpy())
    with torch.no_grad():
        torch_out = model.decode_instances(model(images))
    for a, b in zip(onnx_out, torch_out):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-3)


def test_stages_end_to_end(tiny_prepared, tmp_path):
    section = {"task": "instance_segmentation", "train": {"arch": "yolact", "epochs": 1, "batch_size": 8,
                                                          "model": {"width": 8, "num_prototypes": 4}},
               "tune": {"score_thresholds": [0.05, 0.2], "mask_thresholds": [0.4, 0.6]}}
    run = run_model_stages(model_config(section, "yolact"), tiny_prepared, tmp_path)
    assert len(run.epochs) == 1 and {"val_mask_map50", "train_loss_mask"} <= set(run.epochs[0])
    assert 0.0 <= run.evaluated.metrics["test_mask_map50"] <= 1.0
    assert (run.report_dir / "evaluate" / "overlays.png").is_file()
    assert run.tuned["score_threshold"] in (0.05, 0.2) and run.tuned["mask_threshold"] in (0.4, 0.6)
    assert len((run.report_dir / "tune" / "tune_grid.csv").read_text().splitlines()) == 1 + 4
    assert run.exported.metrics["export_same_detections"] == 1.0
    assert run.exported.metrics["export_mask_iou_mean"] >= 0.99
    gt = ground_truth_instances(load_ground_truth(tiny_prepared, "test"))
    assert len(gt) == len(load_array(tiny_prepared, "test", "images")) and sum(len(g["rles"]) for g in gt) > 0


def test_instance_task_rejects_an_arch_without_masks(tiny_prepared):
    from cvpipe import engine
    from cvpipe.data.prepare import load_meta
    from cvpipe.registry import get_task

    config = model_config({"task": "instance_segmentation", "train": {"arch": "yolo"}}, "x")
    with pytest.raises(ConfigError, match="'yolo' is a detection architecture, not instance_segmentation"):
        engine.build(get_task("instance_segmentation"), config, load_meta(tiny_prepared))
