"""DETR: shapes, the Hungarian matcher against brute force, the set criterion, gradients, overfitting, ONNX."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou

from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.losses.detr import SetCriterion, build_criterion
from cvpipe.matching.hungarian import HungarianMatcher
from cvpipe.metrics.detection import evaluate_detections
from cvpipe.models.detr import build_detr, gaussian_attention_bias, sine_encoding, token_centres
from cvpipe.models.preprocess import to_model_input
from cvpipe.postprocess.detections import select_detections
from tests.conftest import assert_detector_onnx_parity

K = 6
SMALL = dict(width=8, d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=3, dim_feedforward=64,
             num_queries=5)


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detr(K, [0.5] * 3, [0.25] * 3, **{**SMALL, **overrides})


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4] cxcywh normalised boxes inside the unit square."""
    wh = 0.1 + 0.4 * torch.rand(n, 2, generator=generator)
    centre = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=generator)
    return torch.cat([centre, wh], dim=1)


def _random_case(num_queries: int, num_targets: int, generator: torch.Generator):
    logits = torch.randn(num_queries, K + 1, generator=generator) * 2
    boxes = _random_boxes(num_queries, generator)
    target = {"labels": torch.randint(0, K, (num_targets,), generator=generator),
              "boxes": _random_boxes(num_targets, generator)}
    return logits, boxes, target


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("queries", ["learned", "anchors", "encoder"])
@pytest.mark.parametrize("size", [64, 128])
def test_output_shapes_and_decoded_ranges(queries, size):
    model = _model(queries=queries).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size) * 255)
        boxes, scores = model.decode(out)
    assert out["pred_logits"].shape == (2, 5, K + 1) and out["pred_boxes"].shape == (2, 5, 4)
    assert out["aux_logits"].shape == (2, 2, 5, K + 1) and out["aux_boxes"].shape == (2, 2, 5, 4)
    assert out["image_whwh"].tolist() == [size] * 4
    tokens = (size // 16) ** 2
    if queries == "encoder":
        assert out["enc_logits"].shape == (2, tokens, K + 1) and out["enc_boxes"].shape == (2, tokens, 4)
    else:
        assert "enc_logits" not in out and "enc_boxes" not in out
    assert boxes.shape == (2, 5, 4) and scores.shape == (2, 5, K)
    assert boxes.min() >= 0 and boxes.max() <= size
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    no_object = out["pred_logits"].softmax(-1)[..., -1]
    torch.testing.assert_close(scores.sum(-1), 1 - no_object)
    assert model.uses_nms is False and model.num_classes == K


def test_encoder_queries_are_the_most_confident_tokens():
    model = _model().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64) * 255)
    foreground = out["enc_logits"].softmax(-1)[0, :, :-1].amax(-1)  # [T]
    top = foreground.topk(5).indices
    # refinement starts as the identity (zero-initialised last box layer), so layer 0 returns the references
    first_layer = out["aux_boxes"][0, 0]  # [Q, 4]
    torch.testing.assert_close(first_layer, out["enc_boxes"][0, top], atol=1e-5, rtol=1e-4)


def test_more_queries_than_tokens_is_rejected():
    with pytest.raises(ValueError, match="num_queries=17"):
        _model(num_queries=17)(torch.rand(1, 3, 64, 64) * 255)  # 64 px / 16 → 16 tokens


def test_sine_encoding_matches_the_formula():
    # F = 4 features per coordinate: frequencies T^(2·⌊k/2⌋/4) = 1, 1, 100, 100 for T = 10000.
    u = 0.3
    expected = [math.sin(2 * math.pi * u), math.cos(2 * math.pi * u),
                math.sin(2 * math.pi * u / 100), math.cos(2 * math.pi * u / 100)]
    got = sine_encoding(torch.tensor([[u, 0.0]]), 4)
    assert got.shape == (1, 8)
    torch.testing.assert_close(got[0, :4], torch.tensor(expected))
    torch.testing.assert_close(got[0, 4:], torch.tensor([0.0, 1.0, 0.0, 1.0]))


def test_gaussian_prior_is_zero_at_the_centre_and_minus_half_at_one_sigma():
    centres = token_centres(2, 4)  # x centres 1/8, 3/8, 5/8, 7/8; y centres 1/4, 3/4
    assert centres[:4, 0].tolist() == [0.125, 0.375, 0.625, 0.875] and centres[4:, 1].tolist() == [0.75] * 4
    ref = torch.tensor([[[0.375, 0.25, 0.5, 1.0]]])  # σx = 0.25, σy = 0.5
    bias = gaussian_attention_bias(ref, centres, min_sigma=0.01)[0, 0]  # [8]
    torch.testing.assert_close(bias[1], torch.tensor(0.0))  # token (x 3/8, y 1/4) is the centre
    torch.testing.assert_close(bias[2], torch.tensor(-0.5))  # one σx to the right
    torch.testing.assert_close(bias[5], torch.tensor(-0.5))  # one σy below
    torch.testing.assert_close(bias[6], torch.tensor(-1.0))


