"""Training augmentations, built from torchvision.transforms.v2."""

from __future__ import annotations

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
