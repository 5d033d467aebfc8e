"""torchvision's one-stage detectors as cvpipe architectures (retinanet, fcos, ssdlite320, ssd300_vgg16): files saved
from torchvision's own constructors load strictly with a new class head, wrong files are named, dense decoding
gives torchvision's own detections after NMS, the criteria equal torchvision's losses, empty images give zero box
loss, and a tiny batch is learnt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import detection, resnet50
from torchvision.models.detection._utils import SSDMatcher
from torchvision.ops import batched_nms, box_iou

from cvpipe import engine
from cvpipe.errors import ConfigError
from cvpipe.losses.fcos import FCOSLoss
from cvpipe.losses.retinanet import RetinaNetLoss
from cvpipe.losses.ssd import SSDMultiBoxLoss
from cvpipe.models.zoo_fpn import build_fcos, build_retinanet
from cvpipe.models.zoo_ssd import ZooSSD, build_ssd300_vgg16, build_ssdlite320
from cvpipe.registry import get_task
from tests.conftest import model_config, overfit, resaved_state_dict

MEAN, STD = [0.5] * 3, [0.2] * 3  # the train split's statistics: accepted, not used by zoo models
K = 3  # the user's classes
COCO = 91  # outputs of torchvision's COCO detectors
ZOO = {  # arch → (torchvision constructor, our builder, classes of the torchvision head for K user classes)
    "retinanet": (detection.retinanet_resnet50_fpn_v2, build_retinanet, K),
    "fcos": (detection.fcos_resnet50_fpn, build_fcos, K),
    "ssdlite320": (detection.ssdlite320_mobilenet_v3_large, build_ssdlite320, K + 1),
    "ssd300_vgg16": (detection.ssd300_vgg16, build_ssd300_vgg16, K + 1),
}
TARGETS = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [34.0, 20.0, 60.0, 58.0]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1])}]
EMPTY = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2


def _torchvision(arch: str, num_classes: int, **kwargs) -> torch.nn.Module:
    """torchvision's own detector (random init, seeded) with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    net = ZOO[arch][0](weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory) -> dict[str, Path]:
    """Per arch, ``torch.save(constructor(weights=None, weights_backbone=None).state_dict())`` with COCO's 91 classes,
    the layout of torchvision's COCO files."""
    folder = tmp_path_factory.mktemp("zoo")
    files = {}
    for arch in ZOO:
        files[arch] = folder / f"{arch}.pth"
        torch.save(_torchvision(arch, COCO).state_dict(), files[arch])
    return files


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_a_coco_file_loads_with_a_class_head_for_our_classes(arch, coco_files):
    model = ZOO[arch][1](K, MEAN, STD, weights=str(coco_files[arch]))
    file = torch.load(coco_files[arch], weights_only=True)
    head = model.class_head
    loaded = {k: v for k, v in model.state_dict().items() if not k.startswith((*head, "normalize."))}
    assert set(loaded) == {k for k in file if not k.startswith(head)}
    assert all(torch.equal(v, file[k]) for k, v in loaded.items())
    classes = ZOO[arch][2]  # K, or K + 1 with SSD's background column
    class_weights = [k for k in model.state_dict() if k.startswith(head) and k.endswith("weight")]
    assert class_weights
    for key in class_weights:
        per_location = file[key].shape[0] // COCO  # default boxes (anchors) per location of the level
        assert model.state_dict()[key].shape[0] == per_location * classes
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        boxes, scores = model.decode(model.eval()(images))
    assert scores.shape[-1] == K and boxes.shape[:2] == scores.shape[:2]


def test_a_file_without_batchnorm_counters_loads(coco_files, tmp_path):
    """torchvision's FrozenBatchNorm2d detectors (FCOS's COCO file) store no num_batches_tracked."""
    path = resaved_state_dict(tmp_path, coco_files["fcos"],
                    lambda s: [s.pop(k) for k in [k for k in s if k.endswith("num_batches_tracked")]])
    model = build_fcos(K, MEAN, STD, weights=path)
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"],
                       torch.load(path, weights_only=True)["backbone.body.conv1.weight"])


def test_missing_misshaped_and_foreign_keys_are_named(coco_files, tmp_path):
    key = "backbone.fpn.layer_blocks.0.0.weight"
    with pytest.raises(ConfigError, match=rf"model\.weights \(retinanet\).*missing keys.*{key}"):
        build_retinanet(K, MEAN, STD,
                        weights=resaved_state_dict(tmp_path, coco_files["retinanet"], lambda s: s.pop(key)))
    with pytest.raises(ConfigError, match=rf"shape mismatches.*{key} \(1, 2\)"):
        build_retinanet(K, MEAN, STD, weights=resaved_state_dict(tmp_path, coco_files["retinanet"],
                                                                 lambda s: s.__setitem__(key, torch.zeros(1, 2))))
    with pytest.raises(ConfigError, match=r"fcos\.pth.*missing keys.*unexpected keys.*shape mismatches.*"
                                          r"backbone\.fpn\.extra_blocks\.p6\.weight"):
        build_retinanet(K, MEAN, STD, weights=str(coco_files["fcos"]))  # an FCOS file is not a RetinaNet
    with pytest.raises(ConfigError, match="pretrained weights not found"):
        build_ssdlite320(K, MEAN, STD, weights=str(tmp_path / "nowhere.pth"))


