import hashlib
import json

import numpy as np

from cvpipe.data.masks import decode_segmentation
from cvpipe.data.synthetic import CLASS_NAMES, generate_shapes
from tests.conftest import TINY_SHAPES


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    generate_shapes(tmp_path / "a", seed=11, **{**TINY_SHAPES, "num_images": 6})
    generate_shapes(tmp_path / "b", seed=11, **{**TINY_SHAPES, "num_images": 6})
    generate_shapes(tmp_path / "c", seed=12, **{**TINY_SHAPES, "num_images": 6})
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_scene_does_not_depend_on_dataset_size(tmp_path):
    small = generate_shapes(tmp_path / "s", seed=5, **{**TINY_SHAPES, "num_images": 2})
    large = generate_shapes(tmp_path / "l", seed=5, **{**TINY_SHAPES, "num_images": 5})
    assert (tmp_path / "s/images/scene_00001.png").read_bytes() == (tmp_path / "l/images/scene_00001.png").read_bytes()
    first = [a for a in large["annotations"] if a["image_id"] <= 2]
    assert [a["bbox"] for a in small["annotations"]] == [a["bbox"] for a in first]


def test_boxes_are_tight_around_disjoint_visible_masks(tiny_raw):
    coco = json.loads((tiny_raw / "annotations.json").read_text())
    assert {c["name"] for c in coco["categories"]} == set(CLASS_NAMES)
    by_image = {}
    for ann in coco["annotations"]:
        mask = decode_segmentation(ann["segmentation"], 64, 64)
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y) == (x, y, w, h)
        assert ann["area"] == mask.sum() > 0
        by_image.setdefault(ann["image_id"], []).append(mask)
    for masks in by_image.values():
        assert np.sum(masks, axis=0).max() == 1, "visible masks of one scene must not overlap"
    assert len(coco["annotations"]) >= 2 * len(coco["images"]) * 0.8
