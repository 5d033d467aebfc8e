"""BatchAugment: images, boxes, instance masks and semantic masks move together; exact identity; seeded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from cvpipe.data.batch_augment import (AugmentParams, BatchAugment, affine_matrices, elastic_displacement,
                                     sampling_grid, transform_boxes)

GEOMETRY_ONLY = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
IDENTITY = dict(hflip=0.0, vflip=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0), **GEOMETRY_ONLY)


def _rectangles(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Black uint8 images [B, H, W, 3] with one white filled rectangle each, and its box [B, 4] xyxy px."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randint(4, size // 2, (batch, 2), generator=gen)
    hi = lo + torch.randint(10, size // 2 - 4, (batch, 2), generator=gen)
    images = torch.zeros(batch, size, size, 3, dtype=torch.uint8)
    for i in range(batch):
        images[i, lo[i, 1]:hi[i, 1], lo[i, 0]:hi[i, 0]] = 255
    return images, torch.cat([lo, hi], 1).float()


def _extent(mask: torch.Tensor) -> torch.Tensor:
    """Pixel extent of a boolean [H, W] mask as a xyxy box (columns x0 .. x1 - 1 inside)."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()


@pytest.mark.parametrize("degrees", [0.0, 15.0])
def test_filled_rectangle_stays_inside_its_moved_box(degrees: float) -> None:
    images, boxes = _rectangles(16, 64, seed=0)
    targets = [{"boxes": b.view(1, 4), "labels": torch.tensor([i])} for i, b in enumerate(boxes)]
    aug = BatchAugment(degrees=degrees, translate=(0.2, 0.2), scale=(0.7, 1.3), **GEOMETRY_ONLY)
    out = aug(images, targets, generator=torch.Generator().manual_seed(1))
    checked = 0
    for i, target in enumerate(out.targets):
        white = out.images[i, 0] > 200  # fill is 114, background 0
        if len(target["boxes"]) == 0:  # dropped: at most a sliver of the rectangle is left
            assert white.sum() <= 2 * 64
            continue
        assert torch.equal(target["labels"], torch.tensor([i]))
        assert torch.allclose(_extent(white), target["boxes"][0], atol=1.5), (i, _extent(white), target["boxes"])
        checked += 1
    assert checked >= 12


def test_instance_mask_semantic_mask_and_box_move_together() -> None:
    images, boxes = _rectangles(8, 64, seed=2)
    masks = (images[..., 0] > 0).to(torch.uint8)  # [B, H, W], one instance per image
    semantic = masks.long() * 3  # class 3 inside, background 0
    targets = [{"boxes": boxes[i].view(1, 4), "labels": torch.tensor([3]), "masks": masks[i:i + 1],
                "has_mask": torch.tensor([True])} for i in range(8)]
    params = BatchAugment(**GEOMETRY_ONLY).draw(8, 64, 64, torch.Generator().manual_seed(3))
    params = AugmentParams(**{**params.__dict__, "scale": torch.full((8,), 0.8)})  # border exposed everywhere
    out = BatchAugment(**GEOMETRY_ONLY)(images, targets, semantic=semantic, params=params)
    for i, target in enumerate(out.targets):
        assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"]) == len(target["has_mask"]) == 1
        warped = target["masks"][0].bool()
        assert torch.equal(warped, out.images[i, 0] > 200)  # same grid, same pixels
        assert torch.allclose(_extent(warped), target["boxes"][0], atol=1.5)
        assert torch.equal(out.semantic[i] == 3, warped)
        assert (out.semantic[i] == 255).any()  # outside the source image: ignore
        assert set(out.semantic[i].unique().tolist()) <= {0, 3, 255}
        border = out.semantic[i] == 255
        assert (out.images[i][:, border] == 114).all()  # letterbox grey where the image is exposed


