"""The refusal every tuner shares: a split without ground-truth objects has no operating point to choose."""

from __future__ import annotations

from cvpipe.errors import DataValidationError

SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def require_objects(objects: int, *, split: str, images: int | None, chooses: str) -> None:
    """Raise :class:`DataValidationError` when ``objects`` (ground-truth boxes, instances or labelled crops of
    ``split``) is 0: precision and recall are then undefined, so no ``chooses`` can be chosen. The message
    names the split, its image count and what to change."""
    if objects:
        return
    held = f" in its {images} images" if images is not None else ""
    raise DataValidationError(
        f"the {SPLIT_NAMES.get(split, split)} split ('{split}') holds no ground-truth objects{held}: precision and "
        f"recall are undefined there, so no {chooses} can be chosen; give the '{split}' split labelled objects "
        f"(prepare.{split}_fraction, or the source's own split lists) and run prepare again")
