"""Great Expectations suites over the canonical tables, and the report they produce.

Each rule is one GX expectation with a human name. Derived columns (does the file exist, does it
decode, its upright size and content hash, where does the box end, is the image in two splits) are
computed once here so every rule is a plain column expectation that GX evaluates and reports with the
offending rows. Rules on optional columns (label files, masks) join the suite when an importer wrote them.

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.image_files import inspect_file, orient_boxes, orient_mask
from cvpipe.data.masks import decode_segmentation, encode_mask
from cvpipe.errors import DataValidationError

log = logging.getLogger(__name__)
ROW = "row"  # column carrying the table row number, so reports and quarantine can point at it
SPLIT_PRIORITY = {"train": 0, "val": 1, "test": 2}  # a leaked copy is flagged in the later split
QUOTE_COLUMNS = ("file_name", "image_id", "ann_id", "label_file")  # identify a row; the rest of a row is its value
LIST_COLUMNS = ("segmentation", "mask_values")  # not for GX


@dataclass(frozen=True)
class Rule:
    """One named expectation on one table; ``ids`` are the columns quoted when it fails."""

    name: str
    table: str
    expectation: Any
    ids: tuple[str, ...]


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
                "rules": [{**r, "examples": self.failures.get(r["rule"], [])[:max_examples]} for r in self.rules],
                "normalised": {k: {"count": len(v), "examples": v[:max_examples]} for k, v in self.notes.items()}}


def _describe(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in row.items() if k != ROW)


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars, so reports serialise as JSON."""
    return value.item() if isinstance(value, np.generic) else value


def inspect_image_files(images: pd.DataFrame, image_root: Path) -> pd.DataFrame:
    """One row per image: file_exists, decodes, stored_width/height, orientation, mode, sha1, decode_error."""
    facts = [inspect_file(image_root / str(name)) for name in images["file_name"]]
    return pd.DataFrame({
        # decodes is None for a missing file: GX skips nulls, so only "image file exists" reports it
        "file_exists": [f.exists for f in facts], "decodes": [f.decodes if f.exists else None for f in facts],
        "stored_width": [f.width for f in facts], "stored_height": [f.height for f in facts],
        "upright_width": [f.upright_size[0] for f in facts], "upright_height": [f.upright_size[1] for f in facts],
        "orientation": [f.orientation for f in facts], "mode": [f.mode for f in facts],
        "sha1": [f.sha1 for f in facts], "decode_error": [f.error for f in facts],
    }, index=images.index)


def normalise_orientation(dataset: CanonicalDataset, files: pd.DataFrame, exif_labels: str
                          ) -> tuple[CanonicalDataset, list[dict[str, Any]]]:
    """Map the labels of EXIF-rotated files from stored to upright pixels where they were drawn on the stored
    ones: ``exif_labels`` "stored" / "upright" says so for every file; "auto" decides per file by which size
    the labels give (stored when both fit, as with a 180° turn). An importer's ``label_frame`` column wins."""
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
            if seg is not None:
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


def image_table(dataset: CanonicalDataset, files: pd.DataFrame) -> pd.DataFrame:
    """The images table with the file facts and the derived columns the image rules test."""
    images = pd.concat([dataset.images, files], axis=1)
    # A missing or undecodable file compares equal, so only "exists"/"decodes" report it.
    decoded = images["decodes"].fillna(False).astype(bool)
    images["decoded_width"] = images["upright_width"].where(decoded, images["width"])
    images["decoded_height"] = images["upright_height"].where(decoded, images["height"])
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


