"""SSD: output contract, default boxes, matching vs brute force, offset coding, MultiBox loss, overfitting."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.export import export_onnx
from cvpipe.onnx_inference import onnx_session, run_onnx
from cvpipe.losses.ssd import SSDMultiBoxLoss, hard_negative_mask
from cvpipe.matching.default_boxes import (BACKGROUND, DefaultBoxes, assign_default_boxes, assign_from_iou,
                                           decode_offsets, encode_offsets, ssd_scales)
from cvpipe.metrics.detection import evaluate_detections
from cvpipe.models.detector import DecodedDetector
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.ssd import build_ssd
from cvpipe.postprocess.detections import select_detections

MEAN, STD = [0.5] * 3, [0.2] * 3


def _random_boxes(n: int, size: float, generator: torch.Generator, min_wh: float = 4.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = min_wh + torch.rand(n, 2, generator=generator) * size * 0.4
    return torch.cat([xy, xy + wh], dim=1)


# ----------------------------------------------------------------------------------------- model contract
@pytest.mark.parametrize("size", [64, 100, 128])
def test_output_and_decode_shapes(size):
    model = build_ssd(6, MEAN, STD, width=8).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size) * 255)
        boxes, scores = model.decode(out)
    grids = [math.ceil(size / 2 ** k) for k in range(3, 7)]  # stride-2 convs with padding 1: S/8 .. S/64
    num_boxes = sum(g * g * 4 for g in grids)  # 4 default boxes per location with aspect ratios (2,)
    assert out["cls_logits"].shape == (2, num_boxes, 7)
    assert out["bbox_regression"].shape == (2, num_boxes, 4)
    assert out["default_boxes"].shape == (num_boxes, 4)
    assert boxes.shape == (2, num_boxes, 4) and scores.shape == (2, num_boxes, 6)
    assert boxes.min() >= 0 and boxes.max() <= size
    assert torch.all(scores >= 0) and torch.all(scores.sum(-1) < 1)  # background holds the rest
    expected = out["cls_logits"].softmax(-1)[..., 1:]
    torch.testing.assert_close(scores, expected)
    assert model.uses_nms and model.num_classes == 6


def test_default_boxes_follow_the_ssd_scale_rule():
    scales = ssd_scales(4, 0.1, 0.4)
    m = 4
    for k in range(1, m + 1):
        assert scales[k - 1] == pytest.approx(0.1 + (0.4 - 0.1) * (k - 1) / (m - 1))
    assert scales[m] == pytest.approx(0.5)
    gen = DefaultBoxes(aspect_ratios=[[2.0]] * 4, min_scale=0.1, max_scale=0.4)
    boxes = gen([(16, 16), (8, 8), (4, 4), (2, 2)], (128, 128))
    assert boxes.shape == ((256 + 64 + 16 + 4) * 4, 4)
    s1, s1p, r = 0.1 * 128, math.sqrt(0.1 * 0.2) * 128, math.sqrt(2.0)
    centre = 128 / 16 / 2  # first cell of the 16×16 map
    expected = torch.tensor([[centre - s1 / 2, centre - s1 / 2, centre + s1 / 2, centre + s1 / 2],
                             [centre - s1p / 2, centre - s1p / 2, centre + s1p / 2, centre + s1p / 2],
                             [centre - s1 * r / 2, centre - s1 / r / 2, centre + s1 * r / 2, centre + s1 / r / 2],
                             [centre - s1 / r / 2, centre - s1 * r / 2, centre + s1 / r / 2, centre + s1 * r / 2]])
    torch.testing.assert_close(boxes[:4], expected)
    # next location of the same map is one stride (8 px) to the right
    torch.testing.assert_close(boxes[4:8], expected + torch.tensor([8.0, 0.0, 8.0, 0.0]))
    # the last map (2×2, 4 boxes per location) starts at index (256 + 64 + 16) · 4 with scale s_4 = 0.4
    last = boxes[(256 + 64 + 16) * 4]
    torch.testing.assert_close(last, torch.tensor([32 - 25.6, 32 - 25.6, 32 + 25.6, 32 + 25.6]))


# ----------------------------------------------------------------------------------------------- matching
def _brute_force_assign(iou: list[list[float]], num_boxes: int, threshold: float) -> list[int]:
    """Plain-python reference: greedy bipartite (best pair first, ties: lower GT, lower box) + threshold."""
    num_gt = len(iou)
    matches = []
    for a in range(num_boxes):
        best_g, best_v = BACKGROUND, -1.0
        for g in range(num_gt):
            if iou[g][a] > best_v:
                best_g, best_v = g, iou[g][a]
        matches.append(best_g if best_v >= threshold else BACKGROUND)
    pairs = sorted((-iou[g][a], g, a) for g in range(num_gt) for a in range(num_boxes))
    used_g, used_a = set(), set()
    for _, g, a in pairs:
        if g not in used_g and a not in used_a:
            matches[a] = g
            used_g.add(g)
            used_a.add(a)
    return matches


def test_assignment_matches_brute_force_on_random_cases():
    generator = torch.Generator().manual_seed(0)
    for case in range(40):
        num_gt = int(torch.randint(0, 7, (1,), generator=generator))
        num_boxes = int(torch.randint(1, 60, (1,), generator=generator))
        gt = _random_boxes(num_gt, 64, generator)
        default = _random_boxes(num_boxes, 64, generator)
        threshold = [0.3, 0.5, 0.7][case % 3]
        got = assign_default_boxes(gt, default, threshold)
        iou = box_iou(gt, default).tolist() if num_gt else []
        assert got.tolist() == _brute_force_assign(iou, num_boxes, threshold), f"case {case}"
        if num_gt <= num_boxes:  # every ground truth owns at least one default box
            assert set(got[got != BACKGROUND].tolist()) == set(range(num_gt))


def test_batched_assignment_equals_per_image():
    generator = torch.Generator().manual_seed(1)
    default = DefaultBoxes(aspect_ratios=[[2.0]] * 3, min_scale=0.15, max_scale=0.5)([(8, 8), (4, 4), (2, 2)], (64, 64))
    gts = [_random_boxes(n, 64, generator, min_wh=10) for n in (3, 0, 5, 1)]
    batched = assign_default_boxes(gts, default)
    assert batched.shape == (4, len(default))
    for image, gt in enumerate(gts):
        assert torch.equal(batched[image], assign_default_boxes(gt, default))
    assert torch.all(batched[1] == BACKGROUND)


def test_every_ground_truth_gets_a_default_box_even_below_threshold():
    default = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 35.0, 35.0]])
    gt = torch.tensor([[0.0, 0.0, 30.0, 30.0]])  # IoU 100/900 with box 0, 400/1125 with box 1: both < 0.5
    assert box_iou(gt, default).max() < 0.5
    assert assign_default_boxes(gt, default, 0.5).tolist() == [BACKGROUND, 0]


def test_two_ground_truths_wanting_the_same_default_box():
    default = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 8.0, 8.0], [50.0, 50.0, 60.0, 60.0]])
    # Both GTs' best box is box 0 (IoU 0.81 for GT 0, 1.0 for GT 1): GT 1, with the higher IoU, takes it and
    # GT 0 gets its best remaining box (box 1, IoU 0.79).
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 10.0, 10.0]])
    assert assign_from_iou(box_iou(gt, default), 0.5).tolist() == [1, 0, BACKGROUND]
    # Exact duplicates tie: the lower GT index wins box 0, the other is forced onto its next-best box 1,
    # overriding box 1's argmax (which would be GT 0 by the lowest-index tie rule).
    duplicate = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert assign_default_boxes(duplicate, default, 0.5).tolist() == [0, 1, BACKGROUND]
    # Without the forced match box 1 would go to GT 0: the override is what keeps GT 1 trained.
    iou = box_iou(duplicate, default)
    assert int(iou[:, 1].argmax()) == 0 and iou[0, 1] >= 0.5


# --------------------------------------------------------------------------------------------- box coding
def test_encode_decode_round_trip():
    generator = torch.Generator().manual_seed(2)
    gt = _random_boxes(500, 128, generator)
    default = _random_boxes(500, 128, generator)
    offsets = encode_offsets(gt, default)
    torch.testing.assert_close(decode_offsets(offsets, default), gt, atol=1e-4, rtol=0)
    batched = decode_offsets(offsets.view(5, 100, 4), default[:100])
    torch.testing.assert_close(batched[0], decode_offsets(offsets[:100], default[:100]))
    # SSD variances: t = (10 Δcx / w_d, 10 Δcy / h_d, 5 log(w_g / w_d), 5 log(h_g / h_d))
    one = encode_offsets(torch.tensor([[12.0, 10.0, 32.0, 50.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    torch.testing.assert_close(one, torch.tensor([[10 * 12 / 20, 10 * 20 / 20, 5 * math.log(1.0), 5 * math.log(2.0)]]))


# ------------------------------------------------------------------------------------------------- loss
def test_hard_negative_mining_keeps_three_negatives_per_positive():
    generator = torch.Generator().manual_seed(3)
    loss = torch.rand(4, 50, generator=generator)
    positive = torch.zeros(4, 50, dtype=torch.bool)
    positive[0, :5] = True  # 15 negatives of 45 available
    positive[2, :20] = True  # 3·20 = 60 > 30 available → all 30
    positive[3, 7] = True  # 3 of 49
    negative = hard_negative_mask(loss, positive, 3)
    for image in range(4):
        pos, neg = positive[image], negative[image]
        available = int((~pos).sum())
        assert int(neg.sum()) == min(3 * int(pos.sum()), available)
        assert not torch.any(pos & neg)
        if neg.any() and (~pos & ~neg).any():  # chosen negatives are the hardest
            assert loss[image][neg].min() > loss[image][~pos & ~neg].max()
    assert not negative[1].any()  # no positives → no negatives


def _loss_inputs(generator: torch.Generator, num_boxes: int = 40, num_classes: int = 3):
    default = _random_boxes(num_boxes, 64, generator, min_wh=12)
    outputs = {"cls_logits": torch.randn(2, num_boxes, num_classes + 1, generator=generator),
               "bbox_regression": torch.randn(2, num_boxes, 4, generator=generator),
               "default_boxes": default}
    targets = [{"boxes": default[[3, 11]] + 1.0, "labels": torch.tensor([2, 0])},
               {"boxes": default[[20]] - 2.0, "labels": torch.tensor([1])}]
    return outputs, targets


def test_multibox_loss_equals_the_formula():
    outputs, targets = _loss_inputs(torch.Generator().manual_seed(4))
    got = SSDMultiBoxLoss(weight_loc=2.0)(outputs, targets)
    total_loc, total_conf, num_pos = 0.0, 0.0, 0
    for image, target in enumerate(targets):
        matched = assign_default_boxes(target["boxes"], outputs["default_boxes"]).tolist()
        logits = outputs["cls_logits"][image]
        negatives = []
        for a, g in enumerate(matched):
            if g == BACKGROUND:
                negatives.append(float(F.cross_entropy(logits[a], torch.tensor(0))))
                continue
            num_pos += 1
            label = int(target["labels"][g]) + 1
            total_conf += float(F.cross_entropy(logits[a], torch.tensor(label)))
            enc = encode_offsets(target["boxes"][g:g + 1], outputs["default_boxes"][a:a + 1])[0]
            diff = (outputs["bbox_regression"][image, a] - enc).abs()
            total_loc += float(torch.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum())
        positives_here = sum(g != BACKGROUND for g in matched)
        total_conf += sum(sorted(negatives, reverse=True)[:3 * positives_here])
    assert got["loss_loc"].item() == pytest.approx(total_loc / num_pos, rel=1e-5)
    assert got["loss_conf"].item() == pytest.approx(total_conf / num_pos, rel=1e-5)
    assert got["loss"].item() == pytest.approx((total_conf + 2.0 * total_loc) / num_pos, rel=1e-5)


def test_images_without_boxes_add_no_loss():
    outputs, targets = _loss_inputs(torch.Generator().manual_seed(5))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    criterion = SSDMultiBoxLoss()
    all_empty = criterion(outputs, [empty, empty])
    assert all_empty["loss_loc"].item() == 0.0 and all_empty["loss_conf"].item() == 0.0
    mixed = criterion(outputs, [targets[0], empty])
    first_only = criterion({k: v[:1] if k != "default_boxes" else v for k, v in outputs.items()}, targets[:1])
    for key in ("loss_loc", "loss_conf", "loss"):
        assert mixed[key].item() == pytest.approx(first_only[key].item(), rel=1e-6)


def test_bad_labels_are_named():
    outputs, targets = _loss_inputs(torch.Generator().manual_seed(6))
    targets[1]["labels"] = torch.tensor([3])  # K = 3 → valid labels 0..2
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        SSDMultiBoxLoss()(outputs, targets)


def test_gradients_are_finite():
    torch.manual_seed(0)
    model = build_ssd(6, MEAN, STD, width=8)
    generator = torch.Generator().manual_seed(7)
    targets = [{"boxes": _random_boxes(3, 128, generator, min_wh=16), "labels": torch.tensor([0, 3, 5])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = SSDMultiBoxLoss()(model(torch.rand(2, 3, 128, 128) * 255), targets)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------------- overfit


def test_overfits_four_images_of_the_tiny_dataset(tiny_prepared):
    torch.manual_seed(0)
    meta = load_meta(tiny_prepared)
    images = to_model_input(load_array(tiny_prepared, "train", "images")[:4])
    boxes, labels = load_array(tiny_prepared, "train", "boxes"), load_array(tiny_prepared, "train", "box_labels")
    offsets = load_array(tiny_prepared, "train", "box_offsets")
    targets = [{"boxes": torch.from_numpy(np.array(boxes[offsets[i]:offsets[i + 1]])),
                "labels": torch.from_numpy(np.array(labels[offsets[i]:offsets[i + 1]]))} for i in range(4)]
    num_classes = len(meta["class_names"])
    model = build_ssd(num_classes, meta["mean"], meta["std"], width=16)
    criterion = SSDMultiBoxLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, best = time.perf_counter(), 0.0
    for step in range(1, 301):
        model.train()
        loss = criterion(model(images), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                detections = select_detections(*model.decode(model(images)), score_threshold=0.05,
                                               iou_threshold=0.5, max_detections=100)
            best = evaluate_detections(targets, detections, num_classes)["map50"]
            if best >= 0.9:
                break
    assert best >= 0.9, f"mAP@0.5 {best:.3f} after {step} steps"
    assert time.perf_counter() - start < 60


def test_onnx_export_matches_pytorch(tmp_path):
    model = DecodedDetector(build_ssd(6, MEAN, STD, width=8).eval())
    path = export_onnx(model, torch.rand(2, 3, 64, 64) * 255, tmp_path / "ssd.onnx", opset=18,
                       output_names=("boxes", "scores"))
    images = torch.rand(3, 3, 64, 64) * 255  # another batch size: the batch axis is dynamic
    onnx_boxes, onnx_scores = run_onnx(onnx_session(path), images.numpy())
    with torch.no_grad():
        boxes, scores = model(images)
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-5)
