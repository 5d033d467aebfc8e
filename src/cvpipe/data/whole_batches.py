"""Whole-batch fetching for ``train.augment: batched``: the DataLoader asks for a batch's indices at once
(``__getitems__``, which torch's fetcher calls when a dataset has it) and gets back one uint8 image tensor
[B, 3, S, S] and the batch's targets; there is no Python work per image on the image side.

The train split's images are held in memory once, transposed to [N, 3, S, S], when they fit in
``resident_bytes`` (``runtime.resident_data_gb``): each batch is then one ``index_select``, with no per-batch
transpose. A larger split stays memory-mapped and each batch is gathered (sorted reads) and transposed on its own.
The sampler, the shuffle order and so the seeded results are those of the per-image loader.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset


class BatchSource(Protocol):
    """What a dataset offers to be fetched in whole batches (DetectionDataset, SegmentationDataset,
    CropDataset)."""

    def __len__(self) -> int: ...

    @property
    def image_array(self) -> np.ndarray:
        """The split's untransformed uint8 images [N, S, S, 3] (memory-mapped)."""

    def batch_targets(self, indices: list[int]) -> Any:
        """The targets of these items, collated as the task's collate function would."""


class WholeBatches(Dataset):
    """``dataset[indices]`` for a list of indices → (uint8 images [B, 3, S, S], targets); a single index gives a
    batch of one. Use with ``collate_fn=whole_batch``: what ``__getitems__`` returns is the batch already."""

    def __init__(self, source: BatchSource, *, resident_bytes: int) -> None:
        self.source = source
        images = source.image_array
        self.resident = images.nbytes <= resident_bytes
        # one copy, transposed once: a batch is then a contiguous gather in the layout the models take
        self.images = (torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))
                       if self.resident else images)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, Any]:
        if self.resident:
            images = self.images.index_select(0, torch.as_tensor(indices, dtype=torch.long))
        else:  # memory-mapped: read the rows in file order, then put them back in batch order
            order = np.argsort(indices, kind="stable")
            rows = np.empty((len(indices), *self.images.shape[1:]), dtype=self.images.dtype)
            rows[order] = self.images[np.asarray(indices)[order]]
            images = torch.from_numpy(rows).permute(0, 3, 1, 2).contiguous()
        return images, self.source.batch_targets(list(indices))


def whole_batch(batch: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
    """The collate function of :class:`WholeBatches`: the fetched batch is collated already."""
    return batch
