"""Detection samples over the prepared arrays; boxes move with the image through transforms.v2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvpipe.data.arrays import load_array

Target = dict[str, torch.Tensor]


def detection_augment() -> v2.Compose:
    """Flips, scale/translate jitter and colour jitter that keep boxes right (tv_tensors.BoundingBoxes).

    Boxes pushed (almost) out of the frame are clipped, then dropped by SanitizeBoundingBoxes with their
    labels; that is augmentation of a copy, the prepared ground truth is never changed.
    """
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.8, 1.2)),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.04),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2),
    ])


class DetectionDataset(Dataset):
    """item = (uint8 image [3, S, S], {"boxes": float32 [N, 4] xyxy abs px, "labels": int64 [N]})."""

    def __init__(self, images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, offsets: np.ndarray,
                 transform: Callable[..., Any] | None = None) -> None:
        if len(offsets) != len(images) + 1:
            raise ValueError(f"{len(images)} images need {len(images) + 1} box offsets, got {len(offsets)}")
        self.images, self.boxes, self.labels, self.offsets = images, boxes, labels, offsets
        self.transform = transform

    @classmethod
    def from_prepared(cls, prepared_dir: str | Path, split: str,
                      transform: Callable[..., Any] | None = None) -> "DetectionDataset":
        arrays = [load_array(prepared_dir, split, n) for n in ("images", "boxes", "box_labels", "box_offsets")]
        return cls(*arrays, transform=transform)

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> Target:
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        return {"boxes": torch.from_numpy(np.array(self.boxes[lo:hi], np.float32)).reshape(-1, 4),
                "labels": torch.from_numpy(np.array(self.labels[lo:hi], np.int64))}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)  # [3, S, S] uint8
        target = self.target(index)
        if self.transform is None:
            return image, target
        size = tuple(image.shape[-2:])
        image, target = self.transform(tv_tensors.Image(image), {
            "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=size),
            "labels": target["labels"]})
        return image.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor).float(),
                                                 "labels": target["labels"]}


def collate_detection(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack images (same size after prepare); targets stay a list, one dict per image."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
