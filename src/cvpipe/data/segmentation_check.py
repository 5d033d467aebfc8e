"""Is a COCO segmentation usable? The checks behind rule "segmentation valid", run before anything decodes one.

A segmentation is None (box only), a list of polygons, or an RLE object. :func:`segmentation_problem` returns
why one is unusable, or None:

- polygons: a non-empty list; each polygon a list of finite numbers, an even count, at least 3 points;
- RLE: ``size`` is ``[height, width]`` of its image (the label size); ``counts`` a list of non-negative
  integers, or a COCO compressed string, whose runs add up to exactly height × width pixels.

pycocotools trusts its input (a compressed string whose runs overrun the mask writes past the buffer),
so the compressed string is decoded here, in Python, before pycocotools ever sees it.
"""

from __future__ import annotations

import math
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compressed_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``); ValueError when the
    string holds a character outside the alphabet or ends inside a number."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("the string ends inside a run length")
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[pos]!r} at {pos} is not in the RLE alphabet")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            pos += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _polygon_problem(polygons: list[Any]) -> str | None:
    if not polygons:
        return "empty polygon list (omit the key or write null for a box without a mask)"
    for k, polygon in enumerate(polygons):
        if not isinstance(polygon, list):
            return f"polygon {k}: expected a list of numbers, got {type(polygon).__name__}"
        if not all(_is_number(v) for v in polygon):
            bad = next(v for v in polygon if not _is_number(v))
            return f"polygon {k}: non-numeric coordinate {bad!r}"
        if not all(math.isfinite(v) for v in polygon):
            return f"polygon {k}: non-finite coordinate"
        if len(polygon) % 2:
            return f"polygon {k}: odd number of coordinates ({len(polygon)})"
        if len(polygon) < 6:
            return f"polygon {k}: {len(polygon) // 2} point(s), a polygon needs at least 3"
    return None


def _rle_problem(rle: dict[str, Any], height: float, width: float) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                              and v > 0 for v in size)):
        return f"RLE size must be [height, width] in positive integers, got {size!r}"
    if math.isfinite(height) and math.isfinite(width) and size != [int(height), int(width)]:
        return f"RLE size {size} differs from the image's [height, width] [{int(height)}, {int(width)}]"
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return "RLE counts must be non-negative integers"
        runs = counts
    elif isinstance(counts, str):
        try:
            runs = compressed_counts(counts)
        except ValueError as exc:
            return f"RLE counts string is malformed: {exc}"
        if any(v < 0 for v in runs):
            return "RLE counts string decodes to a negative run"
    else:
        return f"RLE counts must be a string or a list of integers, got {type(counts).__name__}"
    if sum(runs) != size[0] * size[1]:
        return f"RLE runs cover {sum(runs)} pixels, not height x width = {size[0] * size[1]}"
    return None


def segmentation_problem(segmentation: Any, height: float, width: float) -> str | None:
    """Why ``segmentation`` cannot be decoded as a mask of the ``height`` × ``width`` image (NaN: size
    unknown, not compared), or None when it can (None itself is a box without a mask)."""
    if segmentation is None or (isinstance(segmentation, float) and math.isnan(segmentation)):
        return None
    if isinstance(segmentation, list):
        return _polygon_problem(segmentation)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    return f"expected a list of polygons or an RLE object, got {type(segmentation).__name__}"
