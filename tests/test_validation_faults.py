"""Validation of bad and odd input: each fault gives its rule; the stage's exit code, reports and quarantine."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cvpipe.data.importers import export_voc, import_dataset
from cvpipe.data.image_files import TRANSPOSE, open_rgb, orient_boxes
from cvpipe.data.prepare import prepare_dataset
from cvpipe.data.validation import quarantine, validate_dataset
from cvpipe.data.validation_report import dataset_stats, summary, write_markdown, write_quarantine_csv
from data_fixtures import broken, subset, write_image

REPO = Path(__file__).resolve().parents[1]


def _voc(root: Path, files: dict[str, list[tuple[str, tuple[float, ...]]]], size: dict[str, tuple[int, int]],
         splits: dict[str, list[str]] | None = None) -> Path:
    """A VOC folder: XML per image name in ``files`` with (class, xmin ymin xmax ymax) objects."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for name, objects in files.items():
        w, h = size[name]
        objs = "".join(f"<object><name>{c}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                       f"<ymax>{b[3]}</ymax></bndbox></object>" for c, b in objects)
        xml = root / "Annotations" / f"{Path(name).with_suffix('')}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(f"<annotation><filename>{Path(name).name}</filename><size><width>{w}</width>"
                       f"<height>{h}</height></size>{objs}</annotation>", encoding="utf-8")
    for split, ids in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.mark.parametrize("orientation", sorted(TRANSPOSE))
def test_orient_boxes_follows_the_pixels_for_every_exif_orientation(orientation):
    stored = np.zeros((20, 30), np.uint8)  # H 20, W 30
    stored[3:7, 11:20] = 255  # box x 11, y 3, w 9, h 4
    upright = np.asarray(Image.fromarray(stored).transpose(TRANSPOSE[orientation]))
    ys, xs = np.nonzero(upright)
    expected = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    np.testing.assert_allclose(orient_boxes(np.array([[11, 3, 9, 4]]), orientation, 30, 20)[0], expected)


def test_image_modes_become_rgb_and_keep_their_range(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(grey)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(deep)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([np.full((4, 4, 3), 255, np.uint8), np.zeros((4, 4), np.uint8)])).save(rgba)
    palette = tmp_path / "palette.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(palette)
    assert Image.open(deep).mode.startswith("I")
    for path, value in ((grey, [200] * 3), (deep, [255] * 3), (rgba, [0] * 3), (palette, [10, 20, 30])):
        arr = np.asarray(open_rgb(path))
        assert arr.dtype == np.uint8 and arr.shape == (4, 4, 3), path.name
        np.testing.assert_array_equal(arr[0, 0], value, err_msg=path.name)


