"""Great Expectations suites over the canonical tables, and the report they produce.

Each rule is one GX expectation with a human name (the suite: :mod:`cvpipe.data.validation_rules`).
Derived columns (does the file exist, is it a regular file, does it decode, its upright size and content
hash, does its name stay inside data.path, where does the box end, is the segmentation decodable, is the
image in two splits) are computed once here and in :mod:`cvpipe.data.validation_columns`, so every rule is
a plain column expectation that GX evaluates and reports with the offending rows. Rules on optional
columns (label files, masks, COCO field types, bad label lines) join the suite when an importer wrote them.

One fault, one rule: a row that already breaks a rule of its own (a label line that does not parse, a
COCO field of the wrong type) or whose image file is unusable gets neutral stand-ins in the derived
columns of the other rules, as an annotation of a missing image compares against an infinite size.

Before the rules run, the dataset is normalised (both steps listed in the report):
- EXIF orientation: boxes and masks drawn on the stored pixels of a rotated file are mapped to the
  upright frame that :func:`cvpipe.data.image_files.open_rgb` (and so prepare) reads (``exif_labels``);
- ``out_of_bounds="clip"``: a box beyond the tolerance is clipped to the image (one that leaves nothing
  still breaks "box width/height positive").

On failure: ``on_error="fail"`` raises :class:`DataValidationError` whose message names each broken
rule, its count and the first offending files and values; ``on_error="quarantine"`` removes the
offending rows (an image takes its annotations with it), lists every removed row with the rule it
broke, and keeps everything else: kept + quarantined always equals the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.importers.common import UNKNOWN_CLASS
from cvpipe.data.validation_normalise import clip_boxes, normalise_orientation
from cvpipe.data.validation_columns import (blank_labels, category_table, inspect_images, outside_reasons,
                                            refused_outside, segmentation_errors, usable)
from cvpipe.data.validation_rules import Rule, build_rules
from cvpipe.errors import DataValidationError

log = logging.getLogger(__name__)
ROW = "row"  # column carrying the table row number, so reports and quarantine can point at it
SPLIT_PRIORITY = {"train": 0, "val": 1, "test": 2}  # a leaked copy is flagged in the later split
QUOTE_COLUMNS = ("file_name", "image_id", "ann_id", "label_file")  # identify a row; the rest of a row is its value
LIST_COLUMNS = ("segmentation", "mask_values")  # not for GX


@dataclass
class ValidationReport:
    """Outcome per rule; ``failures`` maps rule name → list of offending rows (dicts).

    ``checked`` is the normalised dataset the rules ran on (the one to save or quarantine), ``notes`` what
    normalisation changed (``oriented`` images, ``clipped`` boxes), ``files`` the per-image file facts.
    """

    rules: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    checked: CanonicalDataset | None = None
    files: pd.DataFrame | None = None

    @property
    def success(self) -> bool:
        return not self.failures

    def message(self, max_examples: int, tables: tuple[str, ...] | None = None) -> str:
        """One line per broken rule (of ``tables`` only, when given): rule, table, count, first offenders."""
        broken = [r for r in self.rules if not r["success"] and (tables is None or r["table"] in tables)]
        lines = [f"dataset validation failed: {len(broken)} rule(s) broken"]
        for rule in broken:
            rows = self.failures[rule["rule"]]
            examples = "; ".join(_describe(r) for r in rows[:max_examples])
            lines.append(f"  - rule '{rule['rule']}' on {rule['table']}: {rule['unexpected_count']} of "
                         f"{rule['element_count']} rows fail ({rule['expectation']}); first: {examples}")
        return "\n".join(lines)

    def to_dict(self, max_examples: int) -> dict[str, Any]:
        return {"success": self.success, "counts": self.counts,
                "rules": [{**r, "examples": self.failures.get(r["rule"], [])[:max_examples]} for r in self.rules],
                "normalised": {k: {"count": len(v), "examples": v[:max_examples]} for k, v in self.notes.items()}}


def _describe(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in row.items() if k != ROW)


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars, so reports serialise as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def image_table(dataset: CanonicalDataset, files: pd.DataFrame, outside: list[str | None]) -> pd.DataFrame:
    """The images table with the file facts and the derived columns the image rules test; ``outside`` is
    the per-row reason a name leaves data.path (None where it stays inside or that is allowed)."""
    images = pd.concat([dataset.images, files], axis=1)
    images["outside_data_path"] = outside
    images["id_present"] = images["image_id"].notna().astype(object)
    if "field_error" in images:  # a mistyped id, width or height: "image fields well-typed" alone reports it
        images.loc[images["field_error"].notna(), ["width", "height"]] = np.nan
        images.loc[images["field_error"].notna(), "id_present"] = None
    # A missing or undecodable file compares equal, so only "exists"/"decodes" report it.
    decoded = usable(files)
    images["decoded_width"] = images["upright_width"].where(decoded, images["width"]).astype(float)
    images["decoded_height"] = images["upright_height"].where(decoded, images["height"]).astype(float)
    unsized = images["width"].isna() | images["height"].isna()  # labels gave no size: another rule says why
    images.loc[unsized, ["decoded_width", "decoded_height"]] = images.loc[unsized, ["width", "height"]].to_numpy()
    images["leak_split"] = _leaked_into(images)
    if "mask_values" in images:
        known = set(dataset.categories["category_id"].dropna().astype(int))
        images["mask_out_of_range"] = [
            None if not isinstance(v, list) else (", ".join(str(x) for x in v if x not in known) or None)
            for v in images["mask_values"]]
    return images.drop(columns=[c for c in LIST_COLUMNS if c in images])


def _leaked_into(images: pd.DataFrame) -> list[str | None]:
    """Per image: the earlier split (train < val < test) holding a byte-identical file, else None."""
    rank = images["split"].map(SPLIT_PRIORITY)
    first = pd.DataFrame({"sha1": images["sha1"], "rank": rank}).dropna().groupby("sha1")["rank"].min()
    names = {v: k for k, v in SPLIT_PRIORITY.items()}
    out = []
    for sha, r in zip(images["sha1"], rank):
        earliest = first.get(sha) if isinstance(sha, str) else None
        out.append(names[int(earliest)] if earliest is not None and not np.isnan(r) and earliest < r else None)
    return out


def annotation_geometry(dataset: CanonicalDataset, tolerance_px: float, *, segmentation_error: list[str | None],
                        unusable_image_ids: set[Any]) -> pd.DataFrame:
    """Annotations with their image's size and file name, box ends, non-finite values as NaN,
    ``segmentation_error`` and (when the source labels are text) ``blank_label``.

    Neutral stand-ins (see the module docstring): rows with their own ``parse_error``/``field_error`` get a
    unit box and a known class; annotations of an image whose file is unusable, or of no image, an
    infinite image size."""
    ann = dataset.annotations.drop(columns=["segmentation"]).replace([np.inf, -np.inf], np.nan)
    ann = ann.reset_index(drop=True)
    ann["segmentation_error"] = segmentation_error
    if "source_label" in ann:
        ann["blank_label"] = blank_labels(ann)
    own = pd.Series(False, index=ann.index)
    for column in ("parse_error", "field_error"):
        if column in ann:
            own |= ann[column].notna()
    ann.loc[own, ["x", "y", "w", "h"]] = [0.0, 0.0, 1.0, 1.0]
    known = dataset.categories["category_id"].dropna()
    known = known[known != UNKNOWN_CLASS]
    blank = ann["blank_label"] if "blank_label" in ann else pd.Series(False, index=ann.index)
    if len(known):  # a blank label is "class label not empty" alone, not also an unknown class
        ann.loc[own | blank, "category_id"] = known.iloc[0]
    if "blank_label" in ann:
        ann.loc[own, "blank_label"] = False
    # Each annotation quotes its image's file and label file; an annotation whose image_id is missing
    # (NaN) matches no image, not every image that also lacks an id.
    columns = ["image_id", "file_name", "width", "height"] + (
        ["label_file"] if "label_file" in dataset.images and "label_file" not in ann else [])
    sizes = dataset.images[columns].dropna(subset=["image_id"]).drop_duplicates("image_id")
    ann = ann.merge(sizes.rename(columns={"width": "img_width", "height": "img_height"}), on="image_id", how="left")
    ann["file_name"] = ann["file_name"].fillna("<no image>")
    ann[["img_width", "img_height"]] = ann[["img_width", "img_height"]].astype(float)
    # Missing or unusable image: compare against an infinite size so only the image's rule reports it.
    ann.loc[ann["image_id"].isin(unusable_image_ids), ["img_width", "img_height"]] = np.inf
    ann.loc[ann["image_id"].isin(unusable_image_ids), ["x", "y", "w", "h"]] = [0.0, 0.0, 1.0, 1.0]
    ann["img_width"] = ann["img_width"].fillna(np.inf)
    ann["img_height"] = ann["img_height"].fillna(np.inf)
    ann["x_min_tol"] = ann["x"] + tolerance_px
    ann["y_min_tol"] = ann["y"] + tolerance_px
    ann["x_max_tol"] = ann["x"] + ann["w"] - tolerance_px
    ann["y_max_tol"] = ann["y"] + ann["h"] - tolerance_px
    return ann


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

    Returns the clean dataset and one entry per removed row: table, row, ids, the rules it broke and the
    offending ``values`` (one per rule, in the same order).
    """
    bad: dict[tuple[str, int], dict[str, Any]] = {}
    for rule in report.rules:
        for row in report.failures.get(rule["rule"], []):
            key = (rule["table"], int(row[ROW]))
            entry = bad.setdefault(key, {"table": rule["table"], ROW: int(row[ROW]), "rules": [], "values": [],
                                         **{k: v for k, v in row.items() if k in QUOTE_COLUMNS}})
            entry["rules"].append(rule["rule"])
            entry["values"].append(", ".join(f"{k}={_plain(v)}" for k, v in row.items()
                                             if k not in QUOTE_COLUMNS and k != ROW))
    if any(table == "categories" for table, _ in bad):
        raise DataValidationError(report.message(5, tables=("categories",))
                                  + "\n(class table faults cannot be quarantined: fix the class names or ids)")
    images = dataset.images.reset_index(drop=True)
    annotations = dataset.annotations.reset_index(drop=True)
    bad_images = {row for table, row in bad if table == "images"}
    file_of = dict(zip(images["image_id"], images["file_name"]))
    label_of = dict(zip(images["image_id"], images["label_file"])) if "label_file" in images else {}
    bad_image_ids = set(images.loc[sorted(bad_images), "image_id"].dropna().tolist())  # NaN would match NaN
    for idx in np.flatnonzero(annotations["image_id"].isin(bad_image_ids).to_numpy()):
        image_id = annotations.at[idx, "image_id"]
        bad.setdefault(("annotations", int(idx)), {"table": "annotations", ROW: int(idx),
                                                   "ann_id": _plain(annotations.at[idx, "ann_id"]),
                                                   "file_name": file_of.get(image_id),
                                                   "label_file": label_of.get(image_id), "rules": ["image quarantined"],
                                                   "values": [f"image_id={_plain(image_id)}"]})
    bad_ann = {row for table, row in bad if table == "annotations"}
    clean = replace(dataset, images=images.drop(index=sorted(bad_images)).reset_index(drop=True),
                    annotations=annotations.drop(index=sorted(bad_ann)).reset_index(drop=True))
    return clean, sorted(bad.values(), key=lambda e: (e["table"], e[ROW]))


