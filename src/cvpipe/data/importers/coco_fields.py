"""Field types of a COCO instances file, checked record by record before any table is built.

JSON lets a hand-edited or converted file say ``"id": "7"``, ``"iscrowd": "no"``, ``"width": "64"``, or put
a list where an annotation object belongs. :func:`check_coco` turns each such record into a clean one (the
bad value replaced by None, or by COCO's default where one exists) plus an error naming the record and
field, e.g. ``annotations[3].iscrowd: expected 0 or 1, got 'no'``. The importer puts the errors in a
``field_error`` column, which rules "image/annotation/category fields well-typed" report, so nothing
is coerced silently and nothing raises.
"""

from __future__ import annotations

import math
from typing import Any, Callable

Record = dict[str, Any]
Check = Callable[[Any], str | None]  # None when the value is acceptable, else what was expected


def _integer(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


def _size(value: Any) -> str | None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if number and math.isfinite(value) and value > 0 else "a positive number"


def _number(value: Any) -> str | None:
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"


def _crowd(value: Any) -> str | None:
    return None if isinstance(value, (int, bool)) and value in (0, 1) else "0 or 1"


def _bbox(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 4 and all(_number(v) is None for v in value)
    return None if ok else "a list of 4 numbers [x, y, w, h]"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


# field → (check, required, value used when the field is bad or absent)
IMAGE_FIELDS: dict[str, tuple[Check, bool, Any]] = {
    "id": (_integer, True, None), "file_name": (_text, True, None), "width": (_size, True, None),
    "height": (_size, True, None), "split": (_string, False, None)}
ANNOTATION_FIELDS: dict[str, tuple[Check, bool, Any]] = {
    "id": (_integer, True, None), "image_id": (_integer, True, None), "category_id": (_integer, True, None),
    "bbox": (_bbox, True, None), "iscrowd": (_crowd, False, 0), "area": (_number, False, None)}
CATEGORY_FIELDS: dict[str, tuple[Check, bool, Any]] = {"id": (_integer, True, None), "name": (_string, True, None)}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_record(record: Any, where: str, fields: dict[str, tuple[Check, bool, Any]]) -> tuple[Record, str | None]:
    """One COCO record → (clean copy, error or None). A record that is not an object becomes an empty one."""
    if not isinstance(record, dict):
        return {}, f"{where}: expected an object, got {type(record).__name__} {_shown(record)}"
    clean, problems = dict(record), []
    for name, (check, required, default) in fields.items():
        if name not in record or record[name] is None:
            if required:
                problems.append(f"{name}: missing")
            clean[name] = default
            continue
        expected = check(record[name])
        if expected is not None:
            problems.append(f"{name}: expected {expected}, got {_shown(record[name])}")
            clean[name] = default
    if clean.get("iscrowd") is not None:
        clean["iscrowd"] = int(clean["iscrowd"])
    return clean, (f"{where}: " + "; ".join(problems)) if problems else None


def check_coco(coco: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str | None]]]:
    """The clean COCO dict and, per table (images, annotations, categories), one error or None per record,
    in file order. ``coco`` must already be an object whose ``images`` is a list."""
    clean: dict[str, Any] = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    errors: dict[str, list[str | None]] = {}
    for table, key, fields in (("images", "images", IMAGE_FIELDS), ("annotations", "annotations", ANNOTATION_FIELDS),
                               ("categories", "categories", CATEGORY_FIELDS)):
        records, errors[table] = [], []
        for k, record in enumerate(coco.get(key) or []):
            fixed, error = check_record(record, f"{key}[{k}]", fields)
            records.append(fixed)
            errors[table].append(error)
        clean[key] = records
    return clean, errors