# ---------------------------------------------------------------- matcher


def _pair_cost(logit: torch.Tensor, box: torch.Tensor, label: int, tgt_box: torch.Tensor) -> float:
    """C = 1·(−p̂(c)) + 5·‖b − b̂‖₁ + 2·(−GIoU), one pair at a time."""
    prob = torch.exp(logit[label] - torch.logsumexp(logit, 0))
    l1 = (box - tgt_box).abs().sum()
    giou = generalized_box_iou(box_convert(box[None], "cxcywh", "xyxy"), box_convert(tgt_box[None], "cxcywh", "xyxy"))
    return float(-prob + 5 * l1 - 2 * giou[0, 0])


@pytest.mark.parametrize(("num_queries", "num_targets"), [(4, 1), (4, 3), (5, 5), (3, 5), (6, 4)])
def test_matcher_equals_brute_force(num_queries, num_targets):
    generator = torch.Generator().manual_seed(100 * num_queries + num_targets)
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    for _ in range(5):
        logits, boxes, target = _random_case(num_queries, num_targets, generator)
        cost = [[_pair_cost(logits[i], boxes[i], int(target["labels"][j]), target["boxes"][j])
                 for j in range(num_targets)] for i in range(num_queries)]
        # every injection of the smaller side into the larger one
        pairs_of = ((lambda p: list(zip(p, range(num_targets)))) if num_queries >= num_targets
                    else (lambda p: list(zip(range(num_queries), p))))
        options = itertools.permutations(range(max(num_queries, num_targets)), min(num_queries, num_targets))
        totals = sorted((sum(cost[i][j] for i, j in pairs_of(p)), sorted(pairs_of(p))) for p in options)
        src, tgt = matcher(logits[None], boxes[None], [target])[0]
        assert len(src) == len(tgt) == min(num_queries, num_targets)
        assert len(set(src.tolist())) == len(src) and len(set(tgt.tolist())) == len(tgt)
        assert sum(cost[i][j] for i, j in zip(src.tolist(), tgt.tolist())) == pytest.approx(totals[0][0], abs=1e-4)
        if len(totals) == 1 or totals[1][0] - totals[0][0] > 1e-4:  # unique optimum: the same pairs
            assert sorted(zip(src.tolist(), tgt.tolist())) == totals[0][1]


def test_batched_matching_equals_per_image_matching():
    generator = torch.Generator().manual_seed(5)
    cases = [_random_case(6, n, generator) for n in (3, 0, 6, 1)]
    logits = torch.stack([c[0] for c in cases])
    boxes = torch.stack([c[1] for c in cases])
    targets = [c[2] for c in cases]
    matcher = HungarianMatcher()
    batched = matcher(logits, boxes, targets)
    for b, (src, tgt) in enumerate(batched):
        single_src, single_tgt = matcher(logits[b:b + 1], boxes[b:b + 1], [targets[b]])[0]
        assert torch.equal(src, single_src) and torch.equal(tgt, single_tgt)
        assert len(src) == min(6, len(targets[b]["labels"]))


def test_empty_targets_give_empty_index_tensors():
    generator = torch.Generator().manual_seed(6)
    logits, boxes, _ = _random_case(4, 0, generator)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for src, tgt in HungarianMatcher()(torch.stack([logits, logits]), torch.stack([boxes, boxes]), [empty, empty]):
        assert src.shape == tgt.shape == (0,) and src.dtype == tgt.dtype == torch.int64


# ---------------------------------------------------------------- criterion


def _outputs(logits: torch.Tensor, boxes: torch.Tensor, size: int = 100, aux_layers: int = 2,
             encoder: bool = False) -> dict:
    """A DETR output dict whose auxiliary layers (and encoder predictions) repeat the last layer."""
    out = {"pred_logits": logits, "pred_boxes": boxes, "aux_logits": logits.expand(aux_layers, *logits.shape),
           "aux_boxes": boxes.expand(aux_layers, *boxes.shape), "image_whwh": torch.full((4,), float(size))}
    if encoder:
        out.update(enc_logits=logits, enc_boxes=boxes)
    return out


