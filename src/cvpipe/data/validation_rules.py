"""The validation suite: every rule the canonical tables must satisfy, each one Great Expectations
expectation on one table with a human name.

Rules read plain columns of the three tables as :mod:`cvpipe.data.validation` prepares them (file facts,
box ends, segmentation and name checks are derived there). Optional columns add their rules only when an
importer wrote them: ``label_file``, ``name_error`` (a file name that is not UTF-8), ``label_error``,
``lossy_mask`` (a mask file saved as JPEG or lossy WebP), ``mask_out_of_range``, ``field_error`` (COCO field
types), ``parse_error`` (one bad line or object of a label file), ``blank_label``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cvpipe.data.file_checks import REGULAR


@dataclass(frozen=True)
class Rule:
    """One named expectation on one table; ``ids`` are the columns quoted when it fails."""

    name: str
    table: str
    expectation: Any
    ids: tuple[str, ...]


def _optional_rules(e: Any, img: tuple[str, ...], ann: tuple[str, ...], cat: tuple[str, ...]
                    ) -> list[tuple[str, str, Rule]]:
    """(table, column, rule) for the columns only some importers write."""
    return [
        ("images", "label_file", Rule("image has a label file", "images",
                                      e.ExpectColumnValuesToNotBeNull(column="label_file"), ("file_name", "image_id"))),
        ("images", "label_error", Rule("label file parses", "images",
                                       e.ExpectColumnValuesToBeNull(column="label_error"), img)),
        ("images", "name_error", Rule("file name is UTF-8", "images",
                                      e.ExpectColumnValuesToBeNull(column="name_error"), img)),
        ("images", "field_error", Rule("image fields well-typed", "images",
                                       e.ExpectColumnValuesToBeNull(column="field_error"), img)),
        ("images", "lossy_mask", Rule("mask file lossless", "images",
                                      e.ExpectColumnValuesToBeNull(column="lossy_mask"), img)),
        ("images", "mask_out_of_range", Rule("mask values within class range", "images",
                                             e.ExpectColumnValuesToBeNull(column="mask_out_of_range"), img)),
        ("annotations", "field_error", Rule("annotation fields well-typed", "annotations",
                                            e.ExpectColumnValuesToBeNull(column="field_error"), ann)),
        ("annotations", "parse_error", Rule("label line parses", "annotations",
                                            e.ExpectColumnValuesToBeNull(column="parse_error"), ann)),
        ("annotations", "blank_label", Rule("class label not empty", "annotations",
                                            e.ExpectColumnValuesToBeInSet(column="blank_label", value_set=[False]),
                                            ann)),
        ("categories", "field_error", Rule("category fields well-typed", "categories",
                                           e.ExpectColumnValuesToBeNull(column="field_error"), cat)),
    ]


def build_rules(image_ids: list[int], category_ids: list[int], image_columns: set[str] | None = None,
                annotation_columns: set[str] | None = None, category_columns: set[str] | None = None) -> list[Rule]:
    """The suite: every rule the canonical tables must satisfy (optional columns add their rules)."""
    import great_expectations as gx

    e = gx.expectations
    columns = {"images": image_columns or set(), "annotations": annotation_columns or set(),
               "categories": category_columns or set()}
    num_classes = len(category_ids)
    img = ("file_name", "image_id") + (("label_file",) if "label_file" in columns["images"] else ())
    ann = ("file_name", "ann_id") + tuple(c for c in ("label_file", "source_label") if c in columns["annotations"])
    cat = ("category_id", "name") + (("label_file",) if "label_file" in columns["categories"] else ())
    optional = {table: [rule for t, column, rule in _optional_rules(e, img, ann, cat)
                        if t == table and column in columns[table]] for table in columns}
    return [
        Rule("image ids present", "images", e.ExpectColumnValuesToBeInSet(column="id_present", value_set=[True]), img),
        Rule("image ids unique", "images", e.ExpectColumnValuesToBeUnique(column="image_id"), img),
        Rule("image file names unique", "images", e.ExpectColumnValuesToBeUnique(column="file_name"), img),
        Rule("file name inside data.path", "images", e.ExpectColumnValuesToBeNull(column="outside_data_path"),
             img),
        Rule("image file exists", "images", e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]), img),
        Rule("image is a regular file", "images",
             e.ExpectColumnValuesToBeInSet(column="file_kind", value_set=[REGULAR]), img),
        Rule("image file decodes", "images", e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
             img + ("decode_error",)),
        *optional["images"],
        Rule("label width matches file", "images",
             e.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"), img),
        Rule("label height matches file", "images",
             e.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"), img),
        Rule("image in one split only (no leakage)", "images", e.ExpectColumnValuesToBeNull(column="leak_split"),
             img + ("split",)),
        *optional["annotations"],
        Rule("annotation ids unique", "annotations", e.ExpectColumnValuesToBeUnique(column="ann_id"), ann),
        Rule("annotation paired with an image", "annotations",
             e.ExpectColumnValuesToBeInSet(column="image_id", value_set=image_ids), ann),
        Rule("known class id", "annotations",
             e.ExpectColumnValuesToBeInSet(column="category_id", value_set=category_ids), ann),
        *[Rule(f"box {c} finite", "annotations", e.ExpectColumnValuesToNotBeNull(column=c), ann) for c in "xywh"],
        Rule("box width positive", "annotations",
             e.ExpectColumnValuesToBeBetween(column="w", min_value=0, strict_min=True), ann),
        Rule("box height positive", "annotations",
             e.ExpectColumnValuesToBeBetween(column="h", min_value=0, strict_min=True), ann),
        Rule("box left edge inside image", "annotations",
             e.ExpectColumnValuesToBeBetween(column="x_min_tol", min_value=0), ann),
        Rule("box top edge inside image", "annotations",
             e.ExpectColumnValuesToBeBetween(column="y_min_tol", min_value=0), ann),
        Rule("box right edge inside image", "annotations",
             e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="img_width", column_B="x_max_tol", or_equal=True,
                                                         ignore_row_if="either_value_is_missing"), ann),
        Rule("box bottom edge inside image", "annotations",
             e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="img_height", column_B="y_max_tol", or_equal=True,
                                                         ignore_row_if="either_value_is_missing"), ann),
        Rule("segmentation valid", "annotations", e.ExpectColumnValuesToBeNull(column="segmentation_error"),
             ann + ("segmentation_error",)),
        *optional["categories"],
        Rule("class ids unique", "categories", e.ExpectColumnValuesToBeUnique(column="category_id"), cat),
        Rule("class ids contiguous from 1", "categories",
             e.ExpectColumnValuesToBeInSet(column="category_id", value_set=list(range(1, num_classes + 1))), cat),
        Rule("class name not empty", "categories", e.ExpectColumnValuesToNotBeNull(column="name_key"), cat),
        Rule("class names unique ignoring case and spaces", "categories",
             e.ExpectColumnValuesToBeUnique(column="name_key"), cat),
    ]
