"""Normalisation before the rules run; each step returns the changed dataset and the list of what it
changed, which the report shows (see :mod:`cvpipe.data.validation`).

- :func:`normalise_orientation`: labels drawn on the stored pixels of an EXIF-rotated file are turned into
  the upright frame that :func:`cvpipe.data.image_files.open_rgb` (and so prepare) reads;
- :func:`clip_boxes`: ``validate.out_of_bounds: clip`` clips boxes beyond the tolerance to the image.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.image_files import orient_boxes, orient_mask
from cvpipe.data.masks import decode_segmentation, encode_mask


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars, so the notes serialise as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def normalise_orientation(dataset: CanonicalDataset, files: pd.DataFrame, exif_labels: str,
                          bad_segmentations: set[int] | frozenset[int] = frozenset()
                          ) -> tuple[CanonicalDataset, list[dict[str, Any]]]:
    """Map the labels of EXIF-rotated files from stored to upright pixels where they were drawn on the stored
    ones: ``exif_labels`` "stored" / "upright" says so for every file; "auto" decides per file by which size
    the labels give (stored when both fit, as with a 180° turn). An importer's ``label_frame`` column wins.
    Segmentations at the annotation positions ``bad_segmentations`` are left as they are (never decoded)."""
    images, annotations = dataset.images.copy(), dataset.annotations.copy()
    frames = images["label_frame"] if "label_frame" in images else pd.Series(None, index=images.index)
    oriented = []
    rotated = files.index[(files["decodes"] == True) & (files["orientation"] != 1)]  # noqa: E712 (None: missing)
    for idx in rotated:
        fact, row = files.loc[idx], images.loc[idx]
        frame = frames.loc[idx] if isinstance(frames.loc[idx], str) else exif_labels
        size = (row["width"], row["height"])
        stored, upright = (fact.stored_width, fact.stored_height), (fact.upright_width, fact.upright_height)
        if frame == "upright" or size != stored:
            continue  # already upright, or a size mismatch the rules report (auto: sizes tell the frame)
        mine = annotations.index[annotations["image_id"] == row["image_id"]]
        boxes = orient_boxes(annotations.loc[mine, ["x", "y", "w", "h"]].to_numpy(), int(fact.orientation),
                             *stored)
        annotations.loc[mine, ["x", "y", "w", "h"]] = boxes
        for a in mine:
            seg = annotations.at[a, "segmentation"]
            if seg is not None and annotations.index.get_loc(a) not in bad_segmentations:
                mask = decode_segmentation(seg, int(stored[1]), int(stored[0]))
                annotations.at[a, "segmentation"] = encode_mask(orient_mask(mask, int(fact.orientation)))
        images.loc[idx, ["width", "height"]] = upright
        oriented.append({"file_name": row["file_name"], "orientation": int(fact.orientation),
                         "stored_size": [int(v) for v in stored], "annotations": len(mine)})
    return replace(dataset, images=images, annotations=annotations), oriented


def clip_boxes(dataset: CanonicalDataset, tolerance_px: float) -> tuple[CanonicalDataset, list[dict[str, Any]]]:
    """Clip every finite box that overhangs its image by more than ``tolerance_px``; returns the list."""
    ann = dataset.annotations.copy()
    sizes = dataset.images.drop_duplicates("image_id").set_index("image_id")[["width", "height", "file_name"]]
    width = ann["image_id"].map(sizes["width"]).to_numpy(float)
    height = ann["image_id"].map(sizes["height"]).to_numpy(float)
    x0, y0 = ann["x"].to_numpy(float), ann["y"].to_numpy(float)
    x1, y1 = x0 + ann["w"].to_numpy(float), y0 + ann["h"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        over = ((x0 < -tolerance_px) | (y0 < -tolerance_px) | (x1 > width + tolerance_px)
                | (y1 > height + tolerance_px)) & np.isfinite(x1 + y1 + width + height)
    clipped = []
    for i in np.flatnonzero(over):
        before = [float(v) for v in (x0[i], y0[i], x1[i] - x0[i], y1[i] - y0[i])]
        nx0, ny0 = min(max(x0[i], 0), width[i]), min(max(y0[i], 0), height[i])
        nx1, ny1 = min(max(x1[i], 0), width[i]), min(max(y1[i], 0), height[i])
        after = [float(nx0), float(ny0), float(nx1 - nx0), float(ny1 - ny0)]
        ann.iloc[i, [ann.columns.get_loc(c) for c in ("x", "y", "w", "h")]] = after
        ann.iloc[i, ann.columns.get_loc("area")] = after[2] * after[3]
        clipped.append({"file_name": sizes["file_name"].get(ann.iloc[i]["image_id"]),
                        "ann_id": _plain(ann.iloc[i]["ann_id"]), "before": before, "after": after})
    return replace(dataset, annotations=ann), clipped