def test_a_trained_model_is_rebuilt_without_its_starting_file(tmp_path):
    """model.pt carries the trained weights: evaluate/export rebuild the architecture without reading model.weights."""
    gone = tmp_path / "moved_away.pth"
    config = model_config({"task": "detection", "train": {"arch": "ssdlite320", "model": {"weights": str(gone)}}},
                          "zoo")
    meta = {"class_names": ["a", "b", "c"], "mean": MEAN, "std": STD}
    assert engine.build(get_task("detection"), config, meta, pretrained=False).num_classes == K
    with pytest.raises(ConfigError, match="moved_away.pth"):
        engine.build(get_task("detection"), config, meta)


def test_backbone_weights_and_frozen_layers(tmp_path):
    torch.manual_seed(1)
    imagenet = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), imagenet)
    model = build_retinanet(K, MEAN, STD, backbone_weights=str(imagenet), trainable_backbone_layers=2).train()
    body = model.backbone.body
    assert torch.equal(body.layer2[0].conv1.weight, torch.load(imagenet, weights_only=True)["layer2.0.conv1.weight"])
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert {name for name in trainable if "bn" not in name} <= {"layer3", "layer4"} and "layer4" in trainable
    norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training and not m.weight.requires_grad for m in norms)  # FrozenBatchNorm2d's rule
    assert model.head.training and all(p.requires_grad for p in model.backbone.fpn.parameters())
    with pytest.raises(ConfigError, match="both set"):
        build_fcos(K, MEAN, STD, weights=str(imagenet), backbone_weights=str(imagenet))
    with pytest.raises(ConfigError, match="trainable_backbone_layers of retinanet must be in 0..5"):
        build_retinanet(K, MEAN, STD, trainable_backbone_layers=6)
    with pytest.raises(ConfigError, match="not an option of ssdlite320"):
        ZooSSD("ssdlite320", num_classes=K, trainable_backbone_layers=2)


def _calibrate_batchnorm(net: torch.nn.Module, side: int) -> None:
    """BatchNorm statistics of one batch of normalised noise: random statistics can make deep features constant
    across locations, and then equal scores make NMS keep either of two boxes."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics
    if norms:
        net.train()
        with torch.no_grad():
            net.head(list(net.backbone(torch.randn(4, 3, side, side)).values()))
    net.eval()


def _dense_to_detections(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, iou: float,
                         label_offset: int) -> dict[str, torch.Tensor]:
    """One image's dense candidates [A, 4], [A, K] → scores above ``threshold``, class-wise NMS, by score."""
    flat = scores.flatten()  # anchor-major: a · K + k
    keep = torch.nonzero(flat > threshold).squeeze(1)
    anchor, label = keep // scores.shape[1], keep % scores.shape[1]
    order = batched_nms(boxes[anchor], flat[keep], label, iou)
    return {"boxes": boxes[anchor][order], "scores": flat[keep][order], "labels": label[order] + label_offset}