def test_no_targets_give_zero_box_losses_and_all_no_object_ce():
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, K + 1, generator=generator, requires_grad=True)
    boxes = _random_boxes(10, generator).view(2, 5, 4)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    terms = build_criterion(K)(_outputs(logits, boxes, encoder=True), [empty, empty])
    expected_ce = -F.log_softmax(logits, -1)[..., K].mean()  # every query's target is "no object"
    for suffix in ("", "_0", "_1", "_enc"):
        assert terms[f"loss_bbox{suffix}"].item() == 0 and terms[f"loss_giou{suffix}"].item() == 0
        torch.testing.assert_close(terms[f"loss_ce{suffix}"], expected_ce)
    terms["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_box_losses_on_hand_computed_pairs_and_weighted_total():
    size = 100.0
    # Query 2 predicts target 0 exactly; query 0 is target 1 shifted right by 0.1 (normalised).
    pred = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1], [0.3, 0.3, 0.2, 0.4]])[None]
    logits = torch.full((1, 3, K + 1), -10.0)
    logits[0, 2, 1] = logits[0, 0, 4] = logits[0, 1, K] = 10.0  # confident and correct classes
    target = {"boxes": box_convert(torch.tensor([[0.3, 0.3, 0.2, 0.4], [0.5, 0.5, 0.2, 0.2]]), "cxcywh", "xyxy")
              * size, "labels": torch.tensor([1, 4])}
    criterion = build_criterion(K, weight_ce=1.0, weight_bbox=5.0, weight_giou=2.0)
    terms = criterion(_outputs(logits, pred, size=int(size), aux_layers=1, encoder=True), [target])
    # L1: |0.6 − 0.5| = 0.1 over 2 boxes. GIoU of two 0.2-squares offset by 0.1: inter 0.02, union 0.06,
    # hull = union → GIoU = 1/3; loss (1 − 1/3) / 2.
    torch.testing.assert_close(terms["loss_bbox"], torch.tensor(0.1 / 2))
    torch.testing.assert_close(terms["loss_giou"], torch.tensor((1 - 1 / 3) / 2))
    assert terms["loss_ce"].item() < 1e-6
    names = {f"{term}{suffix}" for term in ("loss_ce", "loss_bbox", "loss_giou") for suffix in ("", "_0", "_enc")}
    assert set(terms) == names | {"loss"}
    for suffix in ("_0", "_enc"):  # the same predictions → the same terms
        torch.testing.assert_close(terms[f"loss_giou{suffix}"], terms["loss_giou"])
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    expected = sum(weights[n.removesuffix("_0").removesuffix("_enc")] * v for n, v in terms.items() if n != "loss")
    torch.testing.assert_close(terms["loss"], expected)


@pytest.mark.parametrize(("boxes", "labels", "message"), [
    ([[0.0, 0.0, 10.0, 10.0]], [K], r"targets\[1\]: labels \[6\] outside 0..5"),
    ([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 9.0]], [0, 1], r"targets\[1\]: box 1 .* non-positive"),
])
def test_criterion_rejects_bad_targets_by_index(boxes, labels, message):
    criterion = SetCriterion(K, HungarianMatcher())
    good = {"boxes": torch.tensor([[1.0, 1.0, 8.0, 8.0]]), "labels": torch.tensor([0])}
    bad = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}
    with pytest.raises(ValueError, match=message):
        criterion(_outputs(torch.zeros(2, 3, K + 1), torch.full((2, 3, 4), 0.5)), [good, bad])


@pytest.mark.parametrize("queries", ["learned", "anchors", "encoder"])
def test_gradients_are_finite_and_reach_every_parameter(queries):
    model = _model(queries=queries)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0]]),
                "labels": torch.tensor([0, 5])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    terms = build_criterion(K)(model(torch.rand(2, 3, 64, 64) * 255), targets)
    terms["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), "missing or non-finite grads"
    # Zero at the first step by construction: with reference boxes the box head's last layer starts at zero
    # (refinement = identity), blocking the layers before it; with empty initial content (DETR's tgt = 0) the
    # first decoder self-attention mixes zeros.
    blocked = ("box_head.0.", "box_head.3.") if queries != "learned" else ()
    blocked += ("decoder.0.self_attn.", "decoder.0.norm1.") if queries != "encoder" else ()
    zero = [n for n, g in grads.items() if not n.startswith(blocked) and not g.abs().sum() > 0]
    assert not zero, f"zero gradient for {zero}"


# ---------------------------------------------------------------- learning and export




def test_overfits_a_tiny_batch_to_high_map(tiny_prepared):
    torch.manual_seed(0)
    meta = load_meta(tiny_prepared)
    images = to_model_input(np.asarray(load_array(tiny_prepared, "train", "images")[:4]))  # [4, 3, 64, 64]
    boxes, labels = load_array(tiny_prepared, "train", "boxes"), load_array(tiny_prepared, "train", "box_labels")
    offsets = load_array(tiny_prepared, "train", "box_offsets")
    targets = [{"boxes": torch.from_numpy(np.array(boxes[offsets[i]:offsets[i + 1]])),
                "labels": torch.from_numpy(np.array(labels[offsets[i]:offsets[i + 1]]))} for i in range(4)]
    model = build_detr(K, meta["mean"], meta["std"], width=16, backbone_stages=3, d_model=64,
                       dim_feedforward=128, num_queries=8)
    criterion = build_criterion(K)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    for _ in range(100):  # mAP@0.5 = 1.0 by step 75 for seeds 0-3
        loss = criterion(model(images), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        warmup.step()
    model.eval()
    with torch.no_grad():
        detections = select_detections(*model.decode(model(images)), score_threshold=0.05, iou_threshold=None,
                                       max_detections=100)
    assert evaluate_detections(targets, detections, K)["map50"] >= 0.9


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path):
    assert_detector_onnx_parity(_model(), tmp_path / "detr.onnx")
