"""Rules on the drawn split, checked by prepare before any array is written (validate cannot: the split is drawn
here, unless the source gave one).

- **class in train** (``prepare.class_absent_from_train``: ``fail`` | ``warn``): a class with objects in val or
  test (or in the class table) but none in train cannot be learnt; its test AP is 0 by construction.
- **objects in every split**: a configured model whose evaluation and tuning score objects (classifier,
  detectors, instance segmenters) needs at least one object in train, val and test; a model of any task needs at
  least one image in each. Tuning on an empty validation split has nothing to choose a threshold from.

Per-split class counts go to ``meta.json`` and the prepare report whether or not a rule breaks.
"""

from __future__ import annotations

import logging
import pandas as pd

from cvpipe.data.array_plan import ArrayPlan
from cvpipe.errors import DataValidationError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def class_counts(annotations: pd.DataFrame, split_of_image: pd.Series, names: dict[int, str]) -> dict[str, dict[str, int]]:
    """split → class name → non-crowd objects, every class listed in every split (0 where absent)."""
    objects = annotations[annotations["iscrowd"] == 0]
    split = objects["image_id"].map(split_of_image)
    table = pd.crosstab(split, objects["category_id"]) if len(objects) else pd.DataFrame()
    return {s: {names[c]: int(table.at[s, c]) if s in table.index and c in table.columns else 0 for c in sorted(names)}
            for s in SPLITS}


def check_split(counts: dict[str, dict[str, int]], images_per_split: dict[str, int], *, plan: ArrayPlan,
                class_absent_from_train: str, source: str) -> list[str]:
    """Apply the rules; raise :class:`DataValidationError` for a broken ``fail`` rule, return the warnings."""
    warnings = []
    absent = [name for name in counts["train"] if counts["train"][name] == 0]
    if absent:
        where = "; ".join(f"{name!r}: " + ", ".join(f"{counts[s][name]} in {s}" for s in ("val", "test"))
                          for name in absent)
        line = (f"{source}: rule 'class in train': {len(absent)} class(es) have no object in the train split "
                f"({where}); a model cannot learn them and scores 0 on them. Add train images of these classes, "
                "remove the classes, or draw another split (seed, fractions)")
        if class_absent_from_train == "fail":
            raise DataValidationError(line + " (prepare.class_absent_from_train: fail; set warn to go on)")
        warnings.append(line)
    models = plan.object_models()
    totals = {s: sum(counts[s].values()) for s in SPLITS}
    empty_images = [s for s in SPLITS if images_per_split[s] == 0]
    empty_objects = [s for s in SPLITS if totals[s] == 0 and images_per_split[s] > 0]
    if plan.models and empty_images:
        raise DataValidationError(
            f"{source}: rule 'images in every split': split(s) {empty_images} have no image "
            f"({images_per_split}); training, tuning and evaluation each need their own. Use more images or other "
            "prepare.*_fraction values")
    if models and empty_objects:
        raise DataValidationError(
            f"{source}: rule 'objects in every split': split(s) {empty_objects} have images but no object "
            f"(objects per split: {totals}); {', '.join(models)} tune on val and are scored on test by their "
            "objects. Add labelled images to those splits, or draw another split (seed, fractions)")
    for line in warnings:
        log.warning("%s", line)
    return warnings