def build_rules(image_ids: list[int], category_ids: list[int], image_columns: set[str] | None = None,
                annotation_columns: set[str] | None = None) -> list[Rule]:
    """The suite: every rule the canonical tables must satisfy (optional columns add their rules)."""
    import great_expectations as gx

    e = gx.expectations
    image_columns, annotation_columns = image_columns or set(), annotation_columns or set()
    num_classes = len(category_ids)
    img = ("file_name", "image_id") + (("label_file",) if "label_file" in image_columns else ())
    ann = ("file_name", "ann_id") + (("source_label",) if "source_label" in annotation_columns else ())
    cat = ("category_id", "name")
    optional = [
        ("label_file", Rule("image has a label file", "images", e.ExpectColumnValuesToNotBeNull(column="label_file"),
                            ("file_name", "image_id"))),
        ("label_error", Rule("label file parses", "images", e.ExpectColumnValuesToBeNull(column="label_error"), img)),
        ("mask_out_of_range", Rule("mask values within class range", "images",
                                   e.ExpectColumnValuesToBeNull(column="mask_out_of_range"), img)),
    ]
    return [
        Rule("image ids present", "images", e.ExpectColumnValuesToNotBeNull(column="image_id"), img),
        Rule("image ids unique", "images", e.ExpectColumnValuesToBeUnique(column="image_id"), img),
        Rule("image file names unique", "images", e.ExpectColumnValuesToBeUnique(column="file_name"), img),
        Rule("image file exists", "images", e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]), img),
        Rule("image file decodes", "images", e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
             img + ("decode_error",)),
        *[rule for column, rule in optional if column in image_columns],
        Rule("label width matches file", "images",
             e.ExpectColumnPairValuesToBeEqual(column_A="width", column_B="decoded_width"), img),
        Rule("label height matches file", "images",
             e.ExpectColumnPairValuesToBeEqual(column_A="height", column_B="decoded_height"), img),
        Rule("image in one split only (no leakage)", "images", e.ExpectColumnValuesToBeNull(column="leak_split"),
             img + ("split",)),
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
        raise DataValidationError(report.message(5) + "\n(class table faults cannot be quarantined: fix the labels)")
    images = dataset.images.reset_index(drop=True)
    annotations = dataset.annotations.reset_index(drop=True)
    bad_images = {row for table, row in bad if table == "images"}
    file_of = dict(zip(images["image_id"], images["file_name"]))
    bad_image_ids = set(images.loc[sorted(bad_images), "image_id"].tolist())
    for idx in np.flatnonzero(annotations["image_id"].isin(bad_image_ids).to_numpy()):
        image_id = annotations.at[idx, "image_id"]
        bad.setdefault(("annotations", int(idx)), {"table": "annotations", ROW: int(idx),
                                                   "ann_id": _plain(annotations.at[idx, "ann_id"]),
                                                   "file_name": file_of.get(image_id), "rules": ["image quarantined"],
                                                   "values": [f"image_id={_plain(image_id)}"]})
    bad_ann = {row for table, row in bad if table == "annotations"}
    clean = replace(dataset, images=images.drop(index=sorted(bad_images)).reset_index(drop=True),
                    annotations=annotations.drop(index=sorted(bad_ann)).reset_index(drop=True))
    return clean, sorted(bad.values(), key=lambda e: (e["table"], e[ROW]))


def validate_dataset(dataset: CanonicalDataset, *, tolerance_px: float, out_of_bounds: str = "reject",
                     exif_labels: str = "auto") -> ValidationReport:
    """Inspect the files, normalise orientation (and clip, if asked), then run the whole suite.

    The returned report's ``checked`` dataset has the same rows in the same order as ``dataset``.
    """
    files = inspect_image_files(dataset.images, dataset.image_root)
    dataset, oriented = normalise_orientation(dataset, files, exif_labels)
    clipped: list[dict[str, Any]] = []
    if out_of_bounds == "clip":
        dataset, clipped = clip_boxes(dataset, tolerance_px)
    images = image_table(dataset, files)
    annotations = annotation_geometry(dataset, tolerance_px)
    tables = {"images": images, "annotations": annotations, "categories": dataset.categories}
    image_ids = [int(i) for i in images["image_id"].dropna().unique()]
    category_ids = [int(i) for i in dataset.categories["category_id"].dropna().unique()]
    report = run_rules(tables, build_rules(image_ids, category_ids, set(images.columns), set(annotations.columns)))
    report.notes = {"oriented": oriented, "clipped": clipped}
    report.checked, report.files = dataset, files
    return report
