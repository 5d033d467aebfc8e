"""Bad input, fault family by fault family (issue 10): each ends in a named rule or a clear error, never a hang.

Each fixture is built in ``tmp_path`` and goes through the real importer and validation, in both modes:
``on_error: fail`` (the message names the rule and the file) and ``on_error: quarantine`` (a row per bad
object, kept + quarantined = what the source files hold). Most cases run in-process; a few run the stage
script to prove exit code 1, a message naming file, field and rule, and no traceback.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from cvpipe.data.importers import import_dataset
from cvpipe.data.validation import ValidationReport, quarantine, validate_dataset
from cvpipe.data.validation_report import dataset_stats, summary, write_markdown
from cvpipe.errors import ConfigError, DataValidationError
from data_fixtures import broken, write_image

REPO = Path(__file__).resolve().parents[1]
REGULAR_FILE, DECODES, LABEL_PARSES = "image is a regular file", "image file decodes", "label file parses"


# ---------------------------------------------------------------- fixture writers


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid PNG header declaring side × side pixels (4e8 by default) in a file of a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + chunk(b"IEND", b""))
    return path


def special(path: Path, kind: str) -> Path:
    """Put a file of ``kind`` at ``path``: fifo, loop (symlink to itself), dir, device (-> /dev/null),
    bomb, not_utf8 (Latin-1 text), rgb (a colour-coded RGB mask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path.name, path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "device":
        os.symlink("/dev/null", path)
    elif kind == "bomb":
        bomb_png(path)
    elif kind == "not_utf8":
        path.write_bytes("0 0.5 0.5 0.2 0.2 <name>caf\xe9</name>\n".encode("latin-1"))
    elif kind == "rgb":
        rgb = np.zeros((24, 32, 3), np.uint8)
        rgb[2:8, 2:8], rgb[10:20, 10:20] = (128, 0, 0), (0, 128, 0)
        Image.fromarray(rgb).save(path)
    return path


def voc_xml(filename: str, objects: list[tuple[str, tuple]], size: tuple[int, int] = (32, 24)) -> str:
    objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{objs}</annotation>")


def write_coco(root: Path, images: list, annotations: list, categories: list | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": categories or [{"id": 1, "name": "cat"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def box(ann_id: int, image_id: int, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [2, 2, 6, 6], **extra}


def mask_png(path: Path, value: int = 1) -> None:
    mask = np.zeros((24, 32), np.uint8)
    mask[4:10, 4:12] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


# Per importer: a dataset of two images with one object each, where ``good.png`` is fine and the file
# named by ``bad`` ("image" or "label") of ``<stem>.png`` is made by ``make``. Returns data.path.
def two_image_set(source: str, root: Path, bad: str, make: Callable[[Path], object], stem: str = "bad") -> Path:
    if source == "coco":
        write_image(root / "images" / "good.png")
        make(root / "images" / f"{stem}.png")
        write_coco(root, [{"id": k, "file_name": f"{n}.png", "width": 32, "height": 24}
                          for k, n in ((1, "good"), (2, stem))], [box(1, 1), box(2, 2)])
    elif source in ("voc", "yolo"):
        images, labels, suffix = (("JPEGImages", "Annotations", ".xml") if source == "voc"
                                  else ("images", "labels", ".txt"))
        write_image(root / images / "good.png")
        (root / labels).mkdir(parents=True)
        if source == "yolo":
            (root / "data.yaml").write_text("names: [cat]\n")
        for name in ("good", stem):
            if not (name == stem and bad == "label"):
                (root / labels / f"{name}{suffix}").write_text(
                    voc_xml(f"{name}.png", [("cat", (2, 2, 8, 8))]) if source == "voc" else "0 0.5 0.5 0.25 0.25\n",
                    errors="replace")  # a stem that is not UTF-8 pairs by the label file's name
        make(root / (f"{images}/{stem}.png" if bad == "image" else f"{labels}/{stem}{suffix}"))
        if bad == "label":
            write_image(root / images / f"{stem}.png", seed=1)
    elif source == "masks":
        write_image(root / "images" / "good.png")
        mask_png(root / "masks" / "good.png")
        if bad == "image":
            mask_png(root / "masks" / f"{stem}.png")
            make(root / "images" / f"{stem}.png")
        else:
            write_image(root / "images" / f"{stem}.png", seed=1)
            make(root / "masks" / f"{stem}.png")
    elif source == "imagefolder":
        write_image(root / "cat" / "good.png")
        make(root / "cat" / f"{stem}.png")
    return root


# ---------------------------------------------------------------- both modes at once


def fail_line(text: str, rule: str) -> str:
    """The one line of a failure message that reports ``rule``."""
    lines = [line for line in text.splitlines() if f"rule '{rule}'" in line]
    assert len(lines) == 1, f"rule {rule!r} not reported on one line:\n{text}"
    return lines[0]


def check_both_modes(report: ValidationReport, *, rules: dict[str, int], named: dict[str, list[str]],
                     images: int, objects: int, kept: tuple[int, int]) -> list[dict]:
    """Fail mode: exactly ``rules`` broke, and each rule's line names the files/fields in ``named``.
    Quarantine mode: kept + quarantined = ``images`` and ``objects`` of the source, ``kept`` (images,
    annotations) survive, every quarantined row names its rule. Returns the quarantine items."""
    assert broken(report) == rules, report.message(5)
    message = report.message(5)
    for rule, words in named.items():
        line = fail_line(message, rule)
        for word in words:
            assert word in line, f"{word!r} missing from: {line}"
    clean, items = quarantine(report.checked, report)
    q_images = [i for i in items if i["table"] == "images"]
    q_annotations = [i for i in items if i["table"] == "annotations"]
    assert len(clean.images) + len(q_images) == images
    assert len(clean.annotations) + len(q_annotations) == objects
    assert (len(clean.images), len(clean.annotations)) == kept
    assert all(i["rules"] and set(i["rules"]) <= set(rules) | {"image quarantined"} for i in items)
    return items


def check(source: str, root: Path, options: dict | None = None, **kwargs) -> ValidationReport:
    return validate_dataset(import_dataset(source, root, options), tolerance_px=0.5, **kwargs)


# ---------------------------------------------------------------- special files and decompression bombs


IMPORTERS = ["coco", "voc", "yolo", "masks", "imagefolder"]


@pytest.mark.timeout(30)  # a FIFO that is opened blocks for ever
@pytest.mark.parametrize("kind", ["fifo", "loop", "dir", "device", "bomb"])
@pytest.mark.parametrize("source", IMPORTERS)
def test_special_image_files_are_never_opened_and_bombs_never_decoded(source, kind, tmp_path):
    root = two_image_set(source, tmp_path / source, "image", lambda p: special(p, kind))
    rule = DECODES if kind == "bomb" else REGULAR_FILE
    report = check(source, root)
    what = "decompression bomb" if kind == "bomb" else {"fifo": "FIFO", "loop": "symlink loop", "dir": "directory",
                                                       "device": "character device"}[kind]
    items = check_both_modes(report, rules={rule: 1}, named={rule: ["bad.png", what]}, images=2,
                             objects=2, kept=(1, 1))
    assert [i["file_name"] for i in items if i["table"] == "images"] == [
        "cat/bad.png" if source == "imagefolder" else "bad.png"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("source,kind", [(s, k) for s in ("voc", "yolo") for k in ("fifo", "loop", "dir", "not_utf8")]
                         + [("masks", k) for k in ("fifo", "loop", "dir", "bomb", "rgb")])
def test_unreadable_label_files_break_label_file_parses(source, kind, tmp_path):
    root = two_image_set(source, tmp_path / source, "label", lambda p: special(p, kind))
    label = {"voc": "Annotations/bad.xml", "yolo": "labels/bad.txt", "masks": "masks/bad.png"}[source]
    what = {"fifo": "FIFO", "loop": "symlink loop", "dir": "directory", "not_utf8": "not UTF-8",
            "bomb": "decompression bomb", "rgb": "expected one channel of class ids"}[kind]
    report = check(source, root)
    # The unreadable file's objects are not imported (the report counts those it can, see
    # test_objects_in_unparseable_label_files_are_counted_in_both_modes): its image is set aside, the good one kept.
    items = check_both_modes(report, rules={LABEL_PARSES: 1}, named={LABEL_PARSES: [label, what]}, images=2,
                             objects=1, kept=(1, 1))
    assert items[0]["label_file"] == label


@pytest.mark.parametrize("source", IMPORTERS)
def test_file_names_that_are_not_utf8_are_named_escaped_never_a_crash(source, tmp_path):
    latin1 = os.fsdecode(b"caf\xe9")  # as a zip made on another system unpacks; str holds a surrogate
    root = two_image_set(source, tmp_path / source, "image", lambda p: write_image(p, seed=1), stem=latin1)
    if source == "coco":  # a JSON cannot name it: the file is an unlisted image beside a listed one
        coco = json.loads((root / "annotations.json").read_text())
        coco["images"], coco["annotations"] = coco["images"][:1], coco["annotations"][:1]
        (root / "annotations.json").write_text(json.dumps(coco))
    rule = "file name is UTF-8"
    rules = {rule: 1, **({"image has a label file": 1} if source == "coco" else {})}
    report = check(source, root)
    check_both_modes(report, rules=rules, named={rule: ["caf\\xe9.png", "rename the file"]}, images=2,
                     objects=1 if source == "coco" else 2, kept=(1, 1))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "not_utf8", "dir"])
@pytest.mark.parametrize("source,name", [("coco", "annotations.json"), ("yolo", "data.yaml"), ("csv", "labels.csv"),
                                         ("masks", "classes.txt"), ("voc", "ImageSets/Main/train.txt"),
                                         ("yolo", "labels/classes.txt")])
def test_dataset_wide_files_that_cannot_be_read_are_a_config_error_naming_them(source, name, kind, tmp_path):
    root = tmp_path / source
    base = "voc" if source == "voc" else "yolo" if source == "yolo" else "masks" if source == "masks" else "coco"
    if source == "csv":
        write_image(root / "good.png")
    else:
        two_image_set(base, root, "image", lambda p: write_image(p, seed=2))
    if name == "labels/classes.txt":
        (root / "data.yaml").unlink()
    special(root / name, kind)
    with pytest.raises(ConfigError, match=name.split("/")[-1].replace(".", r"\.")) as caught:
        import_dataset(source, root)
    assert {"fifo": "FIFO", "not_utf8": "not UTF-8", "dir": "directory"}[kind] in str(caught.value)


# ---------------------------------------------------------------- objects inside label files that do not parse


def report_json(report: ValidationReport, on_error: str, tmp_path: Path) -> tuple[dict, str]:
    """The stage's JSON report and Markdown for ``on_error`` (as stages/validate.py builds them)."""
    kept, items = quarantine(report.checked, report) if on_error == "quarantine" else (report.checked, [])
    data = summary(report, dataset_stats(kept), items, kept, 5, {"source": "test", "path": "x"}, on_error=on_error)
    write_markdown(data, tmp_path / f"{on_error}.md", 5)
    return data, (tmp_path / f"{on_error}.md").read_text()


def unparseable(path: Path, kind: str) -> None:
    """A label file that is read but does not parse: VOC ``malformed`` (cut short; 3 objects), ``bomb`` (an
    entity bomb whose DTD also spells out an object, which must not count; 2 objects), ``not_utf8`` (Latin-1
    without an encoding declaration; 3 objects); YOLO ``not_utf8`` (Latin-1; 2 non-blank lines)."""
    if path.suffix == ".txt":
        path.write_bytes("0 0.5 0.5 0.2 0.2\n\n0 0.3 0.3 0.1 0.1 # caf\xe9\n".encode("latin-1"))
        return
    xml = voc_xml("bad.png", [("cat", (2, 2, 8, 8))] * 3)
    if kind == "bomb":
        levels = "".join(f'<!ENTITY e{k} "{f"&e{k - 1};" * 10}">' for k in range(1, 10))
        xml = (f'<!DOCTYPE annotation [<!ENTITY decoy "<object>x</object>"><!ENTITY e0 "x">{levels}]>'
               + voc_xml("bad.png", [("&e9;", (2, 2, 8, 8)), ("cat", (2, 2, 8, 8))]))
    if kind == "malformed":
        xml = xml[:-len("</annotation>")]
    path.write_bytes(xml.replace("cat", "caf\xe9", 1).encode("latin-1") if kind == "not_utf8" else xml.encode())


@pytest.mark.parametrize("source,kind,objects,why", [
    ("voc", "malformed", 3, "no element found"), ("voc", "bomb", 2, "amplification"),
    ("voc", "not_utf8", 3, "not UTF-8"), ("yolo", "not_utf8", 2, "not UTF-8")])
def test_objects_in_unparseable_label_files_are_counted_in_both_modes(source, kind, objects, why, tmp_path):
    root = two_image_set(source, tmp_path / source, "label", lambda p: unparseable(p, kind))
    label = {"voc": "Annotations/bad.xml", "yolo": "labels/bad.txt"}[source]
    report = check(source, root)
    counted = f"({objects} <object> element(s) in it" if source == "voc" else f"({objects} label line(s) in it"
    check_both_modes(report, rules={LABEL_PARSES: 1}, named={LABEL_PARSES: [label, why, counted]}, images=2,
                     objects=1, kept=(1, 1))
    for on_error, quarantined in (("fail", 0), ("quarantine", 0)):  # the bad file's image holds no object rows
        data, markdown = report_json(report, on_error, tmp_path)
        assert data["objects"] == {"input": 1 + objects, "kept": 1, "quarantined": quarantined, "unparsed": objects,
                                   "unparsed_files": 1, "unparsed_examples": [
                                       {"label_file": label, "file_name": "bad.png", "objects": objects}]}
        assert f"objects in unparseable label files: {objects} (not imported)" in markdown
        assert f"Objects: {1 + objects} in the source = 1 kept + 0 quarantined + {objects} in unparseable" in markdown
    assert data["headline"].endswith(f"{objects} objects in unparseable label files were not imported.")


# ---------------------------------------------------------------- masks saved in a lossy format


def lossy_mask(path: Path, kind: str) -> Path:
    """A 0/255 mask (the values JPEG rings around) saved lossy in place of ``path`` (``masks/<stem>.png``):
    ``jpeg`` as .jpg, ``jpeg_named_png`` JPEG bytes under the .png name, ``webp`` lossy WebP. Returns it."""
    mask = np.zeros((24, 32), np.uint8)
    mask[4:14, 6:20] = 255
    target = {"jpeg": path.with_suffix(".jpg"), "jpeg_named_png": path, "webp": path.with_suffix(".webp")}[kind]
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(target, format="WEBP" if kind == "webp" else "JPEG", quality=75)
    return target


@pytest.mark.parametrize("kind,label,what", [("jpeg", "masks/bad.jpg", "saved as JPEG"),
                                             ("jpeg_named_png", "masks/bad.png", "saved as JPEG"),
                                             ("webp", "masks/bad.webp", "saved as lossy WebP")])
def test_lossy_mask_files_break_mask_file_lossless_in_both_modes(kind, label, what, tmp_path):
    root = two_image_set("masks", tmp_path / "masks", "label", lambda p: lossy_mask(p, kind))
    dataset = import_dataset("masks", root)
    assert dataset.class_names == ["class_1"]  # from good.png alone: the ringing values never become classes
    report = validate_dataset(dataset, tolerance_px=0.5)
    items = check_both_modes(report, rules={"mask file lossless": 1},
                             named={"mask file lossless": [label, what, "export masks as PNG (lossless)"]},
                             images=2, objects=1, kept=(1, 1))
    assert [(i["file_name"], i["label_file"]) for i in items] == [("bad.png", label)]


def test_a_jpeg_mask_folder_gives_no_classes_and_fails_while_lossless_webp_passes(tmp_path):
    for k in range(3):
        write_image(tmp_path / "images" / f"{k}.png", seed=k)
        lossy_mask(tmp_path / "masks" / f"{k}.png", "jpeg")
    dataset = import_dataset("masks", tmp_path)
    assert dataset.categories.empty and dataset.annotations.empty  # not 254 classes and 1,180 regions
    report = validate_dataset(dataset, tolerance_px=0.5)
    assert broken(report) == {"mask file lossless": 3}
    clean, items = quarantine(report.checked, report)
    assert clean.images.empty and len(items) == 3  # the stage then stops: "no images ... left"
    for k in range(3):
        (tmp_path / "masks" / f"{k}.jpg").unlink()
        mask = np.zeros((24, 32), np.uint8)
        mask[4:14, 6:20] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{k}.webp", lossless=True)
    dataset = import_dataset("masks", tmp_path)
    assert dataset.class_names == ["foreground"] and len(dataset.annotations) == 3
    assert validate_dataset(dataset, tolerance_px=0.5).success


# ---------------------------------------------------------------- COCO field types


def test_coco_field_types_are_reported_per_record_never_coerced(tmp_path):
    names = ["a.png", "b.png", "c.png", "d.png"]
    for k, name in enumerate(names):
        write_image(tmp_path / "images" / name, seed=k)
    images = [{"id": 1, "file_name": "a.png", "width": 32, "height": 24},
              {"id": "2", "file_name": "b.png", "width": 32, "height": 24},  # string id
              {"id": None, "file_name": "c.png", "width": 32, "height": 24},  # null id
              {"id": 4, "file_name": "d.png", "width": "64", "height": 24}]  # string width
    annotations = [box(1, 1), box(2, 1, iscrowd="no"), [1, 2, 3, 4],  # an annotation that is a list
                   {**box(4, 1), "category_id": "1"}, box("5", 1), {**box(6, 1), "image_id": None},
                   box(7, 4)]  # fine, on the mistyped image: set aside with it
    write_coco(tmp_path, images, annotations)
    report = check("coco", tmp_path)
    items = check_both_modes(
        report, rules={"image fields well-typed": 3, "annotation fields well-typed": 5},
        named={"image fields well-typed": ["b.png", "images[1]: id: expected an integer, got '2'",
                                           "images[2]: id: missing", "width: expected a positive number, got '64'"],
               "annotation fields well-typed": ["annotations.json",
                                                "annotations[1]: iscrowd: expected 0 or 1, got 'no'",
                                                "annotations[2]: expected an object, got list",
                                                "annotations[3]: category_id: expected an integer, got '1'"]},
        images=4, objects=7, kept=(1, 1))
    assert {i["file_name"] for i in items if i["table"] == "images"} == {"b.png", "c.png", "d.png"}
    assert [i["rules"] for i in items if i.get("ann_id") == 7] == [["image quarantined"]]


@pytest.mark.parametrize("categories,rules,words", [
    ([{"id": 1, "name": "cat"}, {"id": "2", "name": "dog"}], {"category fields well-typed": 1},
     ["categories[1]: id: expected an integer, got '2'"]),
    ([{"id": 1, "name": "Cat"}, {"id": 2, "name": "cat "}, {"id": 3, "name": " "}],
     {"class names unique ignoring case and spaces": 2, "class name not empty": 1}, ["name=Cat", "name=cat "]),
], ids=["string-category-id", "names-by-case-and-space"])
def test_class_table_faults_fail_in_both_modes(categories, rules, words, tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}], [box(1, 1)], categories)
    report = check("coco", tmp_path)
    assert broken(report) == rules
    first = next(iter(rules))
    for word in [*words, "annotations.json"]:
        assert word in fail_line(report.message(5), first)
    with pytest.raises(DataValidationError, match="class table faults cannot be quarantined") as caught:
        quarantine(report.checked, report)
    assert f"rule '{first}'" in str(caught.value) and "annotations.json" in str(caught.value)