def test_identity_parameters_give_the_input_back_exactly() -> None:
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (4, 32, 48, 3), dtype=torch.uint8, generator=gen)
    boxes = torch.tensor([[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, 48.0, 32.0]])
    masks = torch.randint(0, 2, (2, 32, 48), dtype=torch.uint8, generator=gen)
    semantic = torch.randint(0, 5, (4, 32, 48), generator=gen)
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}] * 4
    for interpolation in ("nearest", "bilinear"):
        aug = BatchAugment(interpolation=interpolation, **IDENTITY)
        for layout in (images, images.permute(0, 3, 1, 2).contiguous()):
            out = aug(layout, targets, semantic=semantic, generator=gen)
            assert torch.equal(out.images, images.permute(0, 3, 1, 2))
            assert torch.equal(out.semantic, semantic)
            for target in out.targets:
                assert torch.equal(target["boxes"], boxes) and torch.equal(target["masks"], masks)
                assert torch.equal(target["labels"], torch.tensor([1, 2]))


def test_horizontal_flip_by_hand_and_scale_translate_as_torchvision() -> None:
    images = torch.randint(0, 256, (1, 3, 16, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    params = AugmentParams.identity(1)
    flipped = AugmentParams(**{**params.__dict__, "hflip": torch.ones(1)})
    out = BatchAugment(**IDENTITY)(images, boxes=torch.tensor([[[2.0, 3.0, 7.0, 9.0]]]),
                                   valid=torch.ones(1, 1, dtype=torch.bool), params=flipped)
    assert torch.equal(out.images, images.flip(-1))
    assert torch.equal(out.boxes, torch.tensor([[[13.0, 3.0, 18.0, 9.0]]]))  # x -> W - x, ends swapped

    moved = AugmentParams(**{**params.__dict__, "scale": torch.tensor([1.1]), "tx": torch.tensor([5.0]),
                             "ty": torch.tensor([-3.0])})
    forward, _ = affine_matrices(moved, 64, 64)
    box = torch.tensor([[10.0, 12.0, 30.0, 40.0]])
    ours, _ = transform_boxes(box.view(1, 1, 4), forward[:, None], 64, 64, min_size=2.0)
    theirs = TF.affine(tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(64, 64)), angle=0.0,
                       translate=[5.0, -3.0], scale=1.1, shear=[0.0, 0.0])
    assert torch.allclose(ours.view(1, 4), theirs.as_subclass(torch.Tensor), atol=0.5)


def test_sampling_grid_matches_affine_grid() -> None:
    params = BatchAugment(degrees=20.0).draw(6, 24, 40, torch.Generator().manual_seed(6))
    _, theta = affine_matrices(params, 24, 40)
    expected = F.affine_grid(theta, [6, 3, 24, 40], align_corners=False)
    assert torch.allclose(sampling_grid(theta, 24, 40), expected, atol=1e-5)


def test_same_seed_same_output_different_seed_different() -> None:
    images, boxes = _rectangles(8, 48, seed=7)
    targets = [{"boxes": b.view(1, 4), "labels": torch.tensor([0])} for b in boxes]
    aug = BatchAugment(degrees=10.0)
    first, again, other = (aug(images, targets, generator=torch.Generator().manual_seed(s)) for s in (11, 11, 12))
    assert torch.equal(first.images, again.images) and torch.equal(first.matrices, again.matrices)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(first.targets, again.targets))
    assert not torch.equal(first.images, other.images)
    assert not torch.equal(first.matrices, other.matrices)


