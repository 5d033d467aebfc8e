"""Pascal VOC XML: one XML per image with ``<size>`` and ``<object>`` boxes.

Layout (folder names are params): ``Annotations/`` (XML, any depth), ``JPEGImages/`` (images), optional
``ImageSets/Main/{train,val,test,trainval}.txt`` (one image id per line; ``trainval`` counts as train when
no ``train.txt`` exists). Boxes are taken as pixel edges: x = xmin, w = xmax - xmin (LabelImg's
convention). ``difficult`` is kept as a column and, with ``difficult_as_crowd``, marks the object
iscrowd=1 so training skips it and COCOeval neither rewards nor punishes it, as VOC's own metric does.
An XML without objects is a negative image; an image without XML breaks "image has a label file".
An object whose box is missing or not numeric is a row with ``parse_error`` (rule "label line parses"),
the other objects of the file are read as usual; an XML that is not well-formed (an entity bomb included:
expat refuses its amplification), not UTF-8 (without an encoding declaration) or not a regular file breaks
"label file parses". The objects of a file that is read but does not parse are counted from its bytes
(:func:`count_object_tags`) into the image's ``unparsed_objects``, so the report can say how many were not
imported.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.file_checks import MISSING, UnreadableFile, escapes_root, file_kind, read_regular_bytes
from cvpipe.data.importers.common import (TableBuilder, annotations_by_image, class_name_of, copy_image,
                                          list_files, list_images, read_lines, stem_key, upright_size)
from cvpipe.errors import ConfigError

log = logging.getLogger(__name__)
SPLIT_FILES = (("train", "train"), ("val", "val"), ("test", "test"), ("trainval", "train"))
# count_object_tags: what it counts (an <object> start tag) and what it skips (comments, CDATA, the DOCTYPE)
MARKUP = re.compile(rb"<object[\s/>]|<!--|<!\[CDATA\[|<!DOCTYPE")
SKIP_TO = {b"<!--": re.compile(rb"-->"), b"<![CDATA[": re.compile(rb"\]\]>"),
           b"[": re.compile(rb"\]\s*>")}  # "[": a DOCTYPE's internal subset, where entities are declared


def _text(node: ET.Element | None, tag: str, default: str | None = None) -> str | None:
    child = None if node is None else node.find(tag)
    return default if child is None or child.text is None else child.text.strip()


def _number(node: ET.Element | None, tag: str) -> float:
    value = _text(node, tag)
    try:
        return float(value) if value is not None else float("nan")
    except ValueError:
        return float("nan")


def _box_problem(box: ET.Element | None) -> str | None:
    """Why an object's ``<bndbox>`` gives no box (missing, or a coordinate that is not a number), or None."""
    if box is None:
        return "no <bndbox>"
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        value = _text(box, tag)
        try:
            float("nan" if value is None else value)
        except ValueError:
            return f"<{tag}> is not a number: {value[:30]!r}"
        if value is None:
            return f"no <{tag}>"
    return None


def parse_voc_xml(path: Path) -> dict[str, Any]:
    """One VOC file → {filename, width, height, objects: [{name, xmin, ymin, xmax, ymax, difficult,
    parse_error}]}. Raises ``ET.ParseError`` or :class:`UnreadableFile` (never opens a special file)."""
    return parse_voc_bytes(read_regular_bytes(path))