# ---------------------------------------------------------------- segmentations


def test_segmentations_are_validated_before_anything_decodes_them(tmp_path):
    write_image(tmp_path / "images" / "a.png")  # 32 x 24
    segmentations = [[[2, 2, 8, 2, 8, 8]],  # fine
                     [], [[2, 2, 8, 8]], [[2, 2, "8", 2, 8, 8]], {"size": [10, 10], "counts": [100]},
                     {"size": [24, 32], "counts": [700]}]
    write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
               [box(k + 1, 1, segmentation=s) for k, s in enumerate(segmentations)])
    report = check("coco", tmp_path)
    check_both_modes(report, rules={"segmentation valid": 5},
                     named={"segmentation valid": ["a.png", "empty polygon list", "a polygon needs at least 3",
                                                   "non-numeric coordinate '8'", "differs from the image's"]},
                     images=1, objects=6, kept=(1, 1))
    assert "not height x width" in report.failures["segmentation valid"][4]["segmentation_error"]


# ---------------------------------------------------------------- file names outside data.path


@pytest.fixture()
def outside_set(tmp_path: Path) -> tuple[Path, Path]:
    """data/ with a.png inside, and names pointing to shared/s.png ('../'), other/o.png (absolute) and
    other/o.png through shared/ ('shared/../other', outside shared)."""
    data, shared, other = tmp_path / "data", tmp_path / "shared", tmp_path / "other"
    write_image(data / "images" / "a.png")
    write_image(shared / "s.png", seed=1)
    write_image(other / "o.png", seed=2)
    names = ["a.png", "../../shared/s.png", str(other / "o.png"), "../../shared/../other/o.png"]
    write_coco(data, [{"id": k + 1, "file_name": n, "width": 32, "height": 24} for k, n in enumerate(names)],
               [box(k + 1, k + 1) for k in range(len(names))])
    return data, shared


