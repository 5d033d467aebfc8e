"""The prepared image size from the data (``prepare.image_size: auto``) and how big the objects are at a size.

Letterboxing (:func:`cvpipe.data.prepare.letterbox`) scales an image of W×H px by s = S / max(W, H), so an object
whose box has short side m and long side M becomes m·S / max(W, H) by M·S / max(W, H) px. With the relative
sides r = m / max(W, H) and R = M / max(W, H) an object measures r·S px at any size S, and the percentiles of
r·S are S times those of r.

Rule for ``auto`` (on the train split's non-crowd boxes; p = ``percentile``, n = ``min_object_px``):

    q      = min over classes c of P_p(r | c)     the low tail of the class with the smallest objects
    need   = ⌈n / q / 32⌉ · 32                     the smallest multiple of 32 with P_p(r·S | c) ≥ n for every c
    source = ⌊median_i max(W_i, H_i) / 32⌋ · 32   no upscaling beyond most of the images themselves
    S      = max(32, min(min(max_size, source), max(min_size, need)))

For semantic masks (a mask-folder source: the "objects" are the connected regions of each class) the metrics are
per pixel (IoU, Dice, pixel accuracy), so P_p is taken over pixels: each region weighted by its area. A few tiny
specks at an image border then no longer force a 512-px micrograph to be prepared at 480 px (about 14× the
compute of 128 px) when 95 % of the class's pixels lie in regions that stay ≥ n px at the floor.

so S is the smallest multiple of 32 (the largest stride a detector here uses divides it) at which, in every class,
at most p % of the objects have a short side under n px; never below ``min_size`` (what the default
hyper-parameters were tuned at) nor above ``max_size`` (compute) or the source (detail that is not there),
except that images smaller than ``min_size`` are kept at their own size. When every box is its whole image
(classification data: ImageFolder, CSV) or there is no box, the objects are the images: S = the floor, capped
by the source. Mask folders give one box per connected region, so segmentation data follows the box rule.

At the chosen size, per class: the p-th percentile short side, the median short side, the (100 − p)-th
percentile long side and the fraction of objects with a short side under the finest detector stride (a
level's cell; smaller objects fall between cells). A grid detector with strides s_1 < … < s_L covers objects
with short sides from s_1 to long sides of 4·s_L px (the grid assignment's scale ranges, FCOS's halved: level s
takes objects up to 4·s, :data:`cvpipe.matching.grid_assignment.BOUNDARY_FACTOR`); :func:`level_check` says
whether a level set covers the data and which consecutive powers of two would, the same levels as the detectors'
``strides: auto`` (:func:`cvpipe.matching.grid_assignment.strides_for_objects`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

SIZE_MULTIPLE = 32  # px: every size is divisible by the coarsest stride a built-in detector uses
MIN_SIZE_ANY = 32  # px: no image is prepared smaller, whatever its source size
FINEST_STRIDE = 8  # px: no built-in detector has a finer level at its defaults (yolo, yolact, ssd: 8; detr: 16)
BUILTIN_STRIDES = (8, 16)  # the default levels of models/yolo.py and models/yolact.py
LEVEL_REACH = 4  # a level of stride s takes objects up to 4·s px (grid_assignment.BOUNDARY_FACTOR; torch-free here)
MAX_SUGGESTED_STRIDE = 32  # torchvision backbones tap at most stride 32, and S is a multiple of 32
WHOLE_IMAGE_TOLERANCE = 1.0  # px: a box this close to its image's edges is the whole image


@dataclass(frozen=True)
class AutoSizeRule:
    """The parameters of the ``auto`` rule (params.yaml ``prepare.auto_*``; checked in :mod:`cvpipe.config`)."""

    min_object_px: float = 8.0  # n: px of short side the low tail of every class keeps
    percentile: float = 5.0  # p: the low tail, in percent of a class's objects
    min_size: int = 128  # px, floor
    max_size: int = 640  # px, cap


def relative_objects(images: pd.DataFrame, annotations: pd.DataFrame) -> pd.DataFrame:
    """One row per non-crowd box with a finite, positive size: category_id, ``short`` and ``long`` (r and R:
    the box sides over its image's longer side) and ``whole_image`` (the box is its image, within 1 px)."""
    by_id = images.set_index("image_id")[["width", "height"]].astype(float)
    boxes = annotations[(annotations["iscrowd"] == 0) & annotations["image_id"].isin(by_id.index)]
    boxes = boxes[np.isfinite(boxes[["x", "y", "w", "h"]]).all(axis=1) & (boxes["w"] > 0) & (boxes["h"] > 0)]
    width = boxes["image_id"].map(by_id["width"])
    height = boxes["image_id"].map(by_id["height"])
    image_long = np.maximum(width, height)
    whole = ((boxes["x"].abs() <= WHOLE_IMAGE_TOLERANCE) & (boxes["y"].abs() <= WHOLE_IMAGE_TOLERANCE)
             & ((boxes["w"] - width).abs() <= WHOLE_IMAGE_TOLERANCE)
             & ((boxes["h"] - height).abs() <= WHOLE_IMAGE_TOLERANCE))
    area = boxes["area"].astype(float) if "area" in boxes else boxes["w"] * boxes["h"]
    return pd.DataFrame({"category_id": boxes["category_id"].astype(int),
                         "short": np.minimum(boxes["w"], boxes["h"]) / image_long,
                         "long": np.maximum(boxes["w"], boxes["h"]) / image_long,
                         "area": area.where(area > 0, boxes["w"] * boxes["h"]).astype(float),
                         "whole_image": whole.astype(bool)}).reset_index(drop=True)


def semantic_masks(images: pd.DataFrame) -> bool:
    """Whether the objects are the connected regions of semantic mask files (a mask-folder source)."""
    return "mask_file" in images.columns and bool(images["mask_file"].notna().any())


def weighted_quantile(values: pd.Series, weights: pd.Series, q: float) -> float:
    """The smallest value v with Σ_{values ≤ v} weights ≥ q · Σ weights (a quantile over the weights' units)."""
    order = np.argsort(values.to_numpy(), kind="stable")
    cumulative = np.cumsum(weights.to_numpy()[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(values.to_numpy()[order][min(index, len(order) - 1)])


def _round_up(value: float) -> int:
    return int(math.ceil(value / SIZE_MULTIPLE - 1e-9)) * SIZE_MULTIPLE


def source_cap(images: pd.DataFrame) -> tuple[int, float]:
    """(⌊median longer side / 32⌋ · 32, the median longer side) of ``images``."""
    median = float(np.median(np.maximum(images["width"], images["height"]))) if len(images) else 0.0
    return int(median // SIZE_MULTIPLE) * SIZE_MULTIPLE, median


def auto_size(objects: pd.DataFrame, images: pd.DataFrame, names: dict[int, str],
              rule: AutoSizeRule) -> tuple[int, str, dict[str, Any]]:
    """The ``auto`` size of the module docstring: (S, the reason in words, the rule's inputs)."""
    cap, median = source_cap(images)
    hi = min(rule.max_size, cap)
    inputs: dict[str, Any] = {"images": len(images), "objects": len(objects), "median_long_side_px": median,
                              "source_cap": cap, "upper": hi}
    source_note = f"the images' median longer side is {median:g} px"
    detection = objects[~objects["whole_image"]]
    if detection.empty:
        size = max(MIN_SIZE_ANY, min(hi, rule.min_size))
        what = ("every box is its whole image (classification data)" if len(objects) else "there are no object boxes")
        return size, (f"{what}: the objects are the images, so the floor auto_min_size {rule.min_size} px, capped by "
                      f"auto_max_size {rule.max_size} px and the source ({source_note})"), inputs
    if semantic_masks(images):  # per-pixel metrics: the low tail of the pixels, not of the regions
        low = detection.groupby("category_id").apply(
            lambda g: weighted_quantile(g["short"], g["area"], rule.percentile / 100.0), include_groups=False)
        inputs["percentile_over"] = "pixels (semantic masks: regions weighted by their area)"
    else:
        low = detection.groupby("category_id")["short"].quantile(rule.percentile / 100.0)
        inputs["percentile_over"] = "objects"
    limiting = int(low.idxmin())
    q = float(low.min())
    need = _round_up(rule.min_object_px / q)
    size = max(MIN_SIZE_ANY, min(hi, max(rule.min_size, need)))
    inputs.update(limiting_class=names.get(limiting, str(limiting)), limiting_relative_short_side=round(q, 6),
                  needed_size=need)
    over = " (regions weighted by their pixels)" if inputs["percentile_over"] != "objects" else ""
    tail = (f"limiting class '{names.get(limiting, limiting)}': its {rule.percentile:g}th-percentile object short "
            f"side{over} is {q:.4f} of the image's longer side ({q * median:.1f} px in a {median:g}-px image)")
    if size == need:
        why = (f"the smallest multiple of {SIZE_MULTIPLE} px at which every class's {rule.percentile:g}th-percentile "
               f"object short side reaches {rule.min_object_px:g} px ({q * size:.1f} px)")
    elif size > need and size == rule.min_size:
        why = (f"the floor auto_min_size {rule.min_size} px ({need} px would already keep every class's "
               f"{rule.percentile:g}th-percentile short side at {rule.min_object_px:g} px or more)")
    elif size > need:
        why = f"the source size: the images are smaller than the floor auto_min_size {rule.min_size} px ({source_note})"
    elif hi == cap and cap < rule.max_size:
        why = (f"capped by the source ({source_note}; no upscaling): {need} px would be needed to keep every class's "
               f"{rule.percentile:g}th-percentile short side at {rule.min_object_px:g} px; at {size} px it is "
               f"{q * size:.1f} px")
    else:
        why = (f"capped by auto_max_size {rule.max_size} px: {need} px would be needed to keep every class's "
               f"{rule.percentile:g}th-percentile short side at {rule.min_object_px:g} px; at {size} px it is "
               f"{q * size:.1f} px")
    return size, f"{why}; {tail}", inputs


def object_scales(objects: pd.DataFrame, names: dict[int, str], size: int, *, percentile: float,
                  finest_stride: int = FINEST_STRIDE) -> list[dict[str, Any]]:
    """Per class (detection boxes only): how large its objects are at ``size`` px, in px."""
    detection = objects[~objects["whole_image"]]
    rows = []
    for category_id, group in detection.groupby("category_id"):
        short, long = group["short"] * size, group["long"] * size
        rows.append({"category_id": int(category_id), "name": str(names.get(category_id, category_id)),
                     "objects": len(group),
                     "low_short_side_px": round(float(short.quantile(percentile / 100.0)), 2),
                     "median_short_side_px": round(float(short.median()), 2),
                     "high_long_side_px": round(float(long.quantile(1.0 - percentile / 100.0)), 2),
                     "below_stride_fraction": round(float((short < finest_stride).mean()), 4)})
    return rows


def level_check(classes: list[dict[str, Any]], strides: tuple[int, ...]) -> dict[str, Any]:
    """Whether a grid detector with ``strides`` covers the objects of ``classes`` (from :func:`object_scales`):
    the smallest low-tail short side ≥ the finest stride and the largest high-tail long side ≤ 4 × the coarsest
    stride; ``suggested`` extends ``strides`` by consecutive powers of two (finest 4 at least, coarsest 32 at
    most) until they do."""
    strides = tuple(sorted(int(s) for s in strides))
    if not classes:
        return {"strides": list(strides), "covers": True, "object_range_px": None,
                "reach_px": [strides[0], LEVEL_REACH * strides[-1]], "suggested": list(strides)}
    small = min(c["low_short_side_px"] for c in classes)
    large = max(c["high_long_side_px"] for c in classes)
    finest = strides[0]
    while finest > 4 and finest > small:
        finest //= 2
    coarsest = strides[-1]
    while coarsest < MAX_SUGGESTED_STRIDE and LEVEL_REACH * coarsest < large:
        coarsest *= 2
    suggested = [finest * 2 ** k for k in range(int(math.log2(coarsest // finest)) + 1)]
    return {"strides": list(strides), "covers": small >= strides[0] and large <= LEVEL_REACH * strides[-1],
            "object_range_px": [small, large], "reach_px": [strides[0], LEVEL_REACH * strides[-1]],
            "suggested": suggested}


def scale_warnings(classes: list[dict[str, Any]], levels: dict[str, Any], size: int, *, percentile: float,
                   auto: int | None, finest_stride: int = FINEST_STRIDE) -> list[str]:
    """One line per class whose low tail is under ``finest_stride`` at ``size``, and one when the level set of
    ``levels`` (from :func:`level_check`) does not reach the largest objects."""
    hint = f" (auto would choose {auto} px)" if auto is not None and auto > size else ""
    lines = [f"class '{c['name']}': at {size} px, {percentile:g}% of its objects have a short side under "
             f"{c['low_short_side_px']:g} px and {100 * c['below_stride_fraction']:.0f}% are under the finest stride "
             f"({finest_stride} px): they will be hard to see; a larger prepare.image_size helps{hint}"
             for c in classes if c["low_short_side_px"] < finest_stride]
    if levels["object_range_px"] is not None and levels["object_range_px"][1] > levels["reach_px"][1]:
        lines.append(f"the largest objects reach {levels['object_range_px'][1]:g} px (long side, "
                     f"{100 - percentile:g}th percentile) at {size} px, beyond {LEVEL_REACH} × the coarsest stride "
                     f"of levels {levels['strides']} ({levels['reach_px'][1]} px): a detector with strides "
                     f"{levels['suggested']} covers them (models.<name>.train.model.strides)")
    return lines


def choose_image_size(images: pd.DataFrame, annotations: pd.DataFrame, names: dict[int, str], *,
                      requested: int | str, rule: AutoSizeRule) -> dict[str, Any]:
    """The prepared size for ``requested`` (an integer is kept; ``"auto"`` follows the rule) and the report on
    it: ``image_size`` (int), ``requested``, ``auto_size``, ``reason``, ``rule``, ``inputs``, ``classes``
    (:func:`object_scales`), ``levels`` (:func:`level_check` of the built-in levels) and ``warnings``.
    ``images``/``annotations`` are canonical tables (the train split); ``names`` maps category_id → name."""
    if requested != "auto" and not (isinstance(requested, int) and requested > 0):
        raise ValueError(f"prepare.image_size must be a positive integer or 'auto', got {requested!r}")
    objects = relative_objects(images, annotations)
    auto, auto_reason, inputs = auto_size(objects, images, names, rule)
    if requested == "auto":
        size, reason = auto, auto_reason
    else:
        size = int(requested)
        reason = (f"set in params.yaml (prepare.image_size: {size})"
                  + ("" if auto == size else f"; auto would choose {auto} px: {auto_reason}"))
    classes = object_scales(objects, names, size, percentile=rule.percentile)
    levels = level_check(classes, BUILTIN_STRIDES)
    return {"image_size": size, "requested": requested, "auto_size": auto, "reason": reason,
            "rule": {**asdict(rule), "size_multiple": SIZE_MULTIPLE}, "inputs": inputs,
            "finest_stride": FINEST_STRIDE, "classes": classes, "levels": levels,
            "warnings": scale_warnings(classes, levels, size, percentile=rule.percentile,
                                       auto=auto if requested != "auto" else None)}
