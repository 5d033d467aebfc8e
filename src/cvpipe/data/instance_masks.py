"""Instance masks of a prepared split, stored as COCO compressed RLE and decoded a batch at a time.

A full-image uint8 mask per box costs S² bytes (at 640 px, 410 kB per object: ~350 GB for COCO's 860k
instances); its RLE costs a few dozen bytes, and pycocotools decodes a batch's masks in one call in well under
the time of the training step they feed. The decoded rows equal the masks prepare letterboxed, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils


class InstanceMasks:
    """Box row m's mask: RLE bytes ``rle[offsets[m]:offsets[m + 1]]`` (empty, with ``has_mask[m]`` False, for a
    box the source gave without a mask) of a ``size × size`` image."""

    def __init__(self, rle: np.ndarray, offsets: np.ndarray, has_mask: np.ndarray, size: int) -> None:
        if len(offsets) != len(has_mask) + 1:
            raise ValueError(f"{len(has_mask)} mask flags need {len(has_mask) + 1} RLE offsets, got {len(offsets)}")
        self.rle, self.offsets, self.has_mask, self.size = rle, offsets, has_mask, int(size)

    @classmethod
    def from_prepared(cls, prepared_dir: str | Path, split: str, size: int) -> "InstanceMasks":
        folder = Path(prepared_dir) / split
        if not (folder / "instance_rle.npy").is_file():
            raise FileNotFoundError(
                f"{folder}/instance_rle.npy is missing: prepare writes instance masks only when pipeline.models "
                "lists an instance segmentation model and the data has masks (see data/arrays.json); "
                "run `dvc repro prepare`")
        return cls(np.load(folder / "instance_rle.npy"), np.load(folder / "instance_rle_offsets.npy"),
                   np.load(folder / "instance_has_mask.npy"), size)

    def __len__(self) -> int:
        return len(self.has_mask)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """uint8 0/1 masks [len(rows), S, S] of these box rows, in their order (zeros where there is no mask)."""
        rows = np.asarray(rows, np.int64)
        out = np.zeros((len(rows), self.size, self.size), np.uint8)
        present = np.flatnonzero(self.has_mask[rows]) if len(rows) else np.zeros(0, np.int64)
        if len(present):
            rles = [{"size": [self.size, self.size],
                     "counts": self.rle[self.offsets[m]:self.offsets[m + 1]].tobytes()} for m in rows[present]]
            out[present] = mask_utils.decode(rles).transpose(2, 0, 1)  # [S, S, K] Fortran → [K, S, S]
        return out