def test_file_names_outside_data_path_are_refused_unless_in_outside_paths(outside_set):
    data, shared = outside_set
    rule = "file name inside data.path"
    report = check("coco", data)
    check_both_modes(report, rules={rule: 3}, named={rule: ["../../shared/s.png", "absolute path", "'..' leaves"]},
                     images=4, objects=4, kept=(1, 1))
    allowed = check("coco", data, outside_paths=[str(shared)])
    check_both_modes(allowed, rules={rule: 2}, named={rule: ["validate.outside_paths", "o.png"]},
                     images=4, objects=4, kept=(2, 2))
    assert [n["file_name"] for n in allowed.notes["outside_data_path"]] == ["../../shared/s.png"]
    assert "s.png" not in fail_line(allowed.message(5), rule)


def test_csv_file_names_outside_data_path_and_rows_without_file_or_label(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", seed=1)
    (tmp_path / "labels.csv").write_text("file,label\na.png,cat\nb.png\n,dog\n../../x.png,cat\n/etc/x.png,dog\n")
    report = check("csv", tmp_path)
    items = check_both_modes(report, rules={"file name inside data.path": 2, LABEL_PARSES: 1,
                                            "class label not empty": 1},
                             named={LABEL_PARSES: ["labels.csv:4", "no value in column 'file'"],
                                    "class label not empty": ["b.png", "labels.csv:3"]},
                             images=5, objects=5, kept=(2, 1))
    assert {i["file_name"] for i in items if i["table"] == "images"} >= {"../../x.png", "/etc/x.png"}


# ---------------------------------------------------------------- labels: empty, by case, counting


def test_voc_blank_labels_and_objects_after_a_bad_one(tmp_path):
    for k, name in enumerate(["a.png", "b.png"]):
        write_image(tmp_path / "JPEGImages" / name, seed=k)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(voc_xml("a.png", [("cat", (2, 2, 8, 8)), ("", (1, 1, 4, 4)),
                                                                      ("  ", (1, 1, 5, 5))]))
    (tmp_path / "Annotations" / "b.xml").write_text(voc_xml("b.png", [("cat", (2, 2, "x", 8)), ("dog", (2, 2, 9, 9))]))
    (tmp_path / "Annotations" / "gone.xml").write_text(voc_xml("gone.png", [("dog", (1, 1, 5, 5))] * 2))
    report = check("voc", tmp_path)
    check_both_modes(report, rules={"class label not empty": 2, "label line parses": 1, "image file exists": 1},
                     named={"class label not empty": ["a.png", "Annotations/a.xml"],
                            "label line parses": ["Annotations/b.xml", "object 1: <xmax> is not a number: 'x'"],
                            "image file exists": ["gone.png"]},
                     images=3, objects=7, kept=(2, 2))


def test_yolo_counts_lines_after_a_bad_one_and_orphan_labels_and_reads_labelimg_classes(tmp_path):
    for k, name in enumerate(["a.png", "b.png"]):
        write_image(tmp_path / "images" / name, seed=k)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("traffic light\nTraffic  Light\n")  # LabelImg's list; names collide
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 x 0.5 0.2 0.2\n1 0.5 0.5\n\n1 0.3 0.3 0.1 0.1\n")
    (labels / "b.txt").write_text("")  # a negative
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    dataset = import_dataset("yolo", tmp_path)
    assert "classes.txt" not in " ".join(dataset.images["file_name"])
    assert dataset.class_names == ["traffic light", "Traffic  Light"]
    report = validate_dataset(dataset, tolerance_px=0.5)
    rule = "class names unique ignoring case and spaces"
    assert broken(report) == {"label line parses": 2, "image file exists": 1, rule: 2}
    assert "labels/classes.txt" in fail_line(report.message(5), rule)
    line = fail_line(report.message(5), "label line parses")
    assert "labels/a.txt" in line and "line 2: not numbers" in line and "line 3: expected" in line
    (labels / "classes.txt").write_text("person\ncar\n")
    report = check("yolo", tmp_path)
    items = check_both_modes(report, rules={"label line parses": 2, "image file exists": 1},
                             named={"image file exists": ["orphan.*", "labels/orphan.txt"]},
                             images=3, objects=6, kept=(2, 2))
    assert sorted(i["rules"][0] for i in items if i["table"] == "annotations") == [
        "image quarantined", "image quarantined", "label line parses", "label line parses"]


# ---------------------------------------------------------------- zero annotations and binary masks


def test_isbi_style_binary_masks_import_as_one_foreground_class(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)).save(tmp_path / "images" / f"{k}.png")
        mask = np.full((24, 32), 255, np.uint8)
        mask[8, :] = mask[:, 12] = 0  # membranes (0) around four cells (255)
        Image.fromarray(mask if k else np.zeros_like(mask)).save(tmp_path / "masks" / f"{k}.png")  # 0: a negative
    dataset = import_dataset("masks", tmp_path)
    assert dataset.class_names == ["foreground"] and dataset.info["binary"]
    assert len(dataset.annotations) == 8 and (dataset.annotations["iscrowd"] == 0).all()
    assert validate_dataset(dataset, tolerance_px=0.5).success


