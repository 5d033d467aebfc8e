"""U-Net shapes at any size, the CE + Dice loss (hand values, ignored pixels, gradients), overfitting, ONNX parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.export import export_onnx
from cvpipe.onnx_inference import onnx_session, run_onnx
from cvpipe.losses.segmentation import SegmentationLoss
from cvpipe.metrics.segmentation import segmentation_scores, update_confusion
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.unet import build_unet

MEAN, STD = [0.5] * 3, [0.2] * 3
K = 6




@pytest.mark.parametrize("height, width", [(64, 64), (67, 67), (100, 100), (128, 128), (67, 100)])
@pytest.mark.parametrize("depth", [3, 4])
def test_output_has_the_input_size_also_when_it_is_not_a_power_of_two(height, width, depth):
    model = build_unet(K, MEAN, STD, base_channels=4, depth=depth).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, height, width) * 255).shape == (2, K + 1, height, width)


def test_binary_mode_has_one_channel():
    model = build_unet(K, MEAN, STD, base_channels=4, binary=True).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 50) * 255).shape == (1, 1, 37, 50)


def test_inputs_smaller_than_two_to_the_depth_are_rejected():
    model = build_unet(K, MEAN, STD, base_channels=4, depth=3).eval()
    with pytest.raises(ValueError, match="smaller than 2\\^depth = 8"):
        model(torch.rand(1, 3, 7, 32))


def _random_case(binary: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1 if binary else K + 1, 9, 11, generator=gen)
    target = torch.randint(0, K + 1, (2, 9, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    return logits, target


@pytest.mark.parametrize("binary", [False, True])
def test_loss_terms_and_gradients_are_finite(binary):
    logits, target = _random_case(binary)
    logits.requires_grad_(True)
    losses = SegmentationLoss(num_classes=K, binary=binary)(logits, target)
    assert set(losses) == {"loss_ce", "loss_dice", "loss"}
    losses["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert losses["loss"].item() == pytest.approx(losses["loss_ce"].item() + losses["loss_dice"].item(), rel=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_ignored_pixels_change_neither_term(binary):
    logits, target = _random_case(binary)
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    perturbed = logits + 50.0 * torch.randn(logits.shape) * ignored
    assert not torch.equal(perturbed, logits)
    criterion = SegmentationLoss(num_classes=K, binary=binary)
    a, b = criterion(logits, target), criterion(perturbed.requires_grad_(True), target)
    for name in a:
        assert a[name].item() == pytest.approx(b[name].item(), abs=1e-6), name
    b["loss"].backward()
    assert (perturbed.grad[ignored] == 0).all()


@pytest.mark.parametrize("binary", [False, True])
def test_perfect_logits_give_zero_dice_and_cross_entropy(binary):
    _, target = _random_case(binary)
    labels = torch.where(target == 255, 0, target)
    if binary:
        logits = 30.0 * ((labels != 0).float() * 2 - 1).unsqueeze(1)
    else:
        logits = 30.0 * torch.nn.functional.one_hot(labels, K + 1).permute(0, 3, 1, 2).float()
    losses = SegmentationLoss(num_classes=K, binary=binary)(logits, target)
    assert losses["loss_dice"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(0.0, abs=1e-5)


def test_hand_computed_binary_loss():
    # two pixels, logits 0 → p = 0.5: BCE = log 2; Dice = (2·0.5 + 1) / (1 + 1 + 1) = 2/3; the third is ignored
    logits = torch.tensor([0.0, 0.0, 7.0]).view(1, 1, 1, 3)
    target = torch.tensor([1, 0, 255]).view(1, 1, 3)
    losses = SegmentationLoss(num_classes=1, binary=True, dice_weight=2.0, smooth=1.0)(logits, target)
    assert losses["loss_ce"].item() == pytest.approx(math.log(2))
    assert losses["loss_dice"].item() == pytest.approx(1 / 3)
    assert losses["loss"].item() == pytest.approx(math.log(2) + 2 / 3)


def test_hand_computed_multiclass_dice_leaves_background_out_of_the_mean():
    # 2 pixels, 3 channels, uniform softmax (1/3 each); targets 0 (background) and 1; ε = 1
    # D_1 = (2·1/3 + 1) / (2/3 + 1 + 1) = 5/8,  D_2 = (0 + 1) / (2/3 + 0 + 1) = 3/5  → L_dice = 1 − (5/8 + 3/5)/2
    logits, target = torch.zeros(1, 3, 1, 2), torch.tensor([[[0, 1]]])
    losses = SegmentationLoss(num_classes=2)(logits, target)
    assert losses["loss_dice"].item() == pytest.approx(1 - (5 / 8 + 3 / 5) / 2)
    assert losses["loss_ce"].item() == pytest.approx(math.log(3))


def test_an_all_ignored_batch_gives_zero_loss_not_nan():
    logits = torch.randn(1, K + 1, 4, 4, requires_grad=True)
    losses = SegmentationLoss(num_classes=K)(logits, torch.full((1, 4, 4), 255))
    assert losses["loss_ce"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    losses["loss"].backward()
    assert torch.isfinite(logits.grad).all()


def test_bad_targets_and_logits_are_named():
    criterion = SegmentationLoss(num_classes=2)
    with pytest.raises(ValueError, match="target value 5"):
        criterion(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 5], [1, 255]]]))
    with pytest.raises(ValueError, match="logits must be \\[B, 3, H, W\\]"):
        criterion(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("binary", [False, True])
def test_both_terms_decrease_over_a_few_steps(tiny_prepared, binary):
    torch.manual_seed(0)
    images = to_model_input(np.asarray(load_array(tiny_prepared, "train", "images"))[:4])
    target = torch.from_numpy(np.array(load_array(tiny_prepared, "train", "semantic")[:4])).long()
    model = build_unet(K, MEAN, STD, base_channels=4, depth=2, binary=binary)
    criterion = SegmentationLoss(num_classes=K, binary=binary)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    history = []
    for _ in range(15):
        losses = criterion(model(images), target)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
    for name in ("loss_ce", "loss_dice"):
        assert history[-1][name] < 0.9 * history[0][name], (name, history[0], history[-1])


def _semantic_miou(model: torch.nn.Module, images: torch.Tensor, target: torch.Tensor, names: list[str]) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(images).argmax(1)
    model.train()
    return segmentation_scores(update_confusion(None, pred.numpy(), target.numpy(), len(names)), names)["miou"]


def test_overfits_four_images(tiny_prepared):
    """≥ 0.9 foreground mean IoU (eval-mode BN) on 4 training scenes within 300 Adam steps (~10-20 s, 1 thread)."""
    meta = load_meta(tiny_prepared)
    names = meta["class_names"]
    images = to_model_input(np.asarray(load_array(tiny_prepared, "train", "images"))[:4])
    target = torch.from_numpy(np.array(load_array(tiny_prepared, "train", "semantic")[:4])).long()
    torch.manual_seed(0)
    model = build_unet(len(names), meta["mean"], meta["std"], base_channels=8, depth=3)
    criterion = SegmentationLoss(num_classes=len(names))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    miou = 0.0
    for step in range(1, 301):
        loss = criterion(model(images), target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            miou = _semantic_miou(model, images, target, names)
            if miou >= 0.9:
                break
    assert miou >= 0.9, f"mean IoU {miou:.3f} after {step} steps"


@pytest.mark.parametrize("binary", [False, True])
def test_onnx_matches_pytorch_with_dynamic_batch(tiny_prepared, tmp_path, binary):
    meta = load_meta(tiny_prepared)
    torch.manual_seed(0)
    model = build_unet(len(meta["class_names"]), meta["mean"], meta["std"], base_channels=4, depth=3,
                       binary=binary).eval()
    with torch.no_grad():  # a head far from its prior init, so the labels vary and their agreement means something
        torch.nn.init.normal_(model.head.weight, std=1.0)
        model.head.bias.zero_()
    inputs = to_model_input(np.asarray(load_array(tiny_prepared, "test", "images")))
    session = onnx_session(export_onnx(model, inputs[:2], tmp_path / "unet.onnx", opset=18))
    for batch in (1, 3, len(inputs)):
        onnx_logits = run_onnx(session, inputs[:batch].numpy())[0]
        with torch.no_grad():
            torch_logits = model(inputs[:batch]).numpy()
        np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-4)
    labels = [(x > 0).astype(np.int64) if binary else x.argmax(1) for x in (onnx_logits, torch_logits)]
    assert len(np.unique(labels[1])) > 1
    scores = segmentation_scores(update_confusion(None, labels[0], labels[1], K), meta["class_names"])
    assert scores["miou_with_background"] >= 0.99


def test_onnx_export_pads_sizes_that_are_not_powers_of_two(tmp_path):
    model = build_unet(K, MEAN, STD, base_channels=4, depth=3).eval()
    inputs = torch.rand(3, 3, 67, 67) * 255
    session = onnx_session(export_onnx(model, inputs[:1], tmp_path / "odd.onnx", opset=18))
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(session, inputs.numpy())[0], model(inputs).numpy(), atol=1e-4, rtol=1e-4)