def test_boxes_pushed_outside_are_dropped_with_their_labels() -> None:
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    boxes = torch.tensor([[2.0, 10.0, 20.0, 30.0], [50.0, 10.0, 62.0, 30.0], [30.0, 40.0, 40.0, 50.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([4, 5, 6]), "has_mask": torch.tensor([True, True, False])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # an empty image too
    shift = AugmentParams(**{**AugmentParams.identity(2).__dict__, "tx": torch.tensor([30.0, 30.0])})
    out = BatchAugment(**IDENTITY)(images, targets, params=shift)
    kept = out.targets[0]
    assert torch.equal(kept["labels"], torch.tensor([4, 6])) and torch.equal(kept["has_mask"], torch.tensor([True, False]))
    assert torch.equal(kept["boxes"], torch.tensor([[32.0, 10.0, 50.0, 30.0], [60.0, 40.0, 64.0, 50.0]]))  # clipped
    assert out.targets[1]["boxes"].shape == (0, 4) and len(out.targets[1]["labels"]) == 0

    padded = BatchAugment(**IDENTITY)(images, boxes=boxes.expand(2, 3, 4), valid=torch.tensor([[1, 1, 1], [1, 0, 1]]).bool(),
                                      params=shift)
    assert torch.equal(padded.valid, torch.tensor([[True, False, True], [True, False, True]]))


def test_full_size_batch_runs_in_both_output_types() -> None:
    gen = torch.Generator().manual_seed(8)
    images = torch.randint(0, 256, (64, 3, 128, 128), dtype=torch.uint8, generator=gen)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])}] * 64
    out = BatchAugment()(images, targets, generator=gen)
    assert out.images.shape == (64, 3, 128, 128) and out.images.dtype == torch.uint8
    assert len(out.targets) == 64 and out.matrices.shape == (64, 2, 3)
    as_float = BatchAugment(out_dtype=torch.float32)(images, generator=torch.Generator().manual_seed(9))
    assert as_float.images.dtype == torch.float32 and 0 <= as_float.images.min() and as_float.images.max() <= 255
    assert not torch.equal(out.images, images)  # colour jitter and geometry did something


def test_bad_input_fails_loudly() -> None:
    with pytest.raises(ValueError, match="images must be"):
        BatchAugment()(torch.zeros(2, 5, 8, 8, dtype=torch.uint8), generator=torch.Generator())
    with pytest.raises(ValueError, match="Generator"):
        BatchAugment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="valid mask"):
        BatchAugment()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), boxes=torch.zeros(1, 2, 4),
                       generator=torch.Generator())


@pytest.mark.parametrize("arch", ["small_resnet", "yolo", "unet", "yolact"])
def test_every_task_trains_with_batched_augmentation_deterministically(arch, tiny_prepared, tmp_path):
    """train.augment: batched runs through the engine for one model of each task (boxes, instance masks and
    label maps moved with the images on the device), learns on the tiny set, and the same seed gives the same
    curve."""
    from cvpipe import engine
    from cvpipe.device import resolve_runtime
    from cvpipe.registry import ARCHITECTURES
    from tests.conftest import model_config
    from tests.test_task_contract import TINY

    section = {"task": ARCHITECTURES[arch].task,
               "train": {"arch": arch, "epochs": 3, "batch_size": 8, "augment": "batched", **TINY[arch]}}
    config = model_config(section, arch)
    curves = []
    for attempt in range(2):
        rows: list[dict] = []
        engine.train(config, prepared=tiny_prepared, model_dir=tmp_path / f"m{attempt}",
                     report_dir=tmp_path / f"r{attempt}", runtime=resolve_runtime("cpu"), seed=0,
                     on_epoch_end=lambda epoch, row: rows.append(row))
        curves.append([row["train_loss"] for row in rows])
    assert curves[0] == curves[1]
    assert curves[0][-1] < curves[0][0]



# -- elastic deformation (label maps only) ---------------------------------------------------------------------------

