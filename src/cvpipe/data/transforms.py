"""Training augmentations, built from torchvision.transforms.v2."""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2


def classification_augment() -> v2.Compose:
    """Label-preserving for the shape classes: flips, rotation, scale/translate jitter, colour jitter.

    Works on uint8 [3, H, W] tensors and returns the same dtype.
    """
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomAffine(degrees=30, translate=(0.08, 0.08), scale=(0.85, 1.15)),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
    ])


def batched_classification_augment() -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The batched counterpart of :func:`classification_augment` (same flips, rotation, scale/translate and colour
    ranges, black exposed border as RandomAffine's default): (uint8 crops [B, 3, C, C], labels) → (float32 crops
    0..255, labels), on the crops' device. Draws come from torch's global CPU generator, seeded per epoch."""
    from cvpipe.data.batch_augment import BatchAugment

    augment = BatchAugment(degrees=30, translate=(0.08, 0.08), scale=(0.85, 1.15), brightness=0.3, contrast=0.3,
                           saturation=0.3, hue=0.05, fill=0.0, out_dtype=torch.float32)

    def apply(crops: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(crops, generator=torch.default_generator).images, labels

    return apply
