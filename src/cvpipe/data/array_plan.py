"""Which prepared arrays the configured models read, so prepare writes only those (the ``arrays`` stage).

Every task reads the split's boxes (``boxes``/``box_labels``/``box_offsets``, a few bytes per object) and its
COCO ground truth (``instances.json``); beyond that, per task:

====================== =========================================================================
classification         ``crops``, ``crop_labels``: object-centred crops (not the scenes)
detection              ``images``: letterboxed scenes
segmentation           ``images``, ``semantic``: label maps, drawn from the source's masks only
instance_segmentation  ``images``, ``instance_rle``: each box's mask as COCO RLE (decoded per batch)
====================== =========================================================================

The plan is computed from ``pipeline.models`` and each model's ``task`` by its own DVC stage (``arrays``), whose
output prepare depends on: adding a segmentation model to ``pipeline.models`` re-runs prepare, changing a learning
rate does not. A model that needs masks on data without any is refused here, by name, before any array is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvpipe.errors import ConfigError

TASK_ARRAYS: dict[str, frozenset[str]] = {
    "classification": frozenset({"crops"}),
    "detection": frozenset({"images"}),
    "segmentation": frozenset({"images", "semantic"}),
    "instance_segmentation": frozenset({"images", "instance_masks"}),
}
ALL_ARRAYS = frozenset().union(*TASK_ARRAYS.values())
MASK_ARRAYS = frozenset({"semantic", "instance_masks"})  # drawn from the source's masks, never from boxes
# tasks whose tuning and evaluation score objects: each of their splits needs at least one object
OBJECT_TASKS = frozenset({"classification", "detection", "instance_segmentation"})


@dataclass(frozen=True)
class ArrayPlan:
    """``arrays``: the optional array groups to write (see the module table); ``models``: model → task, the
    reason for each group (empty for a library caller that asked for everything)."""

    arrays: frozenset[str] = ALL_ARRAYS
    models: dict[str, str] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return name in self.arrays

    def models_needing(self, name: str) -> list[str]:
        return [model for model, task in self.models.items() if name in TASK_ARRAYS.get(task, ALL_ARRAYS)]

    def object_models(self) -> list[str]:
        """The configured models whose evaluation and tuning need objects in every split."""
        return [model for model, task in self.models.items() if task in OBJECT_TASKS]

    def to_dict(self) -> dict[str, Any]:
        return {"arrays": sorted(self.arrays), "models": dict(self.models)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArrayPlan":
        unknown = set(data.get("arrays", [])) - ALL_ARRAYS
        if unknown:
            raise ConfigError(f"array plan names unknown arrays {sorted(unknown)}; known: {sorted(ALL_ARRAYS)}")
        return cls(frozenset(data["arrays"]), dict(data.get("models", {})))


def plan_for_models(models: dict[str, str]) -> ArrayPlan:
    """The arrays the models (name → task) read; a task this table does not know gets every array, so a plug-in
    task never lacks one."""
    arrays: set[str] = set()
    for task in models.values():
        arrays |= TASK_ARRAYS.get(task, ALL_ARRAYS)
    return ArrayPlan(frozenset(arrays), dict(models))


def plan_from_params(params: dict[str, Any]) -> ArrayPlan:
    """The plan for ``pipeline.models`` in a loaded params.yaml."""
    names = params["pipeline"]["models"]
    return plan_for_models({name: str(params["models"][name]["task"]) for name in names})


def without_masks(plan: ArrayPlan, *, has_masks: bool, source: str) -> ArrayPlan:
    """The plan for data with or without masks: mask arrays come from the source's masks only. A configured model
    that needs them on a source without any is refused, naming the model, its task and the way out."""
    if has_masks:
        return plan
    needing = {model for name in MASK_ARRAYS for model in plan.models_needing(name)}
    if needing:
        tasks = ", ".join(f"{m} ({plan.models[m]})" for m in sorted(needing))
        raise ConfigError(f"{source}: the data has no masks, but pipeline.models lists {tasks}, which train on masks; "
                          "remove them from pipeline.models (e.g. `dvc exp run -S 'pipeline.models=[yolo]'`) or "
                          "bring masks (COCO segmentations or a mask folder)")
    return ArrayPlan(plan.arrays - MASK_ARRAYS, plan.models)


def write_plan(plan: ArrayPlan, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n")


def read_plan(path: str | Path) -> ArrayPlan:
    with Path(path).open() as fh:
        return ArrayPlan.from_dict(json.load(fh))
