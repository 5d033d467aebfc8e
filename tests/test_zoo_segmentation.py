"""torchvision's segmenters as cvpipe architectures: files saved from torchvision's own constructors load strictly
(aux head dropped, class layers new), logits equal torchvision's "out", wrong files are named, the new head has one
channel per class at the background prior, and a tiny batch is learnt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models
from torchvision.models import segmentation
from torchvision.transforms.v2.functional import normalize

from cvpipe.data.arrays import load_array
from cvpipe.errors import ConfigError
from cvpipe.losses.segmentation import SegmentationLoss
from cvpipe.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.unet import BACKGROUND_PRIOR
from cvpipe.models.zoo_segmentation import VARIANTS, ZooSegmenter, build_deeplabv3, build_lraspp_mobilenet_v3
from tests.conftest import resaved_state_dict

MEAN, STD = [0.5] * 3, [0.2] * 3
K = 6  # foreground classes of the user's data
VOC = 21  # classes of the zoo files (20 VOC categories + background)


def _torchvision_file(tmp_path: Path, variant: str, num_classes: int = VOC) -> tuple[torch.nn.Module, Path]:
    """torchvision's own segmenter (aux head on where it has one), BN statistics made non-trivial, saved."""
    torch.manual_seed(0)
    aux = {} if VARIANTS[variant].head_takes_dict else {"aux_loss": True}
    net = getattr(segmentation, variant)(weights=None, weights_backbone=None, num_classes=num_classes, **aux)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{variant}.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), path


@pytest.mark.parametrize("variant", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large",
                                     "deeplabv3_resnet50"])
def test_a_file_saved_from_the_torchvision_constructor_loads_with_a_new_head(variant, tmp_path):
    net, path = _torchvision_file(tmp_path, variant)
    model = ZooSegmenter(variant, num_classes=K, weights=str(path))
    file = torch.load(path, weights_only=True)
    own = model.state_dict()
    heads = tuple(f"{name}." for name in model.final_layers)
    for name in model.final_layers:
        assert model.get_submodule(name).out_channels == K + 1 and file[f"{name}.weight"].shape[0] == VOC
    assert not any(k.startswith("aux_classifier.") for k in own)
    loaded = [k for k in file if not k.startswith((*heads, "aux_classifier."))]
    assert set(loaded) == {k for k in own if not k.startswith((*heads, "normalize."))}
    assert all(torch.equal(own[k], file[k]) for k in loaded)  # backbone and the rest of the head: the file's


@pytest.mark.parametrize("variant", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_logits_equal_torchvisions_out_for_the_same_weights(variant, tmp_path):
    net, path = _torchvision_file(tmp_path, variant, num_classes=K + 1)
    model = ZooSegmenter(variant, num_classes=K, weights=str(path)).eval()
    for name in model.final_layers:  # the only tensors not taken from the file
        model.get_submodule(name).load_state_dict(net.get_submodule(name).state_dict())
    pixels = torch.rand(2, 3, 72, 64) * 255
    with torch.no_grad():
        expected = net(normalize(pixels / 255, IMAGENET_MEAN, IMAGENET_STD))["out"]
        logits = model(pixels)
    assert logits.shape == (2, K + 1, 72, 64)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    _, path = _torchvision_file(tmp_path, "lraspp_mobilenet_v3_large")
    cases = {
        "missing keys.*backbone.0.0.weight": lambda s: s.pop("backbone.0.0.weight"),
        "unexpected keys.*backbone.extra.weight": lambda s: s.update({"backbone.extra.weight": torch.zeros(1)}),
        r"shape mismatches.*classifier.cbr.0.weight \(64, 960, 1, 1\)":
            lambda s: s.update({"classifier.cbr.0.weight": torch.zeros(64, 960, 1, 1)}),
    }
    for message, edit in cases.items():
        with pytest.raises(ConfigError, match=f"model.weights \\(lraspp_mobilenet_v3_large\\) .*edited.pth.*{message}"):
            build_lraspp_mobilenet_v3(K, MEAN, STD, weights=resaved_state_dict(tmp_path, path, edit))


def test_a_file_of_another_segmenter_is_rejected(tmp_path):
    _, path = _torchvision_file(tmp_path, "lraspp_mobilenet_v3_large")
    with pytest.raises(ConfigError, match="deeplabv3_mobilenet_v3_large.*missing keys.*classifier.0.convs"):
        build_deeplabv3(K, MEAN, STD, weights=str(path))
    with pytest.raises(ConfigError, match="not found"):
        build_deeplabv3(K, MEAN, STD, weights=str(tmp_path / "nowhere.pth"))


def test_backbone_weights_come_from_the_imagenet_network_and_are_checked(tmp_path):
    torch.manual_seed(1)
    imagenet = models.mobilenet_v3_large(weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "mnv3.pth")
    model = build_lraspp_mobilenet_v3(K, MEAN, STD, backbone_weights=str(tmp_path / "mnv3.pth"))
    features = imagenet.features.state_dict()
    assert model.backbone.state_dict().keys() == features.keys()
    assert all(torch.equal(v, features[k]) for k, v in model.backbone.state_dict().items())
    torch.save(models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match=r"model.backbone_weights \(deeplabv3_resnet50\) .*r18.pth.*missing keys"):
        build_deeplabv3(K, MEAN, STD, backbone="resnet50", backbone_weights=str(tmp_path / "r18.pth"))
    with pytest.raises(ConfigError, match="both set"):
        build_deeplabv3(K, MEAN, STD, weights=str(tmp_path / "x.pth"), backbone_weights=str(tmp_path / "mnv3.pth"))
    with pytest.raises(ConfigError, match="model.backbone 'vgg16' is unknown"):
        build_deeplabv3(K, MEAN, STD, backbone="vgg16")


@pytest.mark.parametrize("build", [build_lraspp_mobilenet_v3, build_deeplabv3])
def test_the_new_head_starts_at_the_background_prior_in_both_modes(build):
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 64, 48) * 255
    multi, binary = build(K, MEAN, STD).eval(), build(K, MEAN, STD, binary=True, background_prior=0.3).eval()
    with torch.no_grad():
        probs, foreground = multi(pixels).softmax(1), binary(pixels).sigmoid()
    assert probs.shape == (2, K + 1, 64, 48) and foreground.shape == (2, 1, 64, 48)
    assert probs[:, 0].mean().item() == pytest.approx(BACKGROUND_PRIOR, abs=0.03)
    assert foreground.mean().item() == pytest.approx(0.7, abs=0.03)


def test_loss_falls_on_one_tiny_batch(tiny_prepared):
    images = to_model_input(np.asarray(load_array(tiny_prepared, "train", "images"))[:4])
    target = torch.from_numpy(np.array(load_array(tiny_prepared, "train", "semantic")[:4])).long()
    torch.manual_seed(0)
    model = build_lraspp_mobilenet_v3(K, MEAN, STD)
    criterion = SegmentationLoss(num_classes=K)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        losses = criterion(model(images), target)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.7 * history[0], history
