"""Pretrained starts: each torchvision backbone family in each architecture that takes one, built through params
(``models.<m>.train.model: {backbone, backbone_weights}``) from state dicts saved offline from the torchvision
constructors, the layout check on a wrong file, and the lower backbone learning rate."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import models

from cvpipe import engine
from cvpipe.errors import ConfigError
from cvpipe.models.backbones import BACKBONES, IMAGENET_MEAN, IMAGENET_STD
from cvpipe.registry import ARCHITECTURES, get_task
from cvpipe.training.loop import adamw_one_cycle
from tests.conftest import model_config, run_model_stages

META = {"class_names": ["a", "b", "c"], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
# the smallest settings of each architecture that takes a backbone, and its input side (the classifier: crops)
TINY = {
    "small_resnet": {"model": {"width": 8}},
    "yolo": {"model": {"width": 8, "strides": [8, 16]}},
    "yolact": {"model": {"width": 8, "num_prototypes": 4}},
    "ssd": {"model": {"width": 8}},
    "detr": {"model": {"d_model": 32, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 2,
                       "dim_feedforward": 64, "num_queries": 5}, "nms_iou": None},
    "unet": {"model": {"base_channels": 8, "depth": 3}},
}
SIZE = {"small_resnet": 32}  # others: 64 px scenes


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    """One torchvision state dict per backbone family, as ``torch.save(constructor().state_dict())`` writes it."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for name, constructor in BACKBONES.items():
        torch.manual_seed(123)  # not the model's own init: loaded tensors are told apart from fresh ones
        files[name] = str(folder / f"{name}.pth")
        torch.save(constructor(weights=None).state_dict(), files[name])
    return files


def _config(arch: str, model: dict, tune: dict | None = None, **train):
    """A typed models.<arch> section: TINY's settings plus ``model`` (builder kwargs) and ``train`` fields."""
    tiny = TINY[arch]
    section = {"task": ARCHITECTURES[arch].task,
               "train": {"arch": arch, **{k: v for k, v in tiny.items() if k != "model"}, **train,
                         "model": {**tiny["model"], **model}}, "tune": tune or {}}
    return model_config(section, arch)


def _build(config) -> torch.nn.Module:
    """As the train stage builds it: engine.build → cvpipe.build.build_model with the params' model kwargs."""
    return engine.build(get_task(config.task), config, META)


def _outputs(model: torch.nn.Module, arch: str) -> dict[str, tuple[int, ...]]:
    """The shapes of the model's outputs (and of its decoded detections) on two random images."""
    size = SIZE.get(arch, 64)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, size, size) * 255)
        if not isinstance(out, dict):
            return {"out": tuple(out.shape)}
        shapes = {k: tuple(v.shape) for k, v in out.items()}
        if hasattr(model, "decode"):
            boxes, scores = model.decode(out)
            shapes.update(boxes=tuple(boxes.shape), scores=tuple(scores.shape))
        return shapes


@functools.cache
def _builtin_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    return _outputs(_build(_config(arch, {})), arch)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("arch", sorted(TINY))
def test_backbone_weights_are_loaded_and_the_outputs_keep_their_shapes(arch, backbone, weight_files):
    model = _build(_config(arch, {"backbone": backbone, "backbone_weights": weight_files[backbone]}))
    saved = torch.load(weight_files[backbone], weights_only=True)
    loaded = model.backbone.state_dict()
    # really loaded: every backbone tensor is the file's (same torchvision key), the head (fc / classifier) ignored
    assert len(loaded) > 50 and all(torch.equal(v, saved[k]) for k, v in loaded.items())
    assert not any(k.startswith(("fc.", "classifier.")) for k in loaded)
    # ImageNet normalisation for a torchvision backbone (0..255 input, as before)
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN) * 255)
    assert torch.allclose(model.normalize.std.flatten(), torch.tensor(IMAGENET_STD) * 255)
    # the same outputs, shape for shape, as the built-in network with the same settings
    assert _outputs(model, arch) == _builtin_shapes(arch)


def test_expected_shapes_of_one_detector_and_the_unet(weight_files):
    yolo = _build(_config("yolo", {"backbone": "resnet18", "backbone_weights": weight_files["resnet18"]}))
    assert _outputs(yolo, "yolo")["cls_logits"] == (2, 8 * 8 + 4 * 4, 3)  # strides 8 and 16 at 64 px, K = 3
    unet = _build(_config("unet", {"backbone": "mobilenet_v3_large"}))
    with torch.no_grad():
        assert unet.eval()(torch.rand(1, 3, 50, 70) * 255).shape == (1, 4, 50, 70)  # sizes not multiples of 8