def test_exif_rotated_jpeg_gets_its_boxes_turned_with_its_pixels(tmp_path):
    """A 40×20 stored image with EXIF 6 (shown turned 90° clockwise) and a box drawn on the stored pixels."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[2:8, 25:35] = 255
    exif = Image.Exif()
    exif[274] = 6
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(stored).save(tmp_path / "JPEGImages" / "turned.jpg", exif=exif.tobytes(), quality=100)
    _voc(tmp_path, {"turned.jpg": [("bright", (25, 2, 35, 8))]}, {"turned.jpg": (40, 20)})
    report = validate_dataset(import_dataset("voc", tmp_path), tolerance_px=0.5)
    assert report.success, report.message(5)
    assert [n["orientation"] for n in report.notes["oriented"]] == [6]
    row = report.checked.images.iloc[0]
    assert (row.width, row.height) == (20, 40)
    x, y, w, h = report.checked.annotations.iloc[0][["x", "y", "w", "h"]]
    pixels = np.asarray(open_rgb(tmp_path / "JPEGImages" / "turned.jpg"))[..., 0] > 128
    ys, xs = np.nonzero(pixels)
    np.testing.assert_allclose([x, y, w, h], [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1], atol=1)
    # labels already given in the upright frame (sizes say so) are left alone
    _voc(tmp_path, {"turned.jpg": [("bright", (12, 25, 18, 35))]}, {"turned.jpg": (20, 40)})
    again = validate_dataset(import_dataset("voc", tmp_path), tolerance_px=0.5)
    assert again.success and again.notes["oriented"] == []


def test_corrupt_files_size_mismatch_clip_and_leakage(tmp_path):
    sizes = {}
    for i, name in enumerate(["ok.jpg", "cut.jpg", "junk.png", "wide.jpg", "copy_a.jpg", "copy_b.jpg"]):
        write_image(tmp_path / "JPEGImages" / name, 32, 24, seed=0 if name.startswith("copy") else i + 1)
        sizes[name] = (32, 24)
    data = (tmp_path / "JPEGImages" / "cut.jpg").read_bytes()
    (tmp_path / "JPEGImages" / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (tmp_path / "JPEGImages" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # corrupt PNG
    sizes["wide.jpg"] = (33, 24)
    boxes = {name: [("a", (1, 1, 10, 10))] for name in sizes}
    boxes["ok.jpg"] = [("a", (1, 1, 10, 10)), ("a", (20, 5, 40, 10))]  # overhangs the right edge by 8 px
    _voc(tmp_path, boxes, sizes, splits={"train": ["ok", "cut", "junk", "wide", "copy_a"], "test": ["copy_b"]})
    ds = import_dataset("voc", tmp_path)
    report = validate_dataset(ds, tolerance_px=0.5)
    assert broken(report) == {"image file decodes": 2, "label width matches file": 1, "box right edge inside image": 1,
                              "image in one split only (no leakage)": 1}
    assert {r["file_name"] for r in report.failures["image file decodes"]} == {"cut.jpg", "junk.png"}
    leak = report.failures["image in one split only (no leakage)"][0]
    assert (leak["file_name"], leak["split"], leak["leak_split"]) == ("copy_b.jpg", "test", "train")
    clipped = validate_dataset(ds, tolerance_px=0.5, out_of_bounds="clip")
    assert "box right edge inside image" not in broken(clipped)
    assert [c["after"] for c in clipped.notes["clipped"]] == [[20.0, 5.0, 12.0, 5.0]]


def test_outputs_are_byte_identical_with_one_and_two_decode_workers(tmp_path):
    """runtime.data_workers changes who decodes the files, never what validate writes: file facts, report,
    Markdown, quarantine list and dataset, on a set with every kind of file fault."""
    names = ["ok.jpg", "cut.jpg", "junk.png", "turned.jpg", "copy_a.png", "copy_b.png", "grey.png", "gone.jpg"]
    for i, name in enumerate(names[:-1]):
        write_image(tmp_path / "JPEGImages" / name, 32, 24, seed=0 if name.startswith("copy") else i + 1,
                    mode="L" if name == "grey.png" else "RGB", exif_orientation=6 if name == "turned.jpg" else None)
    data = (tmp_path / "JPEGImages" / "cut.jpg").read_bytes()
    (tmp_path / "JPEGImages" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "JPEGImages" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _voc(tmp_path, {name: [("a", (1, 1, 10, 10))] for name in names}, {name: (32, 24) for name in names},
         splits={"train": [n.split(".")[0] for n in names[:-3]], "test": ["copy_b", "grey", "gone"]})
    dataset = import_dataset("voc", tmp_path)
    outputs = []
    for workers in (1, 2):
        report = validate_dataset(dataset, tolerance_px=0.5, workers=workers)
        kept, items = quarantine(report.checked, report)
        out = tmp_path / f"workers{workers}"
        out.mkdir()
        result = summary(report, dataset_stats(kept, report.files), items, kept, 3, {"source": "voc"},
                         on_error="quarantine")
        (out / "validation.json").write_text(json.dumps(result, indent=2, default=str))
        write_markdown(result, out / "validation.md", 3)
        write_quarantine_csv(items, out / "quarantine.csv")
        kept.save(out / "dataset.json")
        outputs.append((report.files, {f.name: f.read_bytes() for f in sorted(out.iterdir())}))
    (facts_1, files_1), (facts_2, files_2) = outputs
    pd.testing.assert_frame_equal(facts_1, facts_2)
    assert files_1 == files_2
    # copy_a, copy_b, cut, gone, grey, junk, ok, turned: every kind of fact met (and no buffer address quoted)
    assert facts_2["decodes"].tolist() == [True, True, False, None, True, False, True, True]
    assert facts_2["decode_error"][5] == "UnidentifiedImageError: cannot identify image file"
    assert facts_2["orientation"].tolist()[-1] == 6
    assert json.loads(files_2["validation.json"])["quarantine"]["images"] == 4  # cut, junk, copy_b, gone


def test_odd_but_valid_input_passes_and_prepares(tmp_path):
    """Spaces, non-ASCII, nested folders, upper/mixed extensions, modes, sizes, thousands of tiny boxes, an
    image with no objects."""
    names = {"with space.JPG": (40, 30, "RGB"), "ünïcødé/ñ.png": (25, 50, "L"), "a/b/c/deep.Jpeg": (64, 16, "RGB"),
             "alpha.PNG": (30, 30, "RGBA"), "pal.png": (20, 20, "P"), "empty.jpg": (10, 10, "RGB")}
    for i, (name, (w, h, mode)) in enumerate(names.items()):
        write_image(tmp_path / "JPEGImages" / name, w, h, seed=i, mode=mode)
    tiny = [("dot", (x % 40, (x // 40) % 30, x % 40 + 1, (x // 40) % 30 + 1)) for x in range(1200)]
    objects = {name: [("thing", (0, 0, w / 2, h / 2))] for name, (w, h, _) in names.items()}
    objects["with space.JPG"] = tiny
    objects["empty.jpg"] = []
    _voc(tmp_path, objects, {n: (w, h) for n, (w, h, _) in names.items()})
    report = validate_dataset(import_dataset("voc", tmp_path), tolerance_px=0.5)
    assert report.success, report.message(5)
    assert len(report.checked.annotations) == 1200 + 4 and len(report.checked.images) == 6
    meta = prepare_dataset(report.checked, tmp_path / "prepared", seed=0, image_size=32, fractions=(1.0, 0.0, 0.0),
                           crop_size=8, crop_context=1.25)
    assert meta["splits"]["train"] == {"images": 6, "objects": 1204, "crops": 1204}
    boxes = np.load(tmp_path / "prepared" / "train" / "boxes.npy")
    assert np.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


# ---------------------------------------------------------------- the stage script


def _stage(tmp_path: Path, data: dict, on_error: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    params = {"seed": 1, "data": data, "validate": {"on_error": on_error, "max_examples": 3},
              "mlflow": {"experiment": "faults"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "validate.py"), "--params", str(tmp_path / "params.yaml"),
         "--out", str(out / "dataset.json"), "--report", str(out / "validation.json"),
         "--report-md", str(out / "validation.md"), "--quarantine", str(out / "quarantine.csv")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return result, out


@pytest.fixture(scope="module")
def faulty_voc(tiny_raw, tmp_path_factory):
    """Twelve synthetic scenes as VOC with one missing image, one corrupt file and one negative box width."""
    root = tmp_path_factory.mktemp("faulty") / "voc"
    scenes = subset(import_dataset("shapes", tiny_raw), 12)
    scenes.annotations.loc[0, "w"] = -4.0
    export_voc(scenes, root)
    (root / "JPEGImages" / scenes.images.file_name[3]).unlink()
    (root / "JPEGImages" / scenes.images.file_name[5]).write_bytes(b"not an image")
    return root, scenes


def test_stage_fail_exits_1_with_rule_file_and_reports_but_no_traceback(faulty_voc, tmp_path):
    root, scenes = faulty_voc
    result, out = _stage(tmp_path, {"source": "voc", "path": str(root)}, "fail")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "rule 'image file exists'" in result.stderr and scenes.images.file_name[3] in result.stderr
    assert "rule 'box width positive'" in result.stderr and "w=-4.0" in result.stderr
    assert "rule 'image file decodes'" in result.stderr
    assert not (out / "dataset.json").exists()
    report = json.loads((out / "validation.json").read_text())
    assert not report["success"] and report["quarantine"]["count"] == 0 and report["status"] == "FAILED"
    assert (out / "validation.md").read_text().startswith("# Dataset validation: FAILED\n\n**FAILED: rules broken")
    assert "**broken**" in (out / "validation.md").read_text()


def test_stage_quarantine_keeps_every_good_item_lists_every_bad_one_and_logs_counts(faulty_voc, tmp_path):
    root, scenes = faulty_voc
    result, out = _stage(tmp_path, {"source": "voc", "path": str(root)}, "quarantine")
    assert result.returncode == 0, result.stderr[-2000:]
    kept = json.loads((out / "dataset.json").read_text())
    report = json.loads((out / "validation.json").read_text())
    q = report["quarantine"]
    n_images, n_ann = len(scenes.images), len(scenes.annotations)
    assert len(kept["images"]) + q["images"] == n_images and q["images"] == 2
    assert len(kept["annotations"]) + q["annotations"] == n_ann
    bad_files = {scenes.images.file_name[3], scenes.images.file_name[5]}
    assert not bad_files & {im["file_name"] for im in kept["images"]}
    lost = n_ann - len(kept["annotations"])
    expected_lost = int(scenes.annotations["image_id"].isin(scenes.images.image_id[[3, 5]]).sum()) + 1
    assert lost == expected_lost  # the two images' objects and the negative box, nothing else
    with (out / "quarantine.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["rule"] for r in rows} == {"image file exists", "image file decodes", "box width positive",
                                         "image quarantined"}
    assert {r["file"] for r in rows if r["table"] == "images"} == bad_files
    # the run went on: the reports say so first, never "FAILED"
    assert report["status"] == "passed with quarantine"
    headline = (f"PASSED WITH QUARANTINE: 2 images / {q['annotations']} annotations set aside (see "
                f"{out / 'quarantine.csv'}); the run continued with {len(kept['images'])} images")
    assert report["headline"].startswith(headline) and headline in result.stderr
    markdown = (out / "validation.md").read_text()
    assert markdown.startswith(f"# Dataset validation: passed with quarantine\n\n**{headline}")
    assert "FAILED" not in markdown
    assert len({(r["table"], r["ann_id"], r["file"]) for r in rows}) == q["count"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("faults-data").experiment_id])[0]
    assert run.data.metrics["quarantined_images"] == 2 and run.data.metrics["quarantined_annotations"] == lost
    assert run.data.metrics["images_kept"] == len(kept["images"])


def test_prepare_keeps_complete_source_splits_and_redraws_partial_ones(tmp_path):
    names = [f"im{i}.png" for i in range(9)]
    for i, name in enumerate(names):
        write_image(tmp_path / "JPEGImages" / name, 16, 16, seed=i)
    objects = {n: [("a", (1, 1, 8, 8))] for n in names}
    sizes = {n: (16, 16) for n in names}
    _voc(tmp_path, objects, sizes, splits={"train": ["im0", "im1", "im2", "im3"], "val": ["im4", "im5"],
                                           "test": ["im6", "im7", "im8"]})
    full = prepare_dataset(import_dataset("voc", tmp_path), tmp_path / "full", seed=0, image_size=16,
                           fractions=(0.34, 0.33, 0.33), crop_size=8, crop_context=1.0)
    assert [full["splits"][s]["images"] for s in ("train", "val", "test")] == [4, 2, 3]  # the source's lists
    (tmp_path / "ImageSets" / "Main" / "test.txt").unlink()  # train/val only: test would be empty
    partial = prepare_dataset(import_dataset("voc", tmp_path), tmp_path / "partial", seed=0, image_size=16,
                              fractions=(0.34, 0.33, 0.33), crop_size=8, crop_context=1.0)
    assert [partial["splits"][s]["images"] for s in ("train", "val", "test")] == [3, 3, 3]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_split_keeps_byte_identical_files_together(tmp_path, seed):
    names = [f"im{i:02d}.png" for i in range(12)]
    for i, name in enumerate(names):
        write_image(tmp_path / "JPEGImages" / name, 16, 16, seed=i % 8)  # im08..im11 copy im00..im03
    _voc(tmp_path, {n: [("a", (1, 1, 8, 8))] for n in names}, {n: (16, 16) for n in names})
    prepare_dataset(import_dataset("voc", tmp_path), tmp_path / "p", seed=seed, image_size=16,
                    fractions=(0.34, 0.33, 0.33), crop_size=8, crop_context=1.0)
    split_of = {im["file_name"]: split for split in ("train", "val", "test")
                for im in json.loads((tmp_path / "p" / split / "instances.json").read_text())["images"]}
    assert len(split_of) == 12
    for k in range(4):
        assert split_of[f"im{k:02d}.png"] == split_of[f"im{k + 8:02d}.png"], k