def validate_dataset(dataset: CanonicalDataset, *, tolerance_px: float, out_of_bounds: str = "reject",
                     exif_labels: str = "auto", outside_paths: list[str] | tuple[str, ...] = (),
                     workers: int = 1) -> ValidationReport:
    """Inspect the files (read and decoded in ``workers`` processes; the report is the same for any number),
    check segmentations, normalise orientation (and clip, if asked), run the suite.

    A file name outside data.path (absolute, or ``..`` climbing out) breaks "file name inside data.path"
    and the file is never opened, unless it lies inside one of ``outside_paths`` (``validate.outside_paths``):
    then it is checked like any other and listed under the report's ``outside_data_path`` note. Segmentations
    that break "segmentation valid" are never decoded. An image whose labels give no size takes the size of
    its decoded file (as the VOC importer does for an empty ``<size>``). The returned report's ``checked``
    dataset has the same rows in the same order as ``dataset``.
    """
    outside = outside_reasons(dataset)
    refused = refused_outside(dataset, outside, tuple(outside_paths))
    unnamed = dataset.images["name_error"].notna() if "name_error" in dataset.images else [False] * len(refused)
    files = inspect_images(dataset, [reason is not None or bool(bad) for reason, bad in zip(refused, unnamed)],
                           workers=workers)
    dataset = _sizes_from_files(dataset, files)
    seg_errors = segmentation_errors(dataset)
    bad_segmentations = {k for k, error in enumerate(seg_errors) if error is not None}
    dataset, oriented = normalise_orientation(dataset, files, exif_labels, bad_segmentations)
    clipped: list[dict[str, Any]] = []
    if out_of_bounds == "clip":
        dataset, clipped = clip_boxes(dataset, tolerance_px)
    images = image_table(dataset, files, refused)
    unusable = set(dataset.images.loc[~usable(files), "image_id"].dropna())
    annotations = annotation_geometry(dataset, tolerance_px, segmentation_error=seg_errors,
                                      unusable_image_ids=unusable)
    categories = category_table(dataset.categories)
    tables = {"images": images, "annotations": annotations, "categories": categories}
    image_ids = [int(i) for i in images["image_id"].dropna().unique()]
    category_ids = [int(i) for i in dataset.categories["category_id"].dropna().unique() if i != UNKNOWN_CLASS]
    report = run_rules(tables, build_rules(image_ids, category_ids, set(images.columns), set(annotations.columns),
                                           set(categories.columns)))
    report.notes = {"oriented": oriented, "clipped": clipped,
                    "outside_data_path": [{"file_name": name, "reason": reason} for name, reason, no
                                          in zip(dataset.images["file_name"], outside, refused)
                                          if reason is not None and no is None]}
    report.checked, report.files = dataset, files
    return report


def _sizes_from_files(dataset: CanonicalDataset, files: pd.DataFrame) -> CanonicalDataset:
    """Fill a missing label width/height (NaN) from the decoded upright file, where the row has no
    ``field_error`` of its own (a mistyped COCO size is reported, never replaced)."""
    images = dataset.images
    unsized = (images["width"].isna() | images["height"].isna()) & usable(files)
    if "field_error" in images:
        unsized &= images["field_error"].isna()
    if not unsized.any():
        return dataset
    images = images.copy()
    images.loc[unsized, "width"] = files.loc[unsized, "upright_width"].astype(float)
    images.loc[unsized, "height"] = files.loc[unsized, "upright_height"].astype(float)
    return replace(dataset, images=images)
