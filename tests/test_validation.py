import shutil

import numpy as np
import pytest

from cvpipe.data.importers import import_dataset
from cvpipe.data.validation import quarantine, validate_dataset


@pytest.fixture()
def dataset(tiny_raw, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(tiny_raw, root)
    return import_dataset("coco", root)


def _broken(report):
    return {r["rule"]: r["unexpected_count"] for r in report.rules if not r["success"]}


def test_clean_dataset_passes(dataset):
    report = validate_dataset(dataset, tolerance_px=0.5)
    assert report.success, report.message(5)


def test_planted_faults_are_each_reported_by_rule_file_and_value(dataset):
    ann = dataset.annotations
    ann.loc[0, "w"] = -3.0
    ann.loc[1, "x"] = 60.0  # x + w runs past the 64 px image
    ann.loc[2, "category_id"] = 42
    ann.loc[3, "ann_id"] = ann.loc[4, "ann_id"]
    ann.loc[5, "image_id"] = 9999
    ann.loc[ann.index[-1], "h"] = np.inf  # on the last image, whose file is fine (a bad file's boxes are not judged)
    (dataset.image_root / dataset.images.file_name[1]).unlink()
    (dataset.image_root / dataset.images.file_name[2]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset.images.loc[3, "width"] = 65
    report = validate_dataset(dataset, tolerance_px=0.5)
    assert _broken(report) == {
        "box width positive": 1, "box right edge inside image": 1, "known class id": 1, "annotation ids unique": 2,
        "annotation paired with an image": 1, "box h finite": 1, "image file exists": 1, "image file decodes": 1,
        "label width matches file": 1,
        "segmentation valid": 2,  # the 65 px image's two RLE masks are 64 px wide
    }
    message = report.message(5)
    assert "rule 'known class id'" in message and "category_id=42" in message
    assert f"file_name={dataset.images.file_name[1]}" in message
    assert report.failures["box width positive"][0]["ann_id"] == ann.loc[0, "ann_id"]


def test_quarantine_keeps_every_good_row_and_lists_every_bad_one(dataset):
    n_images, n_ann = len(dataset.images), len(dataset.annotations)
    dataset.annotations.loc[0, "w"] = -3.0
    bad_file = dataset.images.file_name[1]
    (dataset.image_root / bad_file).unlink()
    bad_image_id = dataset.images.image_id[1]
    report = validate_dataset(dataset, tolerance_px=0.5)
    clean, items = quarantine(dataset, report)
    image_items = [i for i in items if i["table"] == "images"]
    ann_items = [i for i in items if i["table"] == "annotations"]
    assert len(clean.images) + len(image_items) == n_images
    assert len(clean.annotations) + len(ann_items) == n_ann
    assert bad_image_id not in set(clean.images.image_id)
    assert not clean.annotations.image_id.isin([bad_image_id]).any()
    assert validate_dataset(clean, tolerance_px=0.5).success