def test_all_negative_voc_validates_but_the_stage_stops_with_a_clear_message(tmp_path, stage):
    for name in ("a", "b"):
        write_image(tmp_path / "voc" / "JPEGImages" / f"{name}.png")
        (tmp_path / "voc" / "Annotations").mkdir(exist_ok=True)
        (tmp_path / "voc" / "Annotations" / f"{name}.xml").write_text(voc_xml(f"{name}.png", []))
    dataset = import_dataset("voc", tmp_path / "voc")
    assert len(dataset.images) == 2 and dataset.annotations.empty and dataset.categories.empty
    assert validate_dataset(dataset, tolerance_px=0.5).success
    result, out = stage({"source": "voc", "path": str(tmp_path / "voc")}, "quarantine")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = fail_line(result.stderr, "dataset not empty")
    assert str(tmp_path / "voc") in line and "no annotations and no classes in the source (2 images" in line
    assert not (out / "dataset.json").exists()


@pytest.mark.timeout(60)
def test_quarantine_that_leaves_nothing_stops_with_a_clear_message(tmp_path, stage):
    root = two_image_set("coco", tmp_path / "coco", "image", lambda p: special(p, "fifo"))
    special(root / "images" / "good.png", "bomb")
    result, out = stage({"source": "coco", "path": str(root)}, "quarantine")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = fail_line(result.stderr, "dataset not empty")
    assert "no images and no annotations left after validation (4 rows quarantined" in line
    report = json.loads((out / "validation.json").read_text())  # quarantine mode, yet nothing went on: FAILED
    assert report["status"] == "FAILED" and "left to train on after the quarantine" in report["headline"]
    assert json.loads((out / "validation.json").read_text())["quarantine"]["images"] == 2


