"""Detection samples over the prepared arrays; boxes (and instance masks) move with the image through
transforms.v2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvpipe.data.arrays import load_array
from cvpipe.data.instance_masks import InstanceMasks

Target = dict[str, torch.Tensor]


def _labels_and_mask_flags(inputs: Any) -> tuple[torch.Tensor, ...]:
    """SanitizeBoundingBoxes' labels_getter: drop "labels" and "has_mask" with their box (masks go by themselves)."""
    target = inputs[1]
    return tuple(target[k] for k in ("labels", "has_mask") if k in target)


def detection_augment() -> v2.Compose:
    """Flips, scale/translate jitter and colour jitter that keep boxes right (tv_tensors.BoundingBoxes) and
    instance masks right (tv_tensors.Mask) when the target has them.

    Boxes pushed (almost) out of the frame are clipped, then dropped by SanitizeBoundingBoxes with their
    labels, masks and mask flags; that is augmentation of a copy, the prepared ground truth is never changed.
    """
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.8, 1.2)),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.04),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2, labels_getter=_labels_and_mask_flags),
    ])


def batched_detection_augment() -> Callable[[torch.Tensor, list[Target]], tuple[torch.Tensor, list[Target]]]:
    """The batched counterpart of :func:`detection_augment` (same flips, translate/scale ranges and colour jitter,
    boxes clipped and dropped below 2 px with their labels and masks): (uint8 images [B, 3, H, W] on any device,
    targets there) → (float32 images 0..255, targets). One draw per image from torch's global CPU generator, which
    the training loop seeds per epoch, so CPU runs stay deterministic and resume sees the same draws."""
    from cvpipe.data.batch_augment import BatchAugment

    augment = BatchAugment(out_dtype=torch.float32)

    def apply(images: torch.Tensor, targets: list[Target]) -> tuple[torch.Tensor, list[Target]]:
        out = augment(images, targets, generator=torch.default_generator)
        return out.images, out.targets

    return apply


class DetectionDataset(Dataset):
    """item = (uint8 image [3, S, S], {"boxes": float32 [N, 4] xyxy abs px, "labels": int64 [N]}), plus
    "masks" uint8 [N, S, S] and "has_mask" bool [N] when built with instance masks (stored as RLE,
    :class:`~cvpipe.data.instance_masks.InstanceMasks`, decoded per item or per batch)."""

    def __init__(self, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, offsets: np.ndarray,
                 transform: Callable[..., Any] | None = None, masks: InstanceMasks | None = None) -> None:
        if len(offsets) != len(images) + 1:
            raise ValueError(f"{len(images)} images need {len(images) + 1} box offsets, got {len(offsets)}")
        if masks is not None and len(masks) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes need as many instance masks, got {len(masks)}")
        self.images, self.boxes, self.labels, self.offsets = images, boxes, labels, offsets
        self.masks = masks
        self.transform = transform

    @classmethod
    def from_prepared(cls, prepared_dir: str | Path, split: str, transform: Callable[..., Any] | None = None,
                      with_masks: bool = False) -> "DetectionDataset":
        arrays = [load_array(prepared_dir, split, n) for n in ("images", "boxes", "box_labels", "box_offsets")]
        if not with_masks:
            return cls(*arrays, transform=transform)
        masks = InstanceMasks.from_prepared(prepared_dir, split, arrays[0].shape[1])
        return cls(*arrays, transform=transform, masks=masks)

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> Target:
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        target = {"boxes": torch.from_numpy(np.array(self.boxes[lo:hi], np.float32)).reshape(-1, 4),
                  "labels": torch.from_numpy(np.array(self.labels[lo:hi], np.int64))}
        if self.masks is not None:
            target["masks"] = torch.from_numpy(self.masks.decode(np.arange(lo, hi)))
            target["has_mask"] = torch.from_numpy(np.array(self.masks.has_mask[lo:hi], bool))
        return target

    @property
    def image_array(self) -> np.ndarray:
        return self.images

    def batch_targets(self, indices: list[int]) -> list[Target]:
        """Untransformed targets of a batch, one dict per image (whole-batch fetching): every box row of the batch
        read with one gather per array, then split per image; equal to ``[self.target(i) for i in indices]``."""
        index = np.asarray(indices, dtype=np.int64)
        lo, counts = self.offsets[index], self.offsets[index + 1] - self.offsets[index]
        starts = np.cumsum(counts) - counts
        rows = np.arange(int(counts.sum())) + np.repeat(lo - starts, counts)  # box rows in batch order
        sizes = counts.tolist()
        fields = {"boxes": torch.from_numpy(np.asarray(self.boxes[rows], np.float32)).reshape(-1, 4).split(sizes),
                  "labels": torch.from_numpy(np.asarray(self.labels[rows], np.int64)).split(sizes)}
        if self.masks is not None:  # the batch's masks decoded from RLE in one call
            fields["masks"] = torch.from_numpy(self.masks.decode(rows)).split(sizes)
            fields["has_mask"] = torch.from_numpy(np.asarray(self.masks.has_mask[rows], bool)).split(sizes)
        return [{name: parts[i] for name, parts in fields.items()} for i in range(len(sizes))]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)  # [3, S, S] uint8
        target = self.target(index)
        if self.transform is None:
            return image, target
        size = tuple(image.shape[-2:])
        wrapped = {**target, "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=size)}
        if "masks" in target:
            wrapped["masks"] = tv_tensors.Mask(target["masks"])
        image, wrapped = self.transform(tv_tensors.Image(image), wrapped)
        plain = {k: v.as_subclass(torch.Tensor) if isinstance(v, tv_tensors.TVTensor) else v for k, v in wrapped.items()}
        plain["boxes"] = plain["boxes"].float()
        return image.as_subclass(torch.Tensor), plain


def collate_detection(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack images (same size after prepare); targets stay a list, one dict per image."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
