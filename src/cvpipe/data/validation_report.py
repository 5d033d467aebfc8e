"""What validation writes for people: the outcome, dataset statistics, ``validation.md``, ``quarantine.csv``.

Both reports open with the outcome (:func:`outcome`): ``passed``, ``passed with quarantine`` (rows were set aside
under ``validate.on_error: quarantine`` and the run went on with the rest) or ``FAILED`` (the run stopped).

``quarantine.csv`` has one line per (removed row, broken rule): ``file, rule, value, table, ann_id, label_file``, so a
quarantined image and each of its annotations can be found again; ``reports/validation.json`` holds the
same items with their counts.

Objects add up (:func:`object_counts`): input = kept + quarantined + unparsed, where unparsed are the objects
inside label files that were read but do not parse (a malformed VOC XML, a YOLO file that is not UTF-8), which
the importer counts from the raw bytes and never imports.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.data_runs import log_data_run, metric_name

SMALL, MEDIUM = 32 ** 2, 96 ** 2  # px², COCO's object size bins
TINY_SIDE = 4  # px: boxes narrower than this are hard for any detector at the prepared size
QUARANTINE_COLUMNS = ["file", "rule", "value", "table", "ann_id", "label_file"]


def _quantiles(values: pd.Series) -> dict[str, float]:
    values = values.replace([np.inf, -np.inf], np.nan).dropna()
    if values.empty:
        return {}
    q = values.quantile([0.0, 0.05, 0.5, 0.95, 1.0]).round(2).tolist()
    return dict(zip(("min", "p5", "median", "p95", "max"), q))


def dataset_stats(dataset: CanonicalDataset, files: pd.DataFrame | None = None) -> dict[str, Any]:
    """Class balance, box sizes, image sizes/modes/splits, negatives and duplicate files."""
    images, ann = dataset.images, dataset.annotations
    names = dict(zip(dataset.categories["category_id"], dataset.categories["name"]))
    objects = ann[ann["iscrowd"] == 0]
    per_class = objects.groupby("category_id").agg(objects=("ann_id", "size"), images=("image_id", "nunique"))
    total = max(1, int(per_class["objects"].sum())) if len(per_class) else 1
    balance = [{"category_id": int(k), "name": str(names.get(k, "?")), "objects": int(r.objects),
                "images": int(r.images), "fraction": round(int(r.objects) / total, 4)} for k, r in per_class.iterrows()]
    area = objects["w"] * objects["h"]
    stats: dict[str, Any] = {
        "images": len(images),
        "splits": {str(k): int(v) for k, v in images["split"].fillna("unassigned").value_counts().items()},
        "negative_images": int((~images["image_id"].isin(ann["image_id"])).sum()),
        "image_width": _quantiles(images["width"]), "image_height": _quantiles(images["height"]),
        "class_balance": balance,
        "boxes": {"count": len(objects), "crowd_or_difficult": int((ann["iscrowd"] != 0).sum()),
                  "width": _quantiles(objects["w"]), "height": _quantiles(objects["h"]), "area": _quantiles(area),
                  "small": int((area < SMALL).sum()), "medium": int(((area >= SMALL) & (area < MEDIUM)).sum()),
                  "large": int((area >= MEDIUM).sum()),
                  f"tiny_side_lt_{TINY_SIDE}px": int(((objects["w"] < TINY_SIDE) | (objects["h"] < TINY_SIDE)).sum())},
    }
    if files is not None:
        stats["modes"] = {str(k): int(v) for k, v in files["mode"].dropna().value_counts().items()}
        stats["exif_rotated_files"] = int((files["orientation"] != 1).sum())
        dup = files["sha1"].dropna()
        stats["duplicate_files"] = int(dup.duplicated(keep="first").sum())  # beyond the first copy of each
    return stats


def object_counts(checked: CanonicalDataset | None, kept: CanonicalDataset, quarantined_annotations: int,
                  max_examples: int) -> dict[str, Any]:
    """``input`` = ``kept`` + ``quarantined`` + ``unparsed`` objects, and the first label files (with their
    counts) whose objects could not be imported. ``unparsed`` sums the importer's per-image
    ``unparsed_objects`` column of ``checked`` (absent: 0)."""
    images = checked.images if checked is not None else kept.images
    files: list[dict[str, Any]] = []
    if "unparsed_objects" in images:
        counted = pd.to_numeric(images["unparsed_objects"], errors="coerce").fillna(0).astype(int)
        where = images.loc[counted > 0]
        files = [{"label_file": label, "file_name": name, "objects": int(n)} for label, name, n in
                 zip(where["label_file"], where["file_name"], counted[counted > 0])]
    unparsed = sum(f["objects"] for f in files)
    return {"input": len(kept.annotations) + quarantined_annotations + unparsed, "kept": len(kept.annotations),
            "quarantined": quarantined_annotations, "unparsed": unparsed, "unparsed_files": len(files),
            "unparsed_examples": files[:max_examples]}


def outcome(*, success: bool, on_error: str, quarantine: dict[str, Any], stopped: str | None,
            quarantine_file: str, unparsed: int = 0) -> tuple[str, str]:
    """(status, headline) of a validation run, the first thing its reports say.

    ``passed``: every rule holds and the run goes on. ``passed with quarantine``: rules broke, ``on_error`` is
    ``quarantine`` and the offending rows were set aside, so the run goes on with the rest. ``FAILED``: the run
    stops, because rules broke under ``on_error: fail`` or ``stopped`` (nothing left, or a fault quarantine
    cannot set aside) says why. ``unparsed`` objects (in label files that do not parse) are named in the
    quarantine headline: they were not imported, so neither set aside nor kept as rows."""
    kept = quarantine["kept"]
    if stopped is not None:
        return "FAILED", f"FAILED: {stopped}; the run stopped."
    if success:
        return "passed", (f"PASSED: every rule holds; the run continued with {kept['images']} images and "
                          f"{kept['annotations']} annotations.")
    if on_error == "quarantine":
        return "passed with quarantine", (
            f"PASSED WITH QUARANTINE: {quarantine['images']} images / {quarantine['annotations']} annotations set "
            f"aside (see {quarantine_file}); the run continued with {kept['images']} images and "
            f"{kept['annotations']} annotations." + (f" {unparsed} objects in unparseable label files were not "
                                                     "imported." if unparsed else ""))
    return "FAILED", ("FAILED: rules broken (below); the run stopped (validate.on_error: fail; 'quarantine' sets "
                      "the offending rows aside and goes on).")


def summary(report: Any, stats: dict[str, Any], quarantined: list[dict[str, Any]], kept: CanonicalDataset,
            max_examples: int, source: dict[str, Any], *, on_error: str = "fail", stopped: str | None = None,
            quarantine_file: str = "quarantine.csv") -> dict[str, Any]:
    """The JSON report: the outcome (:func:`outcome`) first, then rules, normalisation, statistics, the object
    counts (:func:`object_counts`) and the quarantine with its counts."""
    by_table = {t: sum(1 for q in quarantined if q["table"] == t) for t in ("images", "annotations")}
    quarantine = {"count": len(quarantined), "images": by_table["images"], "annotations": by_table["annotations"],
                  "kept": {"images": len(kept.images), "annotations": len(kept.annotations)}, "items": quarantined}
    objects = object_counts(report.checked, kept, by_table["annotations"], max_examples)
    status, headline = outcome(success=report.success, on_error=on_error, quarantine=quarantine, stopped=stopped,
                               quarantine_file=quarantine_file, unparsed=objects["unparsed"])
    return {"status": status, "headline": headline, **report.to_dict(max_examples), "source": source,
            "stats": stats, "objects": objects, "quarantine": quarantine}


def write_quarantine_csv(items: list[dict[str, Any]], path: str | Path) -> int:
    """One line per (row, rule); written (header only) even when nothing was quarantined. Returns lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(QUARANTINE_COLUMNS)
        for item in items:
            for rule, value in zip(item["rules"], item["values"]):
                writer.writerow([item.get("file_name", ""), rule, value, item["table"], item.get("ann_id", ""),
                                 item.get("label_file", "")])
                lines += 1
    return lines


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(data: dict[str, Any], path: str | Path, max_examples: int) -> None:
    """A readable ``validation.md`` from the JSON report."""
    lines = [f"# Dataset validation: {data['status']}", "", f"**{data['headline']}**", "",
             f"Source: `{data['source'].get('source')}` at `{data['source'].get('path')}`; "
             f"{data['counts'].get('images', 0)} images, {data['counts'].get('annotations', 0)} annotations, "
             f"{data['counts'].get('categories', 0)} classes.", "", "## Rules", "",
             "| rule | table | result | failing rows | first offending rows |", "|---|---|---|---|---|"]
    for rule in data["rules"]:
        examples = "; ".join(", ".join(f"{k}={v}" for k, v in ex.items() if k != "row")
                             for ex in rule["examples"][:max_examples])
        lines.append(f"| {_cell(rule['rule'])} | {rule['table']} | {'ok' if rule['success'] else '**broken**'} | "
                     f"{rule['unexpected_count']} of {rule['element_count']} | {_cell(examples)} |")
    lines += ["", "## Normalised before the rules", ""]
    for name, note in data["normalised"].items():
        lines.append(f"- {name}: {note['count']}" + (f" (first: {_cell(note['examples'][:max_examples])})"
                                                      if note["count"] else ""))
    q, objects = data["quarantine"], data["objects"]
    lines += ["", "## Quarantine", "", f"{q['images']} images and {q['annotations']} annotations set aside; kept "
              f"{q['kept']['images']} images and {q['kept']['annotations']} annotations.", "",
              f"Objects: {objects['input']} in the source = {objects['kept']} kept + {objects['quarantined']} "
              f"quarantined + {objects['unparsed']} in unparseable label files (not imported)."]
    if objects["unparsed"]:
        first = ", ".join(f"{f['label_file']} ({f['objects']})" for f in objects["unparsed_examples"])
        lines += ["", f"- objects in unparseable label files: {objects['unparsed']} (not imported), in "
                      f"{objects['unparsed_files']} file(s); first: {_cell(first)}"]
    stats = data["stats"]
    lines += ["", "## Statistics", "", f"- splits: {stats['splits']}", f"- images without objects (negatives): "
              f"{stats['negative_images']}", f"- image width: {stats['image_width']}",
              f"- image height: {stats['image_height']}", f"- modes: {stats.get('modes', {})}",
              f"- EXIF-rotated files: {stats.get('exif_rotated_files', 0)}",
              f"- duplicate files (same content): {stats.get('duplicate_files', 0)}",
              "", "| class | objects | images | fraction |", "|---|---|---|---|"]
    lines += [f"| {_cell(c['name'])} | {c['objects']} | {c['images']} | {c['fraction']:.3f} |"
              for c in stats["class_balance"]]
    boxes = stats["boxes"]
    lines += ["", f"Boxes: {boxes['count']} (+{boxes['crowd_or_difficult']} crowd/difficult); small/medium/large "
              f"{boxes['small']}/{boxes['medium']}/{boxes['large']}; width {boxes['width']}; height {boxes['height']}.",
              ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def log_to_mlflow(data: dict[str, Any], artifacts: list[Path], *, experiment: str) -> str:
    """One run named ``validate`` in the experiment ``<experiment>-data`` (:mod:`cvpipe.data.data_runs`):
    input/kept/quarantined/unparsed counts and failing rows per rule as metrics, the outcome as tags, the reports as
    artifacts. Returns the run id."""
    q = data["quarantine"]
    metrics = {"images_in": data["counts"].get("images", 0), "annotations_in": data["counts"].get("annotations", 0),
               "images_kept": q["kept"]["images"], "annotations_kept": q["kept"]["annotations"],
               "quarantined_images": q["images"], "quarantined_annotations": q["annotations"],
               "unparsed_objects": data["objects"]["unparsed"],
               "broken_rules": sum(not r["success"] for r in data["rules"]),
               **{f"normalised_{k}": v["count"] for k, v in data["normalised"].items()}}
    metrics.update({"rule_" + metric_name(r["rule"]): r["unexpected_count"] for r in data["rules"]})
    tags = {"data_source": str(data["source"].get("source")), "data_path": str(data["source"].get("path")),
            "success": str(data["success"]), "status": data["status"]}
    return log_data_run("validate", experiment=experiment, tags=tags, metrics=metrics, artifacts=artifacts,
                        artifact_dir="validation")
