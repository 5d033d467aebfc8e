"""prepare.image_size: auto (cvpipe.data.image_size) against hand-computed cases, its report, and the validation
report's outcome line under quarantine."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from cvpipe.config import PrepareConfig, from_section, load_config
from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.image_size import BUILTIN_STRIDES, AutoSizeRule, choose_image_size, level_check
from cvpipe.data.importers import import_dataset
from cvpipe.data.prepare import prepare_dataset
from cvpipe.data.prepare_report import write_reports
from cvpipe.data.synthetic import generate_shapes
from cvpipe.data.validation import ValidationReport
from cvpipe.data.validation_report import summary, write_markdown
from cvpipe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RULE = AutoSizeRule()  # 8 px at the 5th percentile, within [128, 640]


def tables(width: int, height: int, boxes: dict[str, list[tuple[float, float]]], *, images: int = 10,
           whole_image: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, str]]:
    """``images`` images of width×height; per class name, (w, h) boxes spread over them round-robin."""
    image_rows = [{"image_id": i + 1, "file_name": f"{i}.jpg", "width": width, "height": height, "split": None}
                  for i in range(images)]
    names, rows = {}, []
    for k, (name, sizes) in enumerate(boxes.items(), start=1):
        names[k] = name
        for j, (w, h) in enumerate(sizes):
            rows.append({"ann_id": len(rows) + 1, "image_id": j % images + 1, "category_id": k,
                         "x": 0.0 if whole_image else 5.0, "y": 0.0 if whole_image else 5.0, "w": float(w),
                         "h": float(h), "area": float(w * h), "iscrowd": 0, "segmentation": None})
    return pd.DataFrame(image_rows), pd.DataFrame(rows), names


def test_small_objects_in_640x480_photos_get_the_smallest_size_that_keeps_them_8px():
    # 12 px of 640 → need 8 / (12/640) = 426.7 → 448; the 150-px class does not limit anything
    images, ann, names = tables(640, 480, {"bird": [(12, 14)] * 40, "car": [(150, 100)] * 40})
    choice = choose_image_size(images, ann, names, requested="auto", rule=RULE)
    assert choice["image_size"] == 448 and choice["auto_size"] == 448
    assert choice["inputs"]["limiting_class"] == "bird" and choice["inputs"]["needed_size"] == 448
    bird = next(c for c in choice["classes"] if c["name"] == "bird")
    assert bird["low_short_side_px"] == pytest.approx(12 * 448 / 640) and bird["below_stride_fraction"] == 0
    assert not [w for w in choice["warnings"] if w.startswith("class ")]  # no class below the finest stride
    assert "smallest multiple of 32" in choice["reason"] and "'bird'" in choice["reason"]
    json.dumps(choice)  # goes into meta.json as it is


def test_the_low_tail_of_the_smallest_class_decides_not_the_pooled_objects():
    # 3 % of all objects are 10-px birds: a pooled 5th percentile would miss them, the per-class one does not
    images, ann, names = tables(640, 480, {"bird": [(10, 10)] * 3, "car": [(200, 150)] * 97})
    assert choose_image_size(images, ann, names, requested="auto", rule=RULE)["image_size"] == 512  # 8·64 = 512


def test_cap_by_auto_max_size_and_by_the_source_and_the_floor():
    tiny = {"speck": [(4, 4)] * 20}
    capped = choose_image_size(*tables(640, 480, tiny), requested="auto", rule=RULE)  # needs 1280
    assert capped["image_size"] == 640 and "auto_max_size 640" in capped["reason"]
    assert capped["classes"][0]["low_short_side_px"] == 4.0 and len(capped["warnings"]) == 1
    source = choose_image_size(*tables(300, 200, tiny), requested="auto", rule=RULE)  # needs 600; source 300 → 288
    assert source["image_size"] == 288 and "capped by the source" in source["reason"]
    floor = choose_image_size(*tables(640, 480, {"car": [(200, 150)] * 20}), requested="auto", rule=RULE)
    assert floor["image_size"] == 128 and "floor" in floor["reason"]  # 32 px would keep 200-px cars ≥ 8 px
    small_images = choose_image_size(*tables(100, 80, {"cell": [(20, 20)] * 20}), requested="auto", rule=RULE)
    assert small_images["image_size"] == 96 and "smaller than the floor" in small_images["reason"]
    wider = AutoSizeRule(min_object_px=8, percentile=5, min_size=64, max_size=1024)
    assert choose_image_size(*tables(2000, 1500, tiny), requested="auto", rule=wider)["image_size"] == 1024


def test_classification_data_uses_the_floor_within_the_source_and_has_no_object_sizes():
    images, ann, names = tables(500, 375, {"cat": [(500, 375)] * 5, "dog": [(500, 375)] * 5}, whole_image=True)
    choice = choose_image_size(images, ann, names, requested="auto", rule=RULE)
    assert choice["image_size"] == 128 and "classification" in choice["reason"]
    assert choice["classes"] == [] and choice["warnings"] == [] and choice["levels"]["covers"]


def test_an_explicit_integer_is_kept_and_warns_about_objects_below_the_finest_stride():
    images, ann, names = tables(640, 480, {"bird": [(12, 14)] * 40, "car": [(150, 100)] * 40})
    choice = choose_image_size(images, ann, names, requested=128, rule=RULE)
    assert choice["image_size"] == 128 and choice["auto_size"] == 448
    assert choice["reason"].startswith("set in params.yaml (prepare.image_size: 128); auto would choose 448 px")
    bird = next(c for c in choice["classes"] if c["name"] == "bird")
    assert bird["low_short_side_px"] == pytest.approx(2.4) and bird["below_stride_fraction"] == 1.0
    assert choice["warnings"] == [
        "class 'bird': at 128 px, 5% of its objects have a short side under 2.4 px and 100% are under the finest "
        "stride (8 px): they will be hard to see; a larger prepare.image_size helps (auto would choose 448 px)"]
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        choose_image_size(images, ann, names, requested=0, rule=RULE)


def test_level_check_extends_the_levels_to_the_objects_range():
    classes = [{"low_short_side_px": 9.0, "high_long_side_px": 280.0}]
    wide = level_check(classes, (8, 16))
    assert not wide["covers"] and wide["reach_px"] == [8, 64] and wide["suggested"] == [8, 16, 32]
    small = level_check([{"low_short_side_px": 5.0, "high_long_side_px": 40.0}], (8, 16))
    assert not small["covers"] and small["suggested"] == [4, 8, 16]
    assert level_check([{"low_short_side_px": 11.0, "high_long_side_px": 54.0}], (8, 16))["covers"]
    huge = level_check([{"low_short_side_px": 40.0, "high_long_side_px": 600.0}], (8, 16))
    assert huge["suggested"] == [8, 16, 32]  # 32 at most: the backbones' deepest tap, and S is a multiple of 32


def test_large_objects_beyond_the_built_in_levels_are_reported_with_the_strides_that_reach_them():
    images, ann, names = tables(640, 480, {"bird": [(12, 14)] * 40, "truck": [(400, 300)] * 40})
    choice = choose_image_size(images, ann, names, requested="auto", rule=RULE)  # 448: trucks 280 px long
    assert choice["levels"]["suggested"] == [8, 16, 32] and not choice["levels"]["covers"]
    assert any("strides [8, 16, 32]" in w for w in choice["warnings"])


def test_builtin_strides_are_the_grid_detectors_defaults():
    from cvpipe.models.yolact import build_yolact
    from cvpipe.models.yolo import build_yolo

    for build in (build_yolo, build_yolact):
        assert tuple(inspect.signature(build).parameters["strides"].default) == BUILTIN_STRIDES


def test_the_embedded_synthetic_data_resolves_to_128_with_the_default_params(tmp_path):
    config = load_config(REPO / "params.yaml")
    assert config.prepare.image_size == "auto"
    generate_shapes(tmp_path / "shapes", seed=config.seed,
                    **{**dataclasses.asdict(config.data.shapes), "num_images": 60})
    dataset = import_dataset("shapes", tmp_path / "shapes")
    names = dict(zip(dataset.categories["category_id"], dataset.categories["name"]))
    choice = choose_image_size(dataset.images, dataset.annotations, names, requested=config.prepare.image_size,
                               rule=config.prepare.size_rule())
    assert choice["image_size"] == 128 and choice["warnings"] == [] and choice["levels"]["covers"]


def test_prepare_writes_the_choice_to_meta_and_the_report_and_logs_the_warnings(tiny_raw, tmp_path, caplog):
    dataset = import_dataset("shapes", tiny_raw)  # 64-px scenes, objects 14-28 px: below the 128 floor → 64
    meta = prepare_dataset(dataset, tmp_path / "auto", seed=3, image_size="auto", fractions=(0.6, 0.2, 0.2),
                           crop_size=16, crop_context=1.25)
    assert meta["image_size"] == 64 and meta["image_size_choice"]["requested"] == "auto"
    assert json.loads((tmp_path / "auto" / "meta.json").read_text())["image_size_choice"]["image_size"] == 64
    report = write_reports(meta, tmp_path / "prepare.json", tmp_path / "prepare.md")
    assert report["splits"] == meta["splits"] and report["data_hash"] == meta["data_hash"]
    markdown = (tmp_path / "prepare.md").read_text()
    assert markdown.startswith("# Prepared data: 64 px (auto)") and "## Objects at 64 px" in markdown
    with caplog.at_level(logging.WARNING, logger="cvpipe.data.prepare"):
        small = prepare_dataset(dataset, tmp_path / "small", seed=3, image_size=24, fractions=(0.6, 0.2, 0.2),
                                crop_size=16, crop_context=1.25)
    assert small["image_size"] == 24 and small["image_size_choice"]["warnings"]
    assert set(small["image_size_choice"]["warnings"]) <= {r.getMessage() for r in caplog.records}


def test_config_accepts_auto_or_a_positive_integer_and_checks_the_rule():
    assert from_section(PrepareConfig, {"image_size": 256}, "prepare").image_size == 256
    assert from_section(PrepareConfig, {}, "prepare").size_rule() == RULE
    for section, message in (({"image_size": "big"}, "prepare.image_size"), ({"image_size": 0}, "prepare.image_size"),
                             ({"auto_min_size": 100}, "multiple of 32"), ({"auto_percentile": 60}, "auto_percentile"),
                             ({"auto_min_size": 704}, "larger than prepare.auto_max_size")):
        with pytest.raises(ConfigError, match=message):
            from_section(PrepareConfig, section, "prepare")


# ---------------------------------------------------------------- the validation report's outcome line


def _validation_report(on_error: str, quarantined: list[dict]) -> dict:
    kept_images = pd.DataFrame({"image_id": range(10)})
    kept = CanonicalDataset(kept_images, pd.DataFrame({"ann_id": range(30)}), pd.DataFrame(), Path("."))
    report = ValidationReport(rules=[{"rule": "box width positive", "table": "annotations", "success": False,
                                      "expectation": "x", "element_count": 31, "unexpected_count": 1}],
                              failures={"box width positive": [{"ann_id": 7, "w": -4.0}]},
                              counts={"images": 12, "annotations": 31, "categories": 2})
    stats = {"splits": {}, "negative_images": 0, "image_width": {}, "image_height": {}, "class_balance": [],
             "boxes": {"count": 30, "crowd_or_difficult": 0, "small": 0, "medium": 0, "large": 0, "width": {},
                       "height": {}}}
    return summary(report, stats, quarantined, kept, 3, {"source": "voc", "path": "x"}, on_error=on_error,
                   quarantine_file="data/validated/quarantine.csv")


def test_quarantine_mode_reports_what_was_set_aside_and_that_the_run_went_on(tmp_path):
    items = [{"table": "images"}, {"table": "images"}, {"table": "annotations"}]
    data = _validation_report("quarantine", items)
    assert data["status"] == "passed with quarantine"
    assert data["headline"] == ("PASSED WITH QUARANTINE: 2 images / 1 annotations set aside (see "
                                "data/validated/quarantine.csv); the run continued with 10 images and 30 annotations.")
    write_markdown(data, tmp_path / "validation.md", 3)
    text = (tmp_path / "validation.md").read_text()
    assert text.startswith("# Dataset validation: passed with quarantine\n\n**PASSED WITH QUARANTINE: 2 images")
    assert "FAILED" not in text


def test_fail_mode_still_opens_with_failed(tmp_path):
    data = _validation_report("fail", [])
    assert data["status"] == "FAILED" and data["headline"].startswith("FAILED: rules broken")
    write_markdown(data, tmp_path / "validation.md", 3)
    assert (tmp_path / "validation.md").read_text().startswith("# Dataset validation: FAILED")


def test_semantic_masks_take_the_percentile_over_pixels_so_tiny_specks_do_not_force_a_large_size():
    # 512-px micrographs: big cells plus many 3-px specks (the specks are 30 % of the regions, 0.1 % of the pixels)
    cells, specks = [(120, 100)] * 70, [(3, 3)] * 30
    images, ann, names = tables(512, 512, {"cell": cells + specks})
    by_objects = choose_image_size(images, ann, names, requested="auto", rule=RULE)
    assert by_objects["image_size"] == 512  # 8 / (3/512) = 1365 px, capped by the source
    masks = images.assign(mask_file=[f"m{i}.png" for i in range(len(images))])
    by_pixels = choose_image_size(masks, ann, names, requested="auto", rule=RULE)
    assert by_pixels["image_size"] == 128 and by_pixels["inputs"]["percentile_over"].startswith("pixels")