def parse_voc_bytes(data: bytes) -> dict[str, Any]:
    """:func:`parse_voc_xml` on the bytes of the file."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        prolog = data[:200].split(b"?>", 1)[0]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            if b"encoding" not in prolog:
                raise UnreadableFile(f"not UTF-8 text (byte 0x{data[bad.start]:02x} at offset {bad.start}) and no "
                                     "encoding declaration; save it as UTF-8") from None
        raise exc
    size = root.find("size")
    objects = []
    for index, obj in enumerate(root.iter("object"), start=1):
        box = obj.find("bndbox")
        problem = _box_problem(box)
        objects.append({"name": _text(obj, "name", ""), "difficult": int(_number(obj, "difficult") == 1),
                        "parse_error": f"object {index}: {problem}" if problem else None,
                        **{k: _number(box, k) for k in ("xmin", "ymin", "xmax", "ymax")}})
    return {"filename": _text(root, "filename"), "width": _number(size, "width"), "height": _number(size, "height"),
            "objects": objects}


def count_object_tags(data: bytes) -> int:
    """Best-effort number of ``<object>`` elements in XML bytes that do not parse: the ``<object>`` start tags
    written out, outside comments, CDATA and the DOCTYPE. Entities are never expanded (an object only an entity
    would write is not counted); one linear scan of the bytes, no parser."""
    count, position = 0, 0
    while (found := MARKUP.search(data, position)) is not None:
        token, position = found.group(), found.end()
        if token.startswith(b"<object"):
            count += 1
            continue
        if token == b"<!DOCTYPE":
            close, subset = data.find(b">", position), data.find(b"[", position)
            if subset == -1 or -1 < close < subset:  # no internal subset: the DOCTYPE ends at its ">"
                position = len(data) if close == -1 else close + 1
                continue
            token, position = b"[", subset + 1
        end = SKIP_TO[token].search(data, position)
        if end is None:
            break  # unterminated: the rest is inside it
        position = end.end()
    return count


def _read_voc(path: Path) -> tuple[dict[str, Any], str | None, int | None]:
    """(document, None, None); or, for a file that cannot be used, an empty document, why, and the number of
    ``<object>`` elements in its bytes (None when it could not be read at all: a FIFO, a directory...)."""
    empty = {"filename": None, "width": float("nan"), "height": float("nan"), "objects": []}
    try:
        data = read_regular_bytes(path)
    except UnreadableFile as exc:
        return empty, str(exc), None
    try:
        return parse_voc_bytes(data), None, None
    except (ET.ParseError, UnreadableFile) as exc:
        objects = count_object_tags(data)
        return empty, f"{exc}" + (f" ({objects} <object> element(s) in it not imported)" if objects else ""), objects


def _split_lists(folder: Path) -> dict[str, str]:
    """image id → split from ImageSets/Main (first list wins; class-specific lists are ignored)."""
    split: dict[str, str] = {}
    names = {f for f, _ in SPLIT_FILES}
    if not folder.is_dir():
        return split
    if file_kind(folder / "train.txt") != MISSING:
        names.discard("trainval")
    for file_stem, name in SPLIT_FILES:
        path = folder / f"{file_stem}.txt"
        if file_stem in names and file_kind(path) != MISSING:  # a special or non-UTF-8 list: ConfigError
            for line in read_lines(path):
                image_id = line  # a whole line: ids may hold spaces
                if split.setdefault(image_id, name) != name:
                    log.warning("%s: %s is already in split %s; kept there", path, image_id, split[image_id])
    return split


def _split(split_of_id: dict[str, str], relative: str) -> str | None:
    key = stem_key(relative)
    return split_of_id.get(key, split_of_id.get(PurePosixPath(key).name))


def import_voc(path: str | Path, *, images: str = "JPEGImages", annotations: str = "Annotations",
               splits: str = "ImageSets/Main", class_names: list[str] | None = None,
               difficult_as_crowd: bool = True) -> CanonicalDataset:
    """Read a Pascal VOC folder (see the module docstring)."""
    root = Path(path)
    image_dir, xml_dir = root / images, root / annotations
    if not xml_dir.is_dir():
        raise ConfigError(f"{xml_dir}: VOC annotations folder not found (data.path, data.voc.annotations)")
    image_files = list_images(image_dir)
    by_stem = {stem_key(f): f for f in image_files}
    by_base = {PurePosixPath(f).name: f for f in image_files}
    image_set = set(image_files)
    split_of_id = _split_lists(root / splits)
    builder = TableBuilder(class_names=class_names)
    labelled: set[str] = set()
    for rel in list_files(xml_dir, (".xml",)):
        label_file = f"{annotations}/{rel}"
        doc, error, unparsed = _read_voc(xml_dir / rel)
        sub = str(PurePosixPath(rel).parent)
        given = doc["filename"]
        candidates = [str(PurePosixPath(sub) / given) if given and sub != "." else None, given,
                      by_stem.get(stem_key(rel)), by_base.get(given or "")]
        file_name = next((c for c in candidates if c in image_set), None)
        if file_name is None:  # no image: the row names the file the XML expects (rule "image file exists")
            file_name = given or f"{stem_key(rel)}.jpg"
        labelled.add(file_name)
        width, height = doc["width"], doc["height"]
        # many tools leave <size> empty or 0: read it from the file (never one outside data.path)
        if not (width > 0 and height > 0) and escapes_root(file_name, image_dir, root) is None:
            width, height = upright_size(image_dir / file_name)
        image_id = builder.add_image(file_name, width, height, _split(split_of_id, rel),
                                     label_file=label_file, label_error=error, unparsed_objects=unparsed)
        for obj in doc["objects"]:
            x0, y0 = obj["xmin"], obj["ymin"]
            crowd = obj["difficult"] if difficult_as_crowd else 0
            builder.add_box(image_id, obj["name"], x0, y0, obj["xmax"] - x0, obj["ymax"] - y0, iscrowd=crowd,
                            difficult=obj["difficult"], parse_error=obj["parse_error"])
    for file_name in image_files:
        if file_name not in labelled:
            width, height = upright_size(image_dir / file_name)
            builder.add_image(file_name, width, height, _split(split_of_id, file_name),
                              label_file=None, label_error=None, unparsed_objects=None)
    return builder.build(image_dir, {"source": "voc", "path": str(root)})


def export_voc(dataset: CanonicalDataset, out_dir: str | Path, *, images: str = "JPEGImages",
               annotations: str = "Annotations", splits: str = "ImageSets/Main") -> None:
    """Write one XML per image, copy the images, and the split lists when the images carry splits."""
    out = Path(out_dir)
    names = class_name_of(dataset)
    anns = annotations_by_image(dataset)
    split_ids: dict[str, list[str]] = {}
    for row in dataset.images.itertuples():
        copy_image(dataset.image_root / row.file_name, out / images / row.file_name)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = PurePosixPath(row.file_name).name
        size = ET.SubElement(root, "size")
        for tag, value in (("width", row.width), ("height", row.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(int(value))
        group = anns.get(int(row.image_id))
        for ann in ([] if group is None else group.itertuples()):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[int(ann.category_id)]
            ET.SubElement(obj, "difficult").text = str(int(getattr(ann, "difficult", 0) or 0))
            box = ET.SubElement(obj, "bndbox")
            for tag, value in (("xmin", ann.x), ("ymin", ann.y), ("xmax", ann.x + ann.w), ("ymax", ann.y + ann.h)):
                ET.SubElement(box, tag).text = f"{value:g}"
        xml_path = out / annotations / f"{stem_key(row.file_name)}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(xml_path, encoding="utf-8")
        if isinstance(row.split, str):
            split_ids.setdefault(row.split, []).append(PurePosixPath(stem_key(row.file_name)).name)
    for split, ids in split_ids.items():
        (out / splits).mkdir(parents=True, exist_ok=True)
        (out / splits / f"{split}.txt").write_text("\n".join(ids) + "\n")
