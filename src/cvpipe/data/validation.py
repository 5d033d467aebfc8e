"""Great Expectations suites over the canonical tables, and the report they produce.

Each rule is one GX expectation with a human name. Derived columns (does the file exist, does it
decode, where does the box end, how wide is its image) are computed once here so every rule is a
plain column expectation that GX evaluates and reports with the offending rows.

On failure: ``on_error="fail"`` raises :class:`DataValidationError` whose message names each broken
rule, its count and the first offending files and values; ``on_error="quarantine"`` removes the
offending rows (an image takes its annotations with it), lists every removed row with the rule it
broke, and keeps everything else: kept + quarantined always equals the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.errors import DataValidationError

log = logging.getLogger(__name__)
ROW = "row"  # column carrying the table row number, so reports and quarantine can point at it


@dataclass(frozen=True)
class Rule:
    """One named expectation on one table; ``ids`` are the columns quoted when it fails."""

    name: str
    table: str
    expectation: Any
    ids: tuple[str, ...]


@dataclass
class ValidationReport:
    """Outcome per rule; ``failures`` maps rule name → list of offending rows (dicts)."""

    rules: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return not self.failures

    def message(self, max_examples: int) -> str:
        lines = [f"dataset validation failed: {len(self.failures)} rule(s) broken"]
        for rule in self.rules:
            if rule["success"]:
                continue
            rows = self.failures[rule["rule"]]
            examples = "; ".join(_describe(r) for r in rows[:max_examples])
            lines.append(f"  - rule '{rule['rule']}' on {rule['table']}: {rule['unexpected_count']} of "
                         f"{rule['element_count']} rows fail ({rule['expectation']}); first: {examples}")
        return "\n".join(lines)

    def to_dict(self, max_examples: int) -> dict[str, Any]:
        return {"success": self.success, "counts": self.counts,
                "rules": [{**r, "examples": self.failures.get(r["rule"], [])[:max_examples]} for r in self.rules]}


def _describe(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in row.items() if k != ROW)


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars, so reports serialise as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def inspect_image_files(images: pd.DataFrame, image_root: Path) -> pd.DataFrame:
    """Add file_exists, decodes, decoded_width, decoded_height by opening and fully decoding each file."""
    exists, decodes, widths, heights = [], [], [], []
    for name, w, h in zip(images["file_name"], images["width"], images["height"]):
        path = image_root / str(name)
        ok_file = path.is_file()
        dw, dh, ok_decode = w, h, False
        if ok_file:
            try:
                with Image.open(path) as im:
                    im.load()  # a truncated or corrupt file fails here, not later in training
                    dw, dh, ok_decode = im.width, im.height, True
            except (OSError, SyntaxError, ValueError) as exc:
                log.debug("cannot decode %s: %s", path, exc)
        exists.append(ok_file)
        decodes.append(ok_decode)
        widths.append(dw)
        heights.append(dh)
    out = images.copy()
    out["file_exists"], out["decodes"] = exists, decodes
    out["decoded_width"], out["decoded_height"] = widths, heights
    return out


def annotation_geometry(dataset: CanonicalDataset, tolerance_px: float) -> pd.DataFrame:
    """Annotations with their image's size and file name, box ends, and non-finite values as NaN."""
    ann = dataset.annotations.drop(columns=["segmentation"]).replace([np.inf, -np.inf], np.nan)
    sizes = dataset.images[["image_id", "file_name", "width", "height"]].drop_duplicates("image_id")
    ann = ann.merge(sizes.rename(columns={"width": "img_width", "height": "img_height"}), on="image_id", how="left")
    ann["file_name"] = ann["file_name"].fillna("<no image>")
    # Missing image: compare against an infinite size so only the pairing rule reports it.
    ann["img_width"] = ann["img_width"].fillna(np.inf)
    ann["img_height"] = ann["img_height"].fillna(np.inf)
    ann["x_min_tol"] = ann["x"] + tolerance_px
    ann["y_min_tol"] = ann["y"] + tolerance_px
    ann["x_max_tol"] = ann["x"] + ann["w"] - tolerance_px
    ann["y_max_tol"] = ann["y"] + ann["h"] - tolerance_px
    return ann


