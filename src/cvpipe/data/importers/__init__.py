"""Importers: a data source named in params → the canonical tables (:mod:`cvpipe.data.canonical`).

One module per format; each ``import_<format>(path, **options)`` takes ``data.path`` and the keyword
options of its ``data.<format>`` params section, and each ``export_<format>`` writes a canonical dataset
back in that format (the round-trip tests use them; they also convert between formats).

| data.source  | module        | task it feeds                       |
|--------------|---------------|-------------------------------------|
| shapes, coco | coco.py       | every task (boxes, masks, crops)    |
| voc          | voc.py        | detection (+ classifier crops)      |
| yolo         | yolo.py       | detection (+ classifier crops)      |
| imagefolder  | imagefolder.py| classification (whole-image object) |
| csv          | imagefolder.py| classification (whole-image object) |
| masks        | mask_folder.py| semantic segmentation               |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cvpipe.config import checked_kwargs, importer_options_section
from cvpipe.data.canonical import CanonicalDataset
from cvpipe.data.importers.coco import export_coco, import_coco
from cvpipe.data.importers.imagefolder import export_csv, export_imagefolder, import_csv, import_imagefolder
from cvpipe.data.importers.mask_folder import export_mask_folder, import_mask_folder
from cvpipe.data.importers.voc import export_voc, import_voc
from cvpipe.data.importers.yolo import export_yolo, import_yolo
from cvpipe.errors import ConfigError

IMPORTERS: dict[str, Callable[..., CanonicalDataset]] = {
    "shapes": import_coco,  # the generator writes COCO
    "coco": import_coco,
    "voc": import_voc,
    "yolo": import_yolo,
    "imagefolder": import_imagefolder,
    "csv": import_csv,
    "masks": import_mask_folder,
}

__all__ = ["IMPORTERS", "import_dataset", "export_coco", "export_csv", "export_imagefolder", "export_mask_folder",
           "export_voc", "export_yolo"]


def import_dataset(source: str, path: str | Path, options: dict[str, Any] | None = None) -> CanonicalDataset:
    """Run the importer registered for ``source`` with the keyword ``options`` of its params section."""
    if source not in IMPORTERS:
        raise ConfigError(f"params.yaml: data.source {source!r} is not supported; choose one of {sorted(IMPORTERS)}")
    if not Path(path).exists():
        raise ConfigError(f"params.yaml: data.path {str(path)!r} does not exist")
    importer = IMPORTERS[source]
    kwargs = checked_kwargs(importer, dict(options or {}), f"data.{importer_options_section(source)}")
    return importer(path, **kwargs)
