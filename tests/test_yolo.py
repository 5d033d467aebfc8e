"""The YOLO-style detector: shapes, decoding, grid assignment vs brute force, loss edge cases, overfitting."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cvpipe.data.arrays import load_array
from cvpipe.losses.yolo import YoloLoss, paired_iou
from cvpipe.matching.grid_assignment import BACKGROUND, assign_grid, level_size_ranges, pad_targets
from cvpipe.metrics.detection import evaluate_detections
from cvpipe.models.detector import DecodedDetector
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.yolo import build_yolo, deltas_to_boxes
from cvpipe.postprocess.detections import select_detections
from tests.conftest import assert_detector_onnx_parity, overfit

MEAN, STD = [0.5] * 3, [0.2] * 3


def _tiny_model(**kwargs) -> torch.nn.Module:
    return build_yolo(6, MEAN, STD, width=8, **kwargs)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("strides", [(8, 16), (8, 16, 32)])
def test_output_shapes(size, strides):
    model = _tiny_model(strides=strides).eval()
    num_loc = sum((size // s) ** 2 for s in strides)
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size) * 255)
        boxes, scores = model.decode(out)
    assert out["obj_logits"].shape == (2, num_loc)
    assert out["cls_logits"].shape == (2, num_loc, 6)
    assert out["box_deltas"].shape == (2, num_loc, 4)
    assert out["points"].shape == (num_loc, 2) and out["strides"].shape == (num_loc,)
    assert boxes.shape == (2, num_loc, 4) and scores.shape == (2, num_loc, 6)
    assert ((scores >= 0) & (scores <= 1)).all()
    # every level's cell centres tile the image: first point of each level is (s/2, s/2)
    starts = np.cumsum([0] + [(size // s) ** 2 for s in strides])[:-1]
    for start, s in zip(starts, strides):
        assert out["points"][start].tolist() == [s / 2, s / 2] and out["strides"][start] == s
    assert out["points"].max() == size - strides[0] / 2


def test_rejects_bad_strides_and_inputs():
    with pytest.raises(ValueError, match="strides"):
        _tiny_model(strides=(8, 32))
    with pytest.raises(ValueError, match="images"):
        _tiny_model()(torch.rand(1, 1, 64, 64))


def test_decode_of_hand_constructed_outputs():
    model = _tiny_model()
    points = torch.tensor([[4.0, 4.0], [40.0, 24.0]])
    strides = torch.tensor([8.0, 16.0])
    deltas = torch.zeros(1, 2, 4)
    deltas[0, 1] = torch.tensor([math.log(0.5), 0.0, math.log(2.0), math.log(1.5)])  # l, t, r, b in strides
    obj = torch.tensor([[0.0, 2.0]])
    cls = torch.tensor([[[0.0, -1.0], [1.0, 3.0]]])
    boxes, scores = model.decode({"obj_logits": obj, "cls_logits": cls, "box_deltas": deltas,
                                  "points": points, "strides": strides})
    expected = torch.tensor([[[4 - 8.0, 4 - 8.0, 4 + 8.0, 4 + 8.0], [40 - 8.0, 24 - 16.0, 40 + 32.0, 24 + 24.0]]])
    torch.testing.assert_close(boxes, expected)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected_scores = torch.tensor([[[0.5 * 0.5, 0.5 * sig(-1)], [sig(2) * sig(1), sig(2) * sig(3)]]])
    torch.testing.assert_close(scores, expected_scores)


def test_decoded_wrapper_matches_decode():
    model = _tiny_model().eval()
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        boxes, scores = DecodedDetector(model)(images)
        ref_boxes, ref_scores = model.decode(model(images))
    torch.testing.assert_close(boxes, ref_boxes)
    torch.testing.assert_close(scores, ref_scores)


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    assert_detector_onnx_parity(_tiny_model(), tmp_path / "yolo.onnx")


def _brute_force_assign(points, strides, lo, hi, boxes, valid, radius):
    """The rule of the module docstring, one location and one box at a time with Python floats."""
    result = []
    for b in range(boxes.shape[0]):
        row = []
        for (px, py), s, l, h in zip(points.tolist(), strides.tolist(), lo.tolist(), hi.tolist()):
            best, best_key = BACKGROUND, None
            for g, ((x1, y1, x2, y2), ok) in enumerate(zip(boxes[b].tolist(), valid[b].tolist())):
                if not ok:
                    continue
                cx, cy, size = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
                if not l <= size < h:
                    continue
                centre_cell = math.floor(px / s) == math.floor(cx / s) and math.floor(py / s) == math.floor(cy / s)
                inside = x1 < px < x2 and y1 < py < y2
                near = abs(px - cx) < radius * s and abs(py - cy) < radius * s
                if not (centre_cell or (inside and near)):
                    continue
                key = (0 if centre_cell else 1, (x2 - x1) * (y2 - y1), g)
                if best_key is None or key < best_key:
                    best, best_key = g, key
            row.append(best)
        result.append(row)
    return torch.tensor(result, dtype=torch.long)


def _random_boxes(rng: random.Random, n: int, size: int) -> list[list[float]]:
    boxes = []
    for _ in range(n):
        w, h = rng.uniform(4, 60), rng.uniform(4, 60)
        x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        if rng.random() < 0.3:  # integer corners: centres and sides land exactly on cell borders
            x1, y1, w, h = round(x1), round(y1), round(w), round(h)
        boxes.append([x1, y1, x1 + w, y1 + h])
    return boxes


@pytest.mark.parametrize("seed", range(6))
def test_assignment_matches_brute_force(seed):
    rng = random.Random(seed)
    model = _tiny_model(strides=(8, 16, 32))
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    points, strides = out["points"], out["strides"]
    lo, hi = level_size_ranges(strides, 4.0)
    targets = [{"boxes": torch.tensor(_random_boxes(rng, n, 64)).reshape(-1, 4),
                "labels": torch.zeros(n, dtype=torch.long)} for n in (0, 1, 3, 7)]
    boxes, _, valid = pad_targets(targets)
    radius = rng.choice([1.0, 1.5, 2.5])
    matched = assign_grid(points, strides, lo, hi, boxes, valid, center_radius=radius)
    expected = _brute_force_assign(points, strides, lo, hi, boxes, valid, radius)
    assert torch.equal(matched, expected)
    assert (matched[0] == BACKGROUND).all()  # the empty image


def test_level_size_ranges_partition_sizes():
    strides = torch.tensor([8.0] * 4 + [16.0] * 2 + [32.0])
    lo, hi = level_size_ranges(strides, 4.0)
    assert lo.tolist() == [0, 0, 0, 0, 32, 32, 64] and hi.tolist() == [32] * 4 + [64] * 2 + [math.inf]


@pytest.mark.parametrize("seed", range(5))
def test_every_box_gets_a_positive(seed):
    """Boxes of 16-46 px on 128 px images (the default data), centres at least one coarse stride apart."""
    rng = random.Random(seed)
    model = _tiny_model()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 128, 128))
    lo, hi = level_size_ranges(out["strides"], 4.0)
    targets = []
    for _ in range(8):
        boxes = []
        while len(boxes) < 6:
            w, h = rng.uniform(16, 46), rng.uniform(16, 46)
            x1, y1 = rng.uniform(0, 128 - w), rng.uniform(0, 128 - h)
            centre = (x1 + w / 2, y1 + h / 2)
            if all(max(abs(centre[0] - (b[0] + b[2]) / 2), abs(centre[1] - (b[1] + b[3]) / 2)) >= 16 for b in boxes):
                boxes.append([x1, y1, x1 + w, y1 + h])
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.zeros(6, dtype=torch.long)})
    boxes, _, valid = pad_targets(targets)
    matched = assign_grid(out["points"], out["strides"], lo, hi, boxes, valid)
    for b in range(len(targets)):
        assert set(matched[b].tolist()) - {BACKGROUND} == set(range(6)), f"image {b}"


def test_paired_iou_is_the_diagonal_of_box_iou():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 25], [0, 0, 1, 1]])
    b = torch.tensor([[5.0, 5, 15, 15], [5, 5, 15, 25], [2, 2, 3, 3]])
    torch.testing.assert_close(paired_iou(a, b), torch.diagonal(box_iou(a, b)))


def _random_targets(seed: int) -> list[dict[str, torch.Tensor]]:
    rng = random.Random(seed)
    return [{"boxes": torch.tensor(_random_boxes(rng, n, 64)).reshape(-1, 4),
             "labels": torch.tensor([rng.randrange(6) for _ in range(n)], dtype=torch.long)} for n in (2, 3)]


def test_empty_targets_give_zero_box_and_class_loss():
    torch.manual_seed(0)
    model = _tiny_model()
    out = model(torch.rand(2, 3, 64, 64) * 255)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    terms = YoloLoss(num_classes=6)(out, empty)
    assert terms["loss_box"].item() == 0.0 and terms["loss_cls"].item() == 0.0
    # objectness pushes every location to background: BCE against 0, summed, divided by max(1, 0 positives)
    expected_obj = torch.nn.functional.softplus(out["obj_logits"]).sum()
    torch.testing.assert_close(terms["loss_obj"], expected_obj)
    terms["loss"].backward()
    assert model.obj_pred.bias.grad.item() > 0  # gradient lowers the objectness
    assert model.cls_pred.weight.grad is None or model.cls_pred.weight.grad.abs().sum() == 0


def test_loss_terms_and_finite_gradients():
    torch.manual_seed(0)
    model = _tiny_model()
    out = model(torch.rand(2, 3, 64, 64) * 255)
    targets = _random_targets(1)
    criterion = YoloLoss(num_classes=6, weight_box=2.0, weight_obj=3.0, weight_cls=0.5)
    terms = criterion(out, targets)
    assert set(terms) == {"loss_box", "loss_obj", "loss_cls", "loss"}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    torch.testing.assert_close(terms["loss"], 2 * terms["loss_box"] + 3 * terms["loss_obj"] + 0.5 * terms["loss_cls"])
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.box_pred.weight.grad.abs().sum() > 0


def test_box_loss_vanishes_on_perfect_boxes():
    """Deltas that decode exactly to the assigned boxes: 1 − GIoU = 0 on every positive."""
    model = _tiny_model()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    target = {"boxes": torch.tensor([[10.0, 12.0, 30.0, 28.0], [30.0, 30.0, 62.0, 60.0]]),
              "labels": torch.tensor([1, 4])}
    criterion = YoloLoss(num_classes=6)
    lo, hi = level_size_ranges(out["strides"], criterion.size_boundary_factor)
    boxes, _, valid = pad_targets([target])
    matched = assign_grid(out["points"], out["strides"], lo, hi, boxes, valid)[0]  # [A]
    pos = matched != BACKGROUND
    gt = target["boxes"][matched[pos]]
    p, s = out["points"][pos], out["strides"][pos].unsqueeze(1)
    distances = torch.cat([p - gt[:, :2], gt[:, 2:] - p], dim=1)  # l, t, r, b > 0 inside the box
    out["box_deltas"][0, pos] = torch.log(distances / s)
    torch.testing.assert_close(deltas_to_boxes(out["box_deltas"], out["points"], out["strides"])[0, pos], gt)
    assert criterion(out, [target])["loss_box"].item() < 1e-5


def test_loss_rejects_bad_labels_and_degenerate_boxes():
    model = _tiny_model()
    out = model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="label 6"):
        YoloLoss(num_classes=6)(out, [{"boxes": torch.tensor([[0.0, 0, 20, 20]]), "labels": torch.tensor([6])}])
    with pytest.raises(ValueError, match="index 1 has non-positive width"):
        YoloLoss(num_classes=6)(out, [{"boxes": torch.tensor([[0.0, 0, 20, 20], [30.0, 5, 10, 25]]),
                                       "labels": torch.tensor([0, 1])}])


def _prepared_batch(prepared_dir, count: int):
    images = load_array(prepared_dir, "train", "images")[:count]
    boxes = load_array(prepared_dir, "train", "boxes")
    labels = load_array(prepared_dir, "train", "box_labels")
    offsets = load_array(prepared_dir, "train", "box_offsets")
    targets = [{"boxes": torch.from_numpy(np.array(boxes[offsets[i]:offsets[i + 1]])),
                "labels": torch.from_numpy(np.array(labels[offsets[i]:offsets[i + 1]]))} for i in range(count)]
    return to_model_input(images), targets


def test_overfits_four_prepared_images(tiny_prepared):
    torch.manual_seed(0)
    images, targets = _prepared_batch(tiny_prepared, 4)
    model = overfit(build_yolo(6, MEAN, STD, width=16), YoloLoss(num_classes=6), images, targets)
    with torch.no_grad():
        boxes, scores = model.decode(model(images))
    detections = select_detections(boxes, scores, score_threshold=0.05, iou_threshold=0.5, max_detections=100)
    assert evaluate_detections(targets, detections, num_classes=6)["map50"] >= 0.9


def test_pad_targets_by_hand():
    """Images with 2, 0 and 3 boxes: each image's rows first, then zero padding marked invalid."""
    targets = [{"boxes": torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), "labels": torch.tensor([3, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
               {"boxes": torch.tensor([[0.0, 0, 1, 1], [2, 2, 4, 4], [9, 9, 10, 12]]), "labels": torch.tensor([0, 2, 4])}]
    boxes, labels, valid = pad_targets(targets)
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert labels.tolist() == [[3, 1, 0], [0, 0, 0], [0, 2, 4]]
    assert torch.equal(boxes[0, :2], targets[0]["boxes"]) and torch.equal(boxes[2], targets[2]["boxes"])
    assert not boxes[0, 2].any() and not boxes[1].any()
    empty = pad_targets([targets[1], targets[1]])
    assert empty[0].shape == (2, 0, 4) and empty[2].shape == (2, 0)


def test_auto_strides_extend_the_levels_until_the_coarsest_takes_the_largest_objects():
    from cvpipe.matching.grid_assignment import strides_for_objects

    assert strides_for_objects(54.0) == (8, 16)  # the embedded scenes: 4 · 16 = 64 ≥ 54, today's default
    assert strides_for_objects(64.0) == (8, 16)
    assert strides_for_objects(65.0) == (8, 16, 32)  # e.g. raccoons at 128 px (up to ~123 px long)
    assert strides_for_objects(1000.0) == (8, 16, 32)  # capped: sizes are multiples of 32
    assert strides_for_objects(None) == (8, 16)  # no box statistics: the built-in levels


def test_the_detection_task_resolves_auto_strides_from_the_prepared_statistics():
    from cvpipe.registry import get_task
    from tests.conftest import model_config

    task = get_task("detection")
    config = model_config({"task": "detection", "train": {"arch": "yolo", "model": {"width": 8, "strides": "auto"}}})
    big = {"image_size": 128, "image_size_choice": {"classes": [{"high_long_side_px": 40.0},
                                                                {"high_long_side_px": 100.0}]}}
    resolved = task.resolve_config(config, big)
    assert resolved.train.model == {"width": 8, "strides": [8, 16, 32]} and config.train.model["strides"] == "auto"
    assert task.resolve_config(config, {"image_size": 128}).train.model["strides"] == [8, 16]
    fixed = model_config({"task": "detection", "train": {"arch": "yolo", "model": {"strides": [8, 16]}}})
    assert task.resolve_config(fixed, big) is fixed