def build_rules(image_ids: list[int], category_ids: list[int]) -> list[Rule]:
    """The suite: every rule the canonical tables must satisfy."""
    import great_expectations as gx

    e = gx.expectations
    num_classes = len(category_ids)
    img, ann, cat = ("file_name", "image_id"), ("file_name", "ann_id"), ("category_id", "name")
    return [
        Rule("image ids present", "images", e.ExpectColumnValuesToNotBeNull(column="image_id"), img),
        Rule("image ids unique", "images", e.ExpectColumnValuesToBeUnique(column="image_id"), img),
        Rule("image file names unique", "images", e.ExpectColumnValuesToBeUnique(column="file_name"), img),
        Rule("image file exists", "images", e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]), img),
        Rule("image file decodes", "images", e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]), img),
        Rule("label width matches file", "images",
             e.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"), img),
        Rule("label height matches file", "images",
             e.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"), img),
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
        Rule("class ids unique", "categories", e.ExpectColumnValuesToBeUnique(column="category_id"), cat),
        Rule("class ids contiguous from 1", "categories",
             e.ExpectColumnValuesToBeInSet(column="category_id", value_set=list(range(1, num_classes + 1))), cat),
        Rule("class names unique", "categories", e.ExpectColumnValuesToBeUnique(column="name"), cat),
    ]


def run_rules(tables: dict[str, pd.DataFrame], rules: list[Rule]) -> ValidationReport:
    """Evaluate ``rules`` with GX on ``tables``; offending rows are quoted by their ``ids`` columns."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per rule is noise
    source = context.data_sources.add_pandas("cvpipe")
    report = ValidationReport(counts={name: len(df) for name, df in tables.items()})
    for table, df in tables.items():
        table_rules = [r for r in rules if r.table == table]
        if not table_rules:
            continue
        frame = df.reset_index(drop=True).assign(**{ROW: np.arange(len(df))})
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all").get_batch(
            batch_parameters={"dataframe": frame})
        for rule in table_rules:
            result = batch.validate(rule.expectation, result_format={
                "result_format": "COMPLETE", "unexpected_index_column_names": [ROW, *rule.ids]})
            stats = result.result
            config = result.expectation_config
            report.rules.append({
                "rule": rule.name, "table": table, "success": bool(result.success),
                "expectation": f"{config.type}({', '.join(f'{k}={v}' for k, v in config.kwargs.items() if k not in ('batch_id', 'value_set'))})",
                "element_count": int(stats.get("element_count", len(frame))),
                "unexpected_count": int(stats.get("unexpected_count", 0) or 0),
            })
            if not result.success:
                rows = stats.get("unexpected_index_list") or []
                report.failures[rule.name] = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return report


def quarantine(dataset: CanonicalDataset, report: ValidationReport) -> tuple[CanonicalDataset, list[dict[str, Any]]]:
    """Split off every row a rule rejected; an image takes its annotations with it.

    Returns the clean dataset and one entry per removed row: table, row, ids and the rules it broke.
    """
    bad: dict[tuple[str, int], dict[str, Any]] = {}
    for rule in report.rules:
        for row in report.failures.get(rule["rule"], []):
            key = (rule["table"], int(row[ROW]))
            entry = bad.setdefault(key, {"table": rule["table"], ROW: int(row[ROW]), "rules": [],
                                         **{k: v for k, v in row.items() if k in ("file_name", "image_id", "ann_id")}})
            entry["rules"].append(rule["rule"])
    if any(table == "categories" for table, _ in bad):
        raise DataValidationError(report.message(5) + "\n(class table faults cannot be quarantined: fix the labels)")
    images = dataset.images.reset_index(drop=True)
    annotations = dataset.annotations.reset_index(drop=True)
    bad_images = {row for table, row in bad if table == "images"}
    bad_image_ids = set(images.loc[sorted(bad_images), "image_id"].tolist())
    for idx in np.flatnonzero(annotations["image_id"].isin(bad_image_ids).to_numpy()):
        bad.setdefault(("annotations", int(idx)), {"table": "annotations", ROW: int(idx),
                                                   "ann_id": _plain(annotations.at[idx, "ann_id"]),
                                                   "rules": ["image quarantined"]})
    bad_ann = {row for table, row in bad if table == "annotations"}
    clean = CanonicalDataset(images.drop(index=sorted(bad_images)).reset_index(drop=True),
                             annotations.drop(index=sorted(bad_ann)).reset_index(drop=True),
                             dataset.categories, dataset.image_root)
    return clean, sorted(bad.values(), key=lambda e: (e["table"], e[ROW]))


def validate_dataset(dataset: CanonicalDataset, *, tolerance_px: float) -> ValidationReport:
    """Run the whole suite on a canonical dataset."""
    images = inspect_image_files(dataset.images, dataset.image_root)
    tables = {"images": images, "annotations": annotation_geometry(dataset, tolerance_px),
              "categories": dataset.categories}
    image_ids = [int(i) for i in images["image_id"].dropna().unique()]
    category_ids = [int(i) for i in dataset.categories["category_id"].dropna().unique()]
    return run_rules(tables, build_rules(image_ids, category_ids))
