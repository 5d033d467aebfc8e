"""Importers: one fixture per format written here, and round trips synthetic scenes → format → canonical."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cvpipe.data.importers import (export_coco, export_csv, export_imagefolder, export_mask_folder, export_voc,
                                   export_yolo, import_dataset)
from cvpipe.data.importers.common import UNKNOWN_CLASS
from cvpipe.data.importers.mask_folder import semantic_mask
from cvpipe.data.masks import decode_segmentation
from cvpipe.data.validation import validate_dataset
from cvpipe.errors import ConfigError
from data_fixtures import boxes_by_file, broken, subset, write_image


@pytest.fixture(scope="module")
def scenes(tiny_raw):
    """Ten synthetic scenes (boxes, RLE masks, six classes) as canonical tables."""
    return subset(import_dataset("shapes", tiny_raw), 10)


# ---------------------------------------------------------------- round trips


def test_coco_round_trip_keeps_boxes_masks_and_classes(scenes, tmp_path):
    export_coco(scenes, tmp_path / "coco")
    again = import_dataset("coco", tmp_path / "coco")
    pd.testing.assert_frame_equal(boxes_by_file(again), boxes_by_file(scenes))
    assert again.class_names == scenes.class_names
    pd.testing.assert_frame_equal(again.images[["file_name", "width", "height"]],
                                  scenes.images[["file_name", "width", "height"]], check_dtype=False)
    assert list(again.annotations["segmentation"]) == list(scenes.annotations["segmentation"])


def test_voc_round_trip_gives_the_same_boxes_and_classes(scenes, tmp_path):
    export_voc(scenes, tmp_path / "voc")
    again = import_dataset("voc", tmp_path / "voc")
    pd.testing.assert_frame_equal(boxes_by_file(again), boxes_by_file(scenes))
    assert again.class_names == sorted(set(scenes.categories["name"]) & set(boxes_by_file(scenes)["name"]))
    assert again.images["label_file"].notna().all() and (again.annotations["difficult"] == 0).all()


def test_yolo_round_trip_gives_the_same_boxes_within_rounding(scenes, tmp_path):
    export_yolo(scenes, tmp_path / "yolo")
    again = import_dataset("yolo", tmp_path / "yolo")
    a, b = boxes_by_file(again), boxes_by_file(scenes)
    assert a[["file_name", "name"]].equals(b[["file_name", "name"]])
    np.testing.assert_allclose(a[["x", "y", "w", "h"]], b[["x", "y", "w", "h"]], atol=1e-3)  # 6 decimals × 64 px
    assert again.class_names == scenes.class_names
    assert list(again.categories["source_id"]) == list(range(len(scenes.class_names)))


def test_mask_folder_round_trip_paints_the_same_semantic_masks(scenes, tmp_path):
    export_mask_folder(scenes, tmp_path / "masks")
    again = import_dataset("masks", tmp_path / "masks")
    assert again.class_names == scenes.class_names  # from classes.txt, background line skipped
    assert list(again.images["file_name"]) == list(scenes.images["file_name"])
    for image_id, other in zip(again.images["image_id"], scenes.images["image_id"]):
        np.testing.assert_array_equal(semantic_mask(again, image_id), semantic_mask(scenes, other))
    # every region becomes an annotation whose box encloses its mask
    for ann in again.annotations.itertuples():
        ys, xs = np.nonzero(decode_segmentation(ann.segmentation, 64, 64))
        assert (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) == (ann.x, ann.y, ann.w, ann.h)


def test_imagefolder_and_csv_round_trip_one_crop_per_object(scenes, tmp_path):
    n_objects = int((scenes.annotations["iscrowd"] == 0).sum())
    assert export_imagefolder(scenes, tmp_path / "folder") == n_objects
    crops = import_dataset("imagefolder", tmp_path / "folder")
    assert len(crops.images) == len(crops.annotations) == n_objects
    per_class = crops.annotations["category_id"].map(dict(zip(crops.categories["category_id"], crops.categories["name"])))
    expected = scenes.annotations["category_id"].map(dict(zip(scenes.categories["category_id"], scenes.categories["name"])))
    assert per_class.value_counts().to_dict() == expected.value_counts().to_dict()
    whole = crops.annotations.merge(crops.images, on="image_id")
    assert (whole["x"] == 0).all() and (whole["w"] == whole["width"]).all() and (whole["h"] == whole["height"]).all()
    # a classification dataset exports to the same tables: ImageFolder → ImageFolder and → CSV
    export_imagefolder(crops, tmp_path / "folder2")
    pd.testing.assert_frame_equal(boxes_by_file(import_dataset("imagefolder", tmp_path / "folder2")),
                                  boxes_by_file(crops))
    assert export_csv(crops, tmp_path / "csv") == n_objects
    from_csv = import_dataset("csv", tmp_path / "csv")
    a, b = boxes_by_file(from_csv), boxes_by_file(crops)
    assert list(a["file_name"].str.rsplit("/", n=1).str[-1]) == list(b["file_name"].str.rsplit("/", n=1).str[-1])
    assert a.drop(columns="file_name").equals(b.drop(columns="file_name"))


# ---------------------------------------------------------------- per format


def _voc_xml(filename: str, objects: list[tuple], size: tuple[int, int] | None = (32, 24)) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return f"<annotation><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def test_voc_folders_splits_difficult_negatives_and_pairing(tmp_path):
    root = tmp_path / "voc set"
    for i, name in enumerate(["a b.jpg", "sub/ä.JPG", "neg.png", "nolabel.jpg"]):
        write_image(root / "imgs" / name, seed=i)
    ann = root / "xml"
    ann.mkdir(parents=True)
    (ann / "a b.xml").write_text(_voc_xml("a b.jpg", [("dog", (1, 2, 11, 22), 0), ("cat", (0, 0, 32, 24), 1)]))
    (ann / "sub").mkdir()
    (ann / "sub" / "ä.xml").write_text(_voc_xml("ä.JPG", [("dog", (3, 4, 5, 6), 0)], size=None), encoding="utf-8")
    (ann / "neg.xml").write_text(_voc_xml("neg.png", []))
    (ann / "orphan.xml").write_text(_voc_xml("orphan.jpg", [("dog", (1, 1, 2, 2), 0)]))
    (ann / "broken.xml").write_text("<annotation><filename>")
    (root / "sets").mkdir()
    (root / "sets" / "train.txt").write_text("a b\nneg\n")
    (root / "sets" / "val.txt").write_text("ä\n")
    ds = import_dataset("voc", root, {"images": "imgs", "annotations": "xml", "splits": "sets"})
    images = ds.images.set_index("file_name")
    assert ds.class_names == ["cat", "dog"]
    assert images.loc["a b.jpg", "split"] == "train" and images.loc["sub/ä.JPG", "split"] == "val"
    assert (images.loc["sub/ä.JPG", "width"], images.loc["sub/ä.JPG", "height"]) == (32, 24)  # read from the file
    cat = ds.annotations[ds.annotations["source_label"] == "cat"].iloc[0]
    assert (cat.difficult, cat.iscrowd) == (1, 1)  # VOC difficult → ignored by training and COCOeval
    dog = ds.annotations[ds.annotations["image_id"] == images.loc["a b.jpg", "image_id"]]
    dog = dog[dog["source_label"] == "dog"].iloc[0]
    assert (dog.x, dog.y, dog.w, dog.h, dog.category_id) == (1, 2, 10, 20, 2)
    report = validate_dataset(ds, tolerance_px=0.5)
    assert broken(report) == {"image has a label file": 1, "image file exists": 2, "label file parses": 1}
    assert report.failures["image has a label file"][0]["file_name"] == "nolabel.jpg"
    assert {r["label_file"] for r in report.failures["image file exists"]} == {"xml/orphan.xml", "xml/broken.xml"}
    assert "neg.png" in set(report.checked.images["file_name"])  # no objects: a legal negative


def test_voc_class_names_param_flags_unknown_classes(tmp_path):
    write_image(tmp_path / "JPEGImages" / "x.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "x.xml").write_text(_voc_xml("x.jpg", [("dog", (1, 1, 5, 5), 0),
                                                                      ("zebra", (1, 1, 5, 5), 0)]))
    ds = import_dataset("voc", tmp_path, {"class_names": ["dog", "cat"]})
    assert ds.class_names == ["dog", "cat"]
    assert list(ds.annotations["category_id"]) == [1, UNKNOWN_CLASS]
    report = validate_dataset(ds, tolerance_px=0.5)
    assert broken(report) == {"known class id": 1}
    assert report.failures["known class id"][0]["source_label"] == "zebra"


def test_yolo_names_splits_polygons_negatives_and_faults(tmp_path):
    root = tmp_path / "yolo"
    for i, name in enumerate(["train/a.jpg", "train/empty.PNG", "val/b.png", "val/bad.jpg", "val/nolabel.jpg"]):
        write_image(root / "images" / name, 40, 20, seed=i)
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir()
    (labels / "train" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n0 0.1 0.1 0.2 0.2\n")
    (labels / "train" / "empty.txt").write_text("")
    (labels / "val" / "b.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.75\n5 0.5 0.5 0.1 0.1\n")
    (labels / "val" / "bad.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 zero 0.1 0.1\n")
    (labels / "val" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": {0: "person", 1: "car"}}))
    ds = import_dataset("yolo", root)
    assert ds.class_names == ["person", "car"]
    images = ds.images.set_index("file_name")
    assert images.loc["train/a.jpg", "split"] == "train" and images.loc["val/b.png", "split"] == "val"
    a = ds.annotations[ds.annotations["image_id"] == images.loc["train/a.jpg", "image_id"]]
    np.testing.assert_allclose(a[["x", "y", "w", "h"]].to_numpy(), [[10, 5, 20, 10], [0, 0, 8, 4]], atol=1e-9)
    assert list(a["category_id"]) == [2, 1]
    b = ds.annotations[ds.annotations["image_id"] == images.loc["val/b.png", "image_id"]]
    np.testing.assert_allclose(b.iloc[0][["x", "y", "w", "h"]].astype(float), [10, 5, 20, 10])
    assert b.iloc[0]["segmentation"] == [[10.0, 5.0, 30.0, 5.0, 30.0, 15.0]]
    report = validate_dataset(ds, tolerance_px=0.5)
    # the bad line is its own row (rule "label line parses"); the line before it is kept
    assert broken(report) == {"known class id": 1, "label line parses": 1, "image file exists": 1,
                              "image has a label file": 1}
    assert "line 2" in report.failures["label line parses"][0]["parse_error"]
    assert report.failures["known class id"][0]["source_label"] == "5"
    assert report.failures["image file exists"][0]["label_file"] == "labels/val/ghost.txt"
    assert report.failures["image has a label file"][0]["file_name"] == "val/nolabel.jpg"
    assert images.loc["train/empty.PNG", "image_id"] not in set(ds.annotations["image_id"])  # negative, kept


def test_yolo_without_names_is_a_clear_config_error(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    with pytest.raises(ConfigError, match="no class names"):
        import_dataset("yolo", tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['imgs'\]"):
        import_dataset("yolo", tmp_path, {"imgs": "x"})


def test_imagefolder_split_layout_and_csv_pairing(tmp_path):
    for i, name in enumerate(["train/cat/1.jpg", "train/dog/deep/2.png", "val/cat/3.JPEG", "test/dog/4.jpg"]):
        write_image(tmp_path / "folder" / name, 20 + i, 10, seed=i)
    ds = import_dataset("imagefolder", tmp_path / "folder")
    assert ds.class_names == ["cat", "dog"]
    assert list(ds.images["split"]) == ["test", "train", "train", "val"]
    merged = ds.annotations.merge(ds.images, on="image_id")
    assert (merged["w"] == merged["width"]).all() and (merged["x"] == 0).all()
    csv_dir = tmp_path / "csv"
    for i, name in enumerate(["a.jpg", "b c.png", "unlisted.jpg"]):
        write_image(csv_dir / "pics" / name, seed=i)
    (csv_dir / "labels.csv").write_text("path,class,split\na.jpg,cat,train\nb c.png,dog,valid\nmissing.jpg,cat,test\n")
    ds = import_dataset("csv", csv_dir, {"images": "pics", "file_column": "path", "label_column": "class"})
    assert list(ds.images["split"])[:2] == ["train", "val"]
    report = validate_dataset(ds, tolerance_px=0.5)
    # the missing file's whole-image box has no size either, but only the file's rule reports it
    assert broken(report) == {"image file exists": 1, "image has a label file": 1}
    assert report.failures["image file exists"][0]["label_file"] == "labels.csv:4"  # line of the CSV


def test_mask_folder_ignore_value_and_out_of_range_values(tmp_path):
    root = tmp_path / "seg"
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        write_image(root / "images" / name, 16, 12, seed=i)
    (root / "masks").mkdir()
    mask = np.zeros((12, 16), np.uint8)
    mask[1:4, 1:5] = 1
    mask[6:9, 1:5] = 1  # a second region of class 1
    mask[0:2, 10:16] = 2
    mask[10:12, :] = 255
    Image.fromarray(mask).save(root / "masks" / "a.png")
    bad = np.zeros((12, 16), np.uint8)
    bad[0, 0] = 7
    Image.fromarray(bad).save(root / "masks" / "b.png")
    (root / "classes.txt").write_text("_background_\nroad\ncar\n")
    ds = import_dataset("masks", root)
    assert ds.class_names == ["road", "car"]
    a = ds.annotations[ds.annotations["image_id"] == 1]
    assert sorted(zip(a["category_id"], a["iscrowd"], a["w"], a["h"])) == [(1, 0, 4, 3), (1, 0, 4, 3), (1, 1, 16, 2),
                                                                           (2, 0, 6, 2)]
    np.testing.assert_array_equal(semantic_mask(ds, 1), mask)  # the ignore region paints back as 255
    report = validate_dataset(ds, tolerance_px=0.5)
    assert broken(report) == {"mask values within class range": 1, "image has a label file": 1}
    assert report.failures["mask values within class range"][0]["mask_out_of_range"] == "7"


def test_coco_ids_mapped_to_contiguous_with_source_ids_and_unlisted_images(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        write_image(tmp_path / "images" / name, seed=i)
    coco = {"images": [{"id": 10, "file_name": "a.png", "width": 32, "height": 24},
                       {"id": 11, "file_name": "b.png", "width": 32, "height": 24}],
            "annotations": [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 1, 4, 4], "iscrowd": 0,
                             "segmentation": [[1, 1, 5, 1, 5, 5]]},
                            {"id": 2, "image_id": 11, "category_id": 3, "bbox": [0, 0, 8, 8], "iscrowd": 1,
                             "segmentation": {"size": [24, 32], "counts": [0, 10, 758]}},
                            {"id": 3, "image_id": 11, "category_id": 99, "bbox": [0, 0, 8, 8]}],
            "categories": [{"id": 7, "name": "late"}, {"id": 3, "name": "early"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    ds = import_dataset("coco", tmp_path)
    assert ds.class_names == ["early", "late"] and list(ds.categories["source_id"]) == [3, 7]
    assert list(ds.annotations["category_id"]) == [2, 1, UNKNOWN_CLASS]
    assert ds.annotations["iscrowd"].tolist() == [0, 1, 0]
    report = validate_dataset(ds, tolerance_px=0.5)
    # the unlisted image has no label size: only "image has a label file" reports it
    assert broken(report) == {"known class id": 1, "image has a label file": 1}
    assert report.failures["image has a label file"][0]["file_name"] == "c.png"