# ---------------------------------------------------------------- the stage script


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # migrated once for the module


@pytest.fixture()
def stage(tmp_path: Path, mlflow_db: str) -> Callable[..., tuple[subprocess.CompletedProcess, Path]]:
    """Run stages/validate.py on ``data`` params with ``on_error``; returns the process and its out folder."""
    def run(data: dict, on_error: str, **validate) -> tuple[subprocess.CompletedProcess, Path]:
        out = tmp_path / "out"
        params = {"seed": 1, "data": data, "validate": {"on_error": on_error, **validate},
                  "mlflow": {"experiment": "bad-input"}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_db}
        result = subprocess.run(
            [sys.executable, str(REPO / "stages" / "validate.py"), "--params", str(tmp_path / "params.yaml"),
             "--out", str(out / "dataset.json"), "--report", str(out / "validation.json")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        return result, out
    return run


@pytest.mark.timeout(60)
def test_stage_fail_names_file_field_and_rule_on_one_line_without_traceback(tmp_path, stage):
    write_image(tmp_path / "coco" / "images" / "a.png")
    special(tmp_path / "coco" / "images" / "pipe.png", "fifo")
    write_image(tmp_path / "shared" / "s.png", seed=1)  # allowed by validate.outside_paths
    write_image(tmp_path / "other" / "o.png", seed=2)  # not allowed
    names = ["a.png", "pipe.png", "../../shared/s.png", "../../other/o.png"]
    write_coco(tmp_path / "coco", [{"id": k + 1, "file_name": n, "width": 32, "height": 24}
                                   for k, n in enumerate(names)], [box(k + 1, k + 1) for k in range(4)])
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    coco["images"][0]["width"], coco["annotations"][0]["iscrowd"] = "64", "no"
    (tmp_path / "coco" / "annotations.json").write_text(json.dumps(coco))
    result, out = stage({"source": "coco", "path": str(tmp_path / "coco")}, "fail",
                        outside_paths=[str(tmp_path / "shared")])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for rule, words in {"image fields well-typed": ["a.png", "width", "'64'"],
                        "annotation fields well-typed": ["annotations.json", "iscrowd", "'no'"],
                        REGULAR_FILE: ["pipe.png", "FIFO"],
                        "file name inside data.path": ["1 of 4 rows", "o.png", "validate.outside_paths"]}.items():
        line = fail_line(result.stderr, rule)
        assert all(word in line for word in words), line
    assert "s.png" not in fail_line(result.stderr, "file name inside data.path")
    assert not (out / "dataset.json").exists() and json.loads((out / "validation.json").read_text())["success"] is False


@pytest.mark.timeout(60)
def test_stage_quarantine_lists_every_bad_object_and_counts_add_up(tmp_path, stage):
    root = tmp_path / "yolo"
    for k, name in enumerate(["a.png", "b.png", "c.png"]):
        write_image(root / "images" / name, seed=k)
    special(root / "images" / "pipe.png", "fifo")
    (root / "labels").mkdir()
    (root / "labels" / "classes.txt").write_text("person\ncar\n")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 x 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    (root / "labels" / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    special(root / "labels" / "c.txt", "not_utf8")
    (root / "labels" / "pipe.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    result, out = stage({"source": "yolo", "path": str(root)}, "quarantine")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "validation.json").read_text())
    q = report["quarantine"]
    # source: 4 image files + 1 orphan label; 3 + 1 + 1 + 2 readable lines (c.txt cannot be read)
    assert q["kept"]["images"] + q["images"] == 5 and q["kept"]["annotations"] + q["annotations"] == 7
    assert (q["kept"]["images"], q["kept"]["annotations"]) == (2, 3)
    # ...and c.txt's one line, counted from its bytes: input = kept + quarantined + unparsed
    objects = report["objects"]
    assert (objects["input"], objects["kept"], objects["quarantined"], objects["unparsed"]) == (8, 3, 4, 1)
    assert "objects in unparseable label files: 1 (not imported)" in (out / "validation.md").read_text()
    with (out / "quarantine.csv").open() as fh:
        rows = {(r["file"], r["rule"], r["label_file"]) for r in csv.DictReader(fh)}
    assert {("a.png", "label line parses", "labels/a.txt"), ("c.png", LABEL_PARSES, "labels/c.txt"),
            ("pipe.png", REGULAR_FILE, "labels/pipe.txt"), ("pipe.png", "image quarantined", "labels/pipe.txt"),
            ("orphan.*", "image file exists", "labels/orphan.txt")} <= rows
    assert json.loads((out / "dataset.json").read_text())["info"]["validation"]["quarantined"] == q["count"]


@pytest.mark.timeout(60)
def test_stage_refuses_class_table_faults_in_quarantine_mode_after_writing_the_report(tmp_path, stage):
    write_image(tmp_path / "coco" / "images" / "a.png")
    write_coco(tmp_path / "coco", [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}], [box(1, 1)],
               [{"id": 1, "name": "Cat"}, {"id": 2, "name": "cat"}])
    result, out = stage({"source": "coco", "path": str(tmp_path / "coco")}, "quarantine")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = fail_line(result.stderr, "class names unique ignoring case and spaces")
    assert "annotations.json" in line and "name=Cat" in line
    assert "class table faults cannot be quarantined" in result.stderr
    report = json.loads((out / "validation.json").read_text())
    assert report["success"] is False and report["status"] == "FAILED"  # quarantine mode, but the run stopped
