"""Derived columns the rules test, computed once per dataset before GX runs (see :mod:`validation_rules`).

- per image: where the file name points (``outside_data_path``) and what the file is (:func:`inspect_images`,
  over ``workers`` processes with the same table whatever their number; a name outside ``data.path`` is never
  touched unless allowed);
- per annotation: ``segmentation_error`` (:mod:`cvpipe.data.segmentation_check`) and ``blank_label``;
- per category: ``name_key``, the name compared ignoring case and runs of spaces (None when blank).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.file_checks import MISSING, escapes_root, inside_any
from cvpipe.data.image_files import inspect_file
from cvpipe.data.parallel import ordered_map
from cvpipe.data.segmentation_check import segmentation_problem

FACT_COLUMNS = ["file_exists", "file_kind", "decodes", "stored_width", "stored_height", "upright_width",
                "upright_height", "orientation", "mode", "sha1", "decode_error"]


def data_root(dataset: CanonicalDataset) -> Path:
    """The folder file names must stay inside: ``info["path"]`` (``data.path``; its folder when it names a
    file, as a COCO JSON or a CSV), else the image root."""
    path = dataset.info.get("path")
    if not path:
        return dataset.image_root
    path = Path(path)
    return path if path.is_dir() else path.parent


def outside_reasons(dataset: CanonicalDataset) -> list[str | None]:
    """Per image row: why its file name leaves ``data.path`` ("absolute path", "'..' leaves data.path"),
    or None. A missing name is not judged here (rule "image fields well-typed" or the file rules)."""
    root = data_root(dataset)
    return [escapes_root(str(name), dataset.image_root, root) if isinstance(name, str) else None
            for name in dataset.images["file_name"]]


def refused_outside(dataset: CanonicalDataset, outside: list[str | None],
                    outside_paths: list[str] | tuple[str, ...]) -> list[str | None]:
    """Per image row: the reason of :func:`outside_reasons` where the name is not inside one of
    ``outside_paths`` (``validate.outside_paths``, the folders allowed beyond data.path), else None."""
    hint = (f"not inside data.path nor validate.outside_paths {list(outside_paths)}" if outside_paths
            else "not inside data.path; list its folder in validate.outside_paths to allow it")
    return [None if reason is None or inside_any(str(name), dataset.image_root, outside_paths)
            else f"{reason}: {hint}" for name, reason in zip(dataset.images["file_name"], outside)]


def inspect_images(dataset: CanonicalDataset, skip: list[bool], *, workers: int = 1) -> pd.DataFrame:
    """One row per image with :data:`FACT_COLUMNS`; rows where ``skip`` is true (a name outside data.path,
    or no name) are not touched and hold None, so only their own rule reports them.

    The files are read and decoded by :func:`cvpipe.data.image_files.inspect_file` in ``workers`` processes
    (:func:`cvpipe.data.parallel.ordered_map`: results in row order, so the table is the same for any number).
    ``file_exists``/``decodes``/``file_kind`` are None where another rule already says why the file cannot
    be used (GX skips nulls): a missing file has only "exists", a FIFO only "is a regular file"."""
    names = dataset.images["file_name"].tolist()
    opened = [not skipped and isinstance(name, str) for name, skipped in zip(names, skip)]
    paths = [dataset.image_root / name for name, ok in zip(names, opened) if ok]
    # small facts, no pixels: collected whole, so the pool is shut down before the table is built
    facts = iter(list(ordered_map(inspect_file, paths, workers=min(workers, len(paths)))))  # no pool for 0-1 file
    rows: list[dict[str, Any]] = []
    for ok in opened:
        if not ok:
            rows.append(dict.fromkeys(FACT_COLUMNS))
            continue
        fact = next(facts)
        rows.append({"file_exists": fact.exists, "file_kind": None if fact.kind == MISSING else fact.kind,
                     "decodes": fact.decodes if fact.exists else None, "stored_width": fact.width,
                     "stored_height": fact.height, "upright_width": fact.upright_size[0],
                     "upright_height": fact.upright_size[1], "orientation": fact.orientation, "mode": fact.mode,
                     "sha1": fact.sha1, "decode_error": fact.error})
    return pd.DataFrame(rows, columns=FACT_COLUMNS, index=dataset.images.index)


def usable(files: pd.DataFrame) -> pd.Series:
    """Per image: the file exists, is regular and decodes in full."""
    return files["decodes"].map(lambda v: v is True)


def segmentation_errors(dataset: CanonicalDataset) -> list[str | None]:
    """Per annotation: why its segmentation is unusable for its image's label size, or None."""
    sizes = dataset.images.drop_duplicates("image_id").set_index("image_id")[["height", "width"]]
    height = dataset.annotations["image_id"].map(sizes["height"]).astype(float)
    width = dataset.annotations["image_id"].map(sizes["width"]).astype(float)
    return [segmentation_problem(seg, h, w)
            for seg, h, w in zip(dataset.annotations["segmentation"], height, width)]


def blank_labels(annotations: pd.DataFrame) -> list[bool]:
    """Per annotation: its source label is text with nothing in it (a VOC ``<name></name>``)."""
    return [isinstance(label, str) and not label.strip() for label in annotations["source_label"]]


def name_key(name: Any) -> str | None:
    """``" Traffic  Light"`` → ``"traffic light"``; None for a blank or missing name."""
    if not isinstance(name, str) or not name.strip():
        return None
    return " ".join(name.split()).casefold()


def category_table(categories: pd.DataFrame) -> pd.DataFrame:
    """The categories with ``name_key`` for the name rules. A row with its own ``field_error`` (a COCO
    category whose id or name has the wrong type) gets neutral stand-ins, no id and a key of its own, so
    rule "category fields well-typed" alone reports it."""
    table = categories.assign(name_key=[name_key(n) for n in categories["name"]])
    if "field_error" in table:
        own = table["field_error"].notna().to_numpy()
        table["category_id"] = table["category_id"].astype(object).where(~own, None)
        table.loc[own, "name_key"] = [f"<categories row {k}>" for k in own.nonzero()[0]]
    return table