def _paired(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> torch.Tensor:
    """For each of ``ours``, the index of the nearest detection of ``theirs`` by box (L1, px), score and label.
    NMS may order equal scores either way, so detections are paired, not compared by rank; clipping leaves some
    boxes without area, so not by IoU either."""
    distance = (torch.cdist(ours["boxes"], theirs["boxes"], p=1)
                + 100 * (ours["scores"][:, None] - theirs["scores"][None, :]).abs()
                + 1e6 * (ours["labels"][:, None] != theirs["labels"][None, :]))
    best = distance.min(dim=1)
    assert float(best.values.max()) < 0.1 and len(best.indices.unique()) == len(best.indices)
    return best.indices


@pytest.mark.parametrize("arch, side, threshold", [("retinanet", 64, 0.05), ("fcos", 64, 0.2),
                                                   ("ssdlite320", 320, 0.01), ("ssd300_vgg16", 150, 0.01)])
def test_decoding_then_nms_gives_torchvisions_detections(arch, side, threshold):
    """Same weights, same image (already at the model's size; ssd300_vgg16 on a 150 px image: both resize to
    300 and scale boxes back): our dense boxes/scores + batched NMS = torchvision's eval-mode output."""
    ssd = arch.startswith("ssd")
    kwargs = {} if ssd else {"min_size": side, "max_size": side}  # torchvision's resize becomes the identity
    net = _torchvision(arch, ZOO[arch][2], **kwargs)
    _calibrate_batchnorm(net, side)
    model = ZOO[arch][1](K, MEAN, STD).eval()
    if not ssd:  # spread RetinaNet's/FCOS's scores (N(0, 0.01²) weights put all of them near the prior)
        torch.nn.init.normal_(net.head.classification_head.cls_logits.weight, std=0.05)
    net.score_thresh, net.topk_candidates, net.detections_per_img = threshold, 10**6, 10**6
    missing, unexpected = model.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"normalize.mean", "normalize.std"}
    torch.manual_seed(2)
    image = torch.rand(1, 3, side, side) * 255
    with torch.no_grad():
        expected = net([image[0] / 255])[0]
        boxes, scores = model.decode(model(image))
    ours = _dense_to_detections(boxes[0], scores[0], threshold, net.nms_thresh, label_offset=int(ssd))
    assert len(expected["scores"]) > 5 and len(ours["scores"]) == len(expected["scores"])
    pair = _paired(ours, expected)
    torch.testing.assert_close(ours["scores"], expected["scores"][pair], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["boxes"], expected["boxes"][pair], atol=2e-2, rtol=1e-4)


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "ssdlite320"])
def test_losses_equal_torchvisions_on_the_same_outputs(arch):
    torch.manual_seed(3)
    model = ZOO[arch][1](K, MEAN, STD).train()
    outputs = model(torch.rand(2, 3, 64, 64) * 255)
    net = ZOO[arch][0](weights=None, weights_backbone=None, num_classes=ZOO[arch][2])
    if arch == "retinanet":
        ours = RetinaNetLoss(num_classes=K)(outputs, TARGETS)
        theirs = net.compute_loss(TARGETS, outputs, [outputs["anchors"]] * 2)
        pairs = [("loss_cls", "classification"), ("loss_box", "bbox_regression")]
    elif arch == "fcos":
        ours = FCOSLoss(num_classes=K)(outputs, TARGETS)
        theirs = net.compute_loss(TARGETS, outputs, [outputs["anchors"]] * 2, outputs["num_anchors_per_level"].tolist())
        pairs = [("loss_cls", "classification"), ("loss_box", "bbox_regression"), ("loss_ctrness", "bbox_ctrness")]
    else:  # torchvision's SSD takes labels with the background at 0 and its own matches
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in TARGETS]
        matches = [SSDMatcher(0.5)(box_iou(t["boxes"], outputs["default_boxes"])) for t in TARGETS]
        ours = SSDMultiBoxLoss()(outputs, TARGETS)
        theirs = net.compute_loss(shifted, outputs, [outputs["default_boxes"]] * 2, matches)
        pairs = [("loss_conf", "classification"), ("loss_loc", "bbox_regression")]
    for mine, torchvisions in pairs:
        torch.testing.assert_close(ours[mine], theirs[torchvisions], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch, criterion, box_terms", [
    ("retinanet", RetinaNetLoss(num_classes=K), ("loss_box",)),
    ("fcos", FCOSLoss(num_classes=K), ("loss_box", "loss_ctrness")),
    ("ssdlite320", SSDMultiBoxLoss(), ("loss_loc",))])
def test_images_without_boxes_give_zero_box_loss(arch, criterion, box_terms):
    model = ZOO[arch][1](K, MEAN, STD).train()
    terms = criterion(model(torch.rand(2, 3, 64, 64) * 255), EMPTY)
    assert all(terms[name].item() == 0.0 for name in box_terms) and torch.isfinite(terms["loss"])
    terms["loss"].backward()  # still a graph: the class term pushes every anchor to background


def test_bad_targets_are_named():
    model = build_retinanet(K, MEAN, STD).train()
    outputs = model(torch.rand(2, 3, 64, 64) * 255)
    bad_label = [TARGETS[0], {"boxes": TARGETS[1]["boxes"], "labels": torch.tensor([K])}]
    with pytest.raises(ValueError, match=f"target 1: label {K} at index 0 outside 0..{K - 1}"):
        RetinaNetLoss(num_classes=K)(outputs, bad_label)
    flat_box = [TARGETS[0], {"boxes": torch.tensor([[10.0, 10.0, 10.0, 30.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(ValueError, match="target 1: box .* index 0 has non-positive width"):
        RetinaNetLoss(num_classes=K)(outputs, flat_box)
    with pytest.raises(ValueError, match="1 targets for a batch of 2 images"):
        RetinaNetLoss(num_classes=K)(outputs, TARGETS[:1])


@pytest.mark.parametrize("arch, criterion, steps, lr", [
    ("retinanet", RetinaNetLoss(num_classes=K), 4, 1e-4),
    ("fcos", FCOSLoss(num_classes=K), 4, 1e-4),
    ("ssdlite320", SSDMultiBoxLoss(), 20, 3e-3)])
def test_loss_falls_on_one_tiny_batch(arch, criterion, steps, lr, coco_files):
    torch.manual_seed(4)
    model = ZOO[arch][1](K, MEAN, STD, weights=str(coco_files[arch])).train()
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        before = criterion(model(images), TARGETS)["loss"].item()
    overfit(model, criterion, images, TARGETS, steps=steps, lr=lr)
    with torch.no_grad():
        after = criterion(model.train()(images), TARGETS)["loss"].item()
    assert after < 0.8 * before
