"""Datasets over the prepared, memory-mapped arrays (no image decoding while training)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


def load_array(prepared_dir: str | Path, split: str, name: str, mmap: bool = True) -> np.ndarray:
    """``<prepared_dir>/<split>/<name>.npy``, memory-mapped by default."""
    return np.load(Path(prepared_dir) / split / f"{name}.npy", mmap_mode="r" if mmap else None)


class CropDataset(Dataset):
    """Object-centred crops for classification: item = (uint8 [3, C, C] tensor, int label)."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if len(crops) != len(labels):
            raise ValueError(f"{len(crops)} crops but {len(labels)} labels")
        self.crops, self.labels, self.transform = crops, labels, transform

    @classmethod
    def from_prepared(cls, prepared_dir: str | Path, split: str,
                      transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "CropDataset":
        return cls(load_array(prepared_dir, split, "crops"), load_array(prepared_dir, split, "crop_labels"), transform)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_array(self) -> np.ndarray:
        return self.crops

    def batch_targets(self, indices: list[int]) -> torch.Tensor:
        """int64 labels [B] of a batch (whole-batch fetching)."""
        return torch.from_numpy(np.asarray(self.labels[np.asarray(indices)], np.int64))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.crops[index])).permute(2, 0, 1)  # [3, C, C] uint8
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])