@pytest.mark.parametrize("backbone, wrong, problem", [
    ("resnet18", "resnet34", r"unexpected keys \(\d+\): \['layer1.2"),  # deeper network: extra blocks
    ("resnet34", "resnet18", r"missing keys \(\d+\): \['layer1.2"),
    ("resnet18", "resnet50", "shape mismatches"),
    ("mobilenet_v3_large", "mobilenet_v3_small", "shape mismatches"),
])
def test_a_file_of_another_layout_is_a_config_error_naming_the_file(backbone, wrong, problem, weight_files):
    config = _config("small_resnet", {"backbone": backbone, "backbone_weights": weight_files[wrong]})
    with pytest.raises(ConfigError, match=problem) as error:
        _build(config)
    assert weight_files[wrong] in str(error.value) and backbone in str(error.value)


def test_misconfigured_backbones_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs model.backbone"):
        _build(_config("yolo", {"backbone_weights": "w.pth"}))
    with pytest.raises(ConfigError, match="'resnet9' is unknown"):
        _build(_config("yolo", {"backbone": "resnet9"}))
    with pytest.raises(ConfigError, match="not found"):
        _build(_config("ssd", {"backbone": "resnet18", "backbone_weights": str(tmp_path / "absent.pth")}))
    for factor in (0.0, 1.5):
        with pytest.raises(ConfigError, match="backbone_lr_factor"):
            _config("yolo", {}, backbone_lr_factor=factor)


def test_backbone_lr_factor_gives_the_backbone_its_own_param_group():
    config = _config("detr", {"backbone": "mobilenet_v3_small"}, lr=0.01, backbone_lr_factor=0.1)
    model = _build(config)
    optimizer, scheduler = adamw_one_cycle(model, lr=config.train.lr, weight_decay=0.0, total_steps=10,
                                           pct_start=0.3, backbone_lr_factor=config.train.backbone_lr_factor)
    rest, backbone = optimizer.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert len(rest["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    assert rest["max_lr"] == pytest.approx(0.01) and backbone["max_lr"] == pytest.approx(0.001)
    assert backbone["lr"] == pytest.approx(rest["lr"] * 0.1)  # the same one-cycle shape, a tenth of the height
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert backbone["lr"] == pytest.approx(rest["lr"] * 0.1)
    # factor 1.0 (the default): one group over model.parameters(), as before the option existed
    optimizer, _ = adamw_one_cycle(model, lr=0.01, weight_decay=0.0, total_steps=10, pct_start=0.3)
    assert len(optimizer.param_groups) == 1
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    # the built-in networks have no backbone to slow down
    with pytest.raises(ConfigError, match="backbone_lr_factor"):
        adamw_one_cycle(_build(_config("detr", {})), lr=0.01, weight_decay=0.0, total_steps=10, pct_start=0.3,
                        backbone_lr_factor=0.1)


def test_a_detector_with_a_pretrained_resnet18_trains_and_exports(tiny_prepared, tmp_path, weight_files):
    config = _config("yolo", {"backbone": "resnet18", "backbone_weights": weight_files["resnet18"]},
                     tune={"score_thresholds": [0.05, 0.2], "nms_iou_thresholds": [0.5]},
                     epochs=1, batch_size=8, backbone_lr_factor=0.1)
    run = run_model_stages(config, tiny_prepared, tmp_path)
    assert len(run.epochs) == 1 and np.isfinite(run.epochs[0]["train_loss"])
    saved = torch.load(weight_files["resnet18"], weights_only=True)
    moved = tmp_path / "gone.pth"
    Path(weight_files["resnet18"]).rename(moved)  # the starting weights are not needed once trained
    try:
        trained = engine.load_trained(tmp_path / "m").model
    finally:
        moved.rename(weight_files["resnet18"])
    conv = trained.backbone.layer1[0].conv1.weight
    assert conv.shape == saved["layer1.0.conv1.weight"].shape and not torch.equal(conv, saved["layer1.0.conv1.weight"])
    assert json.loads((run.report_dir / "export.json").read_text())["parity_images"] == 4
