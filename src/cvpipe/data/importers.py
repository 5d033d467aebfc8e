"""Importers: a data source named in params → the canonical tables.

Each importer takes the path from ``data.path`` and returns a :class:`CanonicalDataset`. New formats
register here under their ``data.source`` name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cvpipe.data.canonical import CanonicalDataset, load_coco
from cvpipe.errors import ConfigError


def import_coco(path: str | Path) -> CanonicalDataset:
    """A folder holding ``annotations.json`` (COCO instances) and ``images/``, or the JSON file itself."""
    path = Path(path)
    json_path = path / "annotations.json" if path.is_dir() else path
    if not json_path.is_file():
        raise ConfigError(f"{json_path}: COCO annotations file not found (data.path)")
    image_root = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    return load_coco(json_path, image_root=image_root)


IMPORTERS: dict[str, Callable[[str | Path], CanonicalDataset]] = {
    "shapes": import_coco,  # the generator writes COCO
    "coco": import_coco,
}


def import_dataset(source: str, path: str | Path) -> CanonicalDataset:
    """Run the importer registered for ``source``."""
    if source not in IMPORTERS:
        raise ConfigError(f"params.yaml: data.source {source!r} is not supported; choose one of {sorted(IMPORTERS)}")
    return IMPORTERS[source](path)
