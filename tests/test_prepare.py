import json

import numpy as np
from PIL import Image

from cvpipe.data.canonical import load_coco
from cvpipe.data.masks import decode_segmentation
from cvpipe.data.prepare import letterbox, split_image_ids


def test_split_is_seeded_order_independent_and_complete():
    ids = list(range(1, 101))
    a = split_image_ids(ids, seed=1, fractions=(0.7, 0.15, 0.15))
    b = split_image_ids(list(reversed(ids)), seed=1, fractions=(0.7, 0.15, 0.15))
    c = split_image_ids(ids, seed=2, fractions=(0.7, 0.15, 0.15))
    assert a == b
    assert a != c
    assert sorted(a) == ids
    assert [list(a.values()).count(s) for s in ("train", "val", "test")] == [70, 15, 15]


def test_letterbox_keeps_aspect_and_pads_bottom_right():
    image = Image.fromarray(np.full((50, 100, 3), 200, np.uint8))
    out, scale = letterbox(image, 64)
    assert scale == 0.64 and out.shape == (64, 64, 3)
    assert (out[:32] == 200).all() and (out[32:] == 114).all()


def test_prepared_arrays_agree_with_coco_ground_truth(tiny_prepared):
    meta = json.loads((tiny_prepared / "meta.json").read_text())
    assert sum(s["images"] for s in meta["splits"].values()) == 40
    for split in ("train", "val", "test"):
        images = np.load(tiny_prepared / split / "images.npy", mmap_mode="r")
        semantic = np.load(tiny_prepared / split / "semantic.npy", mmap_mode="r")
        boxes = np.load(tiny_prepared / split / "boxes.npy")
        offsets = np.load(tiny_prepared / split / "box_offsets.npy")
        crops = np.load(tiny_prepared / split / "crops.npy")
        gt = load_coco(tiny_prepared / split / "instances.json")
        assert images.dtype == np.uint8 and images.shape[1:] == (64, 64, 3)
        assert len(offsets) == len(images) + 1 and offsets[-1] == len(boxes) == len(crops) == len(gt.annotations)
        first = gt.annotations[gt.annotations.image_id == gt.images.image_id.iloc[0]]
        mask = decode_segmentation(first.segmentation.iloc[0], 64, 64)
        assert (semantic[0][mask] == first.category_id.iloc[0]).all()
        np.testing.assert_allclose(boxes[offsets[0]], [first.x.iloc[0], first.y.iloc[0],
                                                       first.x.iloc[0] + first.w.iloc[0], first.y.iloc[0] + first.h.iloc[0]])
    assert len(meta["mean"]) == 3 and all(0 < s < 1 for s in meta["std"])
