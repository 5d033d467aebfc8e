"""COCO segmentations ↔ binary masks: RLE round trips and polygons through pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvpipe.data.masks import decode_segmentation, encode_mask


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_of_random_masks_through_json(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 40, size=2)
    mask = rng.random((height, width)) < rng.random()
    rle = json.loads(json.dumps(encode_mask(mask)))  # what instances.json stores
    assert rle["size"] == [height, width] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_segmentation(rle, height, width), mask)


@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_masks_round_trip(fill):
    mask = np.full((7, 5), fill)
    np.testing.assert_array_equal(decode_segmentation(encode_mask(mask), 7, 5), mask)


def test_uncompressed_rle_and_polygon_decode():
    # uncompressed RLE in column-major order: 3 zeros, 2 ones, rest zeros, on a 4×2 image
    mask = decode_segmentation({"size": [4, 2], "counts": [3, 2, 3]}, 4, 2)
    expected = np.zeros((4, 2), bool)
    expected[3, 0] = expected[0, 1] = True
    np.testing.assert_array_equal(mask, expected)
    square = decode_segmentation([[2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)  # polygon of a 4×4 square
    assert square[3:6, 3:6].all() and not square[:2].any() and not square[:, 7:].any()
    with pytest.raises(ValueError, match="unsupported"):
        decode_segmentation("nope", 4, 4)