def _checkerboard(batch: int, size: int, cell: int) -> torch.Tensor:
    """int64 label maps [B, size, size]: a checkerboard of classes 1 and 2 in ``cell`` px squares."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (1 + ((ys // cell + xs // cell) % 2)).expand(batch, size, size).clone()


def test_elastic_with_zero_displacements_is_the_affine_path_exactly() -> None:
    """A zero coarse field (elastic_std 0 in effect) gives exactly the output without elastic deformation."""
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(20))
    labels = _checkerboard(3, 40, 5)
    aug = BatchAugment(**GEOMETRY_ONLY)
    params = aug.draw(3, 40, 40, torch.Generator().manual_seed(21))
    flat = AugmentParams(**{**params.__dict__, "elastic": torch.zeros(3, 2, 3, 3)})
    plain, zero = aug(images, semantic=labels, params=params), aug(images, semantic=labels, params=flat)
    assert torch.equal(plain.images, zero.images) and torch.equal(plain.semantic, zero.semantic)
    assert torch.equal(elastic_displacement(torch.zeros(2, 2, 3, 3), 16, 24), torch.zeros(2, 2, 16, 24))
    assert BatchAugment(elastic_std=0.0).draw(2, 8, 8, torch.Generator()).elastic is None  # off: nothing drawn


def test_elastic_field_is_smooth_and_hits_the_coarse_points() -> None:
    """The dense field passes through the coarse displacements at the corners and centre (align_corners), in
    normalised units 2 · fraction, and varies slowly between them."""
    coarse = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(22)) * 0.05
    dense = elastic_displacement(coarse, 33, 33)
    for (i, j), (r, c) in {(0, 0): (0, 0), (1, 1): (16, 16), (2, 2): (32, 32), (0, 2): (0, 32)}.items():
        assert torch.allclose(dense[0, :, r, c], 2 * coarse[0, :, i, j], atol=1e-6)
    assert dense.diff(dim=-1).abs().max() < 4 * 0.05 * 2 * 3 / 32  # no jumps: a few coarse steps over 32 px


def test_elastic_moves_images_and_label_maps_together() -> None:
    """An image channel equal to the label map (×100) goes through the same warp as the label map (both nearest):
    the warped channel is the warped map wherever the map is not ignore; ignore (255) only where the source is off
    the image, and only the labels of the input appear."""
    labels = _checkerboard(6, 48, 6)
    images = (labels * 100).to(torch.uint8)[:, None].expand(6, 3, 48, 48).contiguous()
    aug = BatchAugment(scale=(0.9, 1.1), elastic_std=0.06, **GEOMETRY_ONLY)
    out = aug(images, semantic=labels, generator=torch.Generator().manual_seed(23))
    assert set(out.semantic.unique().tolist()) <= {1, 2, 255}
    inside = out.semantic != 255
    assert torch.equal(out.images[:, 0][inside].long(), out.semantic[inside] * 100)
    assert (out.images[:, 0][~inside] == 114).all()  # the letterbox grey where the border is exposed
    plain = BatchAugment(scale=(0.9, 1.1), **GEOMETRY_ONLY)(images, semantic=labels,
                                                           generator=torch.Generator().manual_seed(23))
    assert not torch.equal(out.semantic, plain.semantic)  # the field did move pixels


def test_elastic_is_seeded_and_bilinear_images_stay_in_range() -> None:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(24))
    labels = _checkerboard(4, 32, 4)
    aug = BatchAugment(elastic_std=0.05, elastic_grid=4, interpolation="bilinear", out_dtype=torch.float32)
    first, again, other = (aug(images, semantic=labels, generator=torch.Generator().manual_seed(s))
                           for s in (25, 25, 26))
    assert torch.equal(first.images, again.images) and torch.equal(first.semantic, again.semantic)
    assert not torch.equal(first.semantic, other.semantic)
    assert 0 <= first.images.min() and first.images.max() <= 255
    # the affine and colour draws are those of the same seed without elastic: the field is drawn after them
    plain = BatchAugment().draw(4, 32, 32, torch.Generator().manual_seed(25))
    drawn = aug.draw(4, 32, 32, torch.Generator().manual_seed(25))
    assert torch.equal(plain.scale, drawn.scale) and drawn.elastic.shape == (4, 2, 4, 4)


def test_elastic_refuses_boxes() -> None:
    aug = BatchAugment(elastic_std=0.02)
    with pytest.raises(ValueError, match="label maps only"):
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), [{"boxes": torch.zeros(0, 4)}], generator=torch.Generator())
    with pytest.raises(ValueError, match="elastic_std"):
        BatchAugment(elastic_std=-0.1)


def test_elastic_is_a_segmentation_key_that_needs_batched_augmentation() -> None:
    from cvpipe.errors import ConfigError
    from tests.conftest import model_config

    config = model_config({"task": "segmentation", "train": {"arch": "unet", "augment": "batched",
                                                             "elastic": {"std": 0.02}}})
    assert (config.train.elastic.std, config.train.elastic.grid) == (0.02, 3)
    with pytest.raises(ConfigError, match="needs train.augment: batched"):
        model_config({"task": "segmentation", "train": {"arch": "unet", "elastic": {"std": 0.02}}})
    with pytest.raises(ConfigError, match=r"models\.m\.train\.elastic"):  # boxes cannot follow it: no such key
        model_config({"task": "detection", "train": {"arch": "yolo", "augment": "batched", "elastic": {}}})
