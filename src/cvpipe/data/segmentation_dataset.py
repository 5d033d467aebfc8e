"""Semantic segmentation samples over the prepared arrays; masks move with the image through transforms.v2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import IGNORE_INDEX


def segmentation_augment() -> v2.Compose:
    """Flips, scale/translate jitter (masks resampled nearest, exposed border = ignore) and colour jitter."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.8, 1.2), fill={tv_tensors.Mask: IGNORE_INDEX,
                                                                                 "others": 0}),
        v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.04),
    ])


def batched_segmentation_augment(*, elastic_std: float = 0.0, elastic_grid: int = 3
                                 ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The batched counterpart of :func:`segmentation_augment`: (uint8 images [B, 3, S, S], int64 masks [B, S, S])
    → (float32 images 0..255, masks moved by the same nearest sampling, exposed border = ignore), on the images'
    device. Draws come from torch's global CPU generator, seeded per epoch. ``elastic_std`` > 0 adds the elastic
    deformation of :mod:`cvpipe.data.batch_augment` (std as a fraction of the side, ``elastic_grid`` coarse points
    per side) and samples the images bilinearly (nearest would make the smooth field's edges jagged)."""
    from cvpipe.data.batch_augment import BatchAugment

    augment = BatchAugment(fill=0.0, ignore_index=IGNORE_INDEX, out_dtype=torch.float32, elastic_std=elastic_std,
                           elastic_grid=elastic_grid, interpolation="bilinear" if elastic_std > 0 else "nearest")

    def apply(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = augment(images, semantic=masks, generator=torch.default_generator)
        return out.images, out.semantic

    return apply


def binary_target(mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Class ids → foreground (1) / background (0), ignore kept: the target of binary mode."""
    return (mask != 0) * 1 + (mask == IGNORE_INDEX) * (IGNORE_INDEX - 1)


class SegmentationDataset(Dataset):
    """item = (uint8 image [3, S, S], int64 mask [S, S]: 0 background, k class k (1 in binary mode), 255 ignore)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, *, binary: bool = False,
                 transform: Callable[..., Any] | None = None) -> None:
        if len(images) != len(masks):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        self.images, self.masks, self.binary, self.transform = images, masks, binary, transform

    @classmethod
    def from_prepared(cls, prepared_dir: str | Path, split: str, *, binary: bool = False,
                      transform: Callable[..., Any] | None = None) -> "SegmentationDataset":
        return cls(load_array(prepared_dir, split, "images"), load_array(prepared_dir, split, "semantic"),
                   binary=binary, transform=transform)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_array(self) -> np.ndarray:
        return self.images

    def batch_targets(self, indices: list[int]) -> torch.Tensor:
        """Untransformed int64 masks [B, S, S] of a batch (whole-batch fetching)."""
        masks = torch.from_numpy(np.asarray(self.masks[np.asarray(indices)], np.int64))
        return binary_target(masks) if self.binary else masks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1)  # [3, S, S] uint8
        mask = torch.from_numpy(np.array(self.masks[index], np.int64))  # [S, S]
        if self.binary:
            mask = binary_target(mask)
        if self.transform is not None:
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()
