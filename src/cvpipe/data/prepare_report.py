"""What prepare writes for people: ``reports/prepare.json`` and ``.md`` (the image size, why, and how large each
class's objects are at it; :mod:`cvpipe.data.image_size`) and the MLflow run ``prepare`` in
``<mlflow.experiment>-data`` (:mod:`cvpipe.data.data_runs`), beside the run ``validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvpipe.data.data_runs import log_data_run, metric_name
from cvpipe.data.image_size import LEVEL_REACH


def prepare_report(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON report from ``meta.json`` (:func:`cvpipe.data.prepare.prepare_dataset`): the size choice, the
    split counts, each class's objects per split and the split's warnings, the arrays written and the prepared
    data's hash."""
    return {**meta["image_size_choice"], "splits": meta["splits"], "class_counts": meta.get("class_counts", {}),
            "split_warnings": meta.get("split_warnings", []), "arrays": meta.get("arrays", {}),
            "data_hash": meta["data_hash"]}


def _px(value: float) -> str:
    return f"{value:g}"


def write_markdown(report: dict[str, Any], path: str | Path) -> None:
    """A readable ``prepare.md`` from :func:`prepare_report`."""
    size, rule, inputs = report["image_size"], report["rule"], report["inputs"]
    p = rule["percentile"]
    how = "auto" if report["requested"] == "auto" else "set in params.yaml"
    lines = [f"# Prepared data: {size} px ({how})", "", f"Image size **{size} px**: {report['reason']}.", "",
             f"Rule of `prepare.image_size: auto`: the smallest multiple of {rule['size_multiple']} px at which, in "
             f"every class, the {p:g}th percentile of object short sides is at least {rule['min_object_px']:g} px "
             f"(`auto_min_object_px`, `auto_percentile`), within [{rule['min_size']}, min({rule['max_size']}, the "
             f"images' median longer side)] px (`auto_min_size`, `auto_max_size`); measured on the train split "
             f"({inputs['images']} images, {inputs['objects']} objects; median longer side "
             f"{_px(inputs['median_long_side_px'])} px).", ""]
    if report["classes"]:
        stride = report["finest_stride"]
        lines += [f"## Objects at {size} px (train split)", "",
                  f"| class | objects | short side, {p:g}th pct (px) | median short side (px) | "
                  f"long side, {100 - p:g}th pct (px) | under stride {stride} |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['name']} | {c['objects']} | {_px(c['low_short_side_px'])} | {_px(c['median_short_side_px'])} "
                  f"| {_px(c['high_long_side_px'])} | {100 * c['below_stride_fraction']:.1f}% |"
                  for c in report["classes"]]
        levels = report["levels"]
        low, high = levels["object_range_px"]
        verdict = "covered" if levels["covers"] else f"not covered: strides {levels['suggested']} would cover it"
        lines += ["", "## Detector levels", "",
                  f"The built-in grid detectors' default strides {levels['strides']} (yolo, yolact) see objects from "
                  f"{levels['reach_px'][0]} px (one cell of the finest level) to {levels['reach_px'][1]} px "
                  f"({LEVEL_REACH} × the coarsest stride); the objects here span {_px(low)}–{_px(high)} px "
                  f"({p:g}th-percentile short side to {100 - p:g}th-percentile long side): {verdict}. For a detector "
                  f"configured with other levels, compare its `models.<name>.train.model.strides` with these numbers "
                  f"(a level of stride s takes objects up to {LEVEL_REACH}·s px).", ""]
    else:
        lines += ["Every box is its whole image (classification data) or there is none: no object sizes to check.",
                  ""]
    lines += ["## Warnings", ""] + ([f"- {w}" for w in report["warnings"] + report["split_warnings"]] or ["none"])
    lines += ["", "## Splits", "", "| split | images | objects | crops |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['images']} | {s['objects']} | {s['crops']} |" for name, s in report["splits"].items()]
    if report["class_counts"]:
        splits = list(report["class_counts"])
        lines += ["", "Objects per class and split (rule 'class in train': `prepare.class_absent_from_train`):", "",
                  "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        lines += [f"| {name} | " + " | ".join(str(report["class_counts"][s][name]) for s in splits) + " |"
                  for name in report["class_counts"][splits[0]]]
    if report["arrays"]:
        arrays, models = report["arrays"]["arrays"], report["arrays"]["models"]
        why = ", ".join(f"{m} ({t})" for m, t in models.items()) or "a library call: every array the data allows"
        lines += ["", f"Arrays written beside the boxes: {', '.join(arrays) or 'none'}; for {why}."]
    lines += ["", f"Prepared data hash: `{report['data_hash']}`.", ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines), encoding="utf-8")


def write_reports(meta: dict[str, Any], json_path: str | Path, md_path: str | Path) -> dict[str, Any]:
    """Write ``prepare.json`` and ``prepare.md``; returns the report."""
    report = prepare_report(meta)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    write_markdown(report, md_path)
    return report


def log_to_mlflow(report: dict[str, Any], artifacts: list[Path], *, experiment: str) -> str:
    """One run named ``prepare`` in ``<experiment>-data``: the requested size and the rule as params, the chosen
    and the auto size, warnings and per class the low-tail short side and the fraction under the finest stride
    (px at the chosen size) as metrics, the data hash and the reason as tags, the reports as artifacts."""
    metrics: dict[str, float] = {"image_size": report["image_size"], "auto_image_size": report["auto_size"],
                                 "size_warnings": len(report["warnings"]),
                                 "split_warnings": len(report["split_warnings"])}
    for split, per_class in report["class_counts"].items():
        for name, count in per_class.items():
            metrics[f"objects_{split}_{metric_name(name)}"] = count
    for c in report["classes"]:
        metrics[f"low_short_side_px_{metric_name(c['name'])}"] = c["low_short_side_px"]
        metrics[f"below_stride_fraction_{metric_name(c['name'])}"] = c["below_stride_fraction"]
    params = {"image_size": report["requested"], **{f"auto_{k}": v for k, v in report["rule"].items()}}
    tags = {"data_hash": report["data_hash"], "image_size_reason": report["reason"][:5000],
            "levels_cover_objects": str(report["levels"]["covers"]).lower()}
    return log_data_run("prepare", experiment=experiment, tags=tags, metrics=metrics, params=params,
                        artifacts=artifacts, artifact_dir="prepare")
