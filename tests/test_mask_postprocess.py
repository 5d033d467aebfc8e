"""Mask cleaning removes exactly the small components, fills only enclosed holes; probabilities → labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cvpipe.postprocess.masks import clean_mask, fill_enclosed_holes, probabilities_to_labels


def _blobs() -> tuple[np.ndarray, dict[int, tuple[slice, slice]]]:
    """A 40×40 label map with separated rectangles of known areas 3, 9, 10 and 50 px (classes 1, 2, 1, 3)."""
    mask = np.zeros((40, 40), dtype=np.uint8)
    blobs = {3: (slice(1, 2), slice(1, 4)), 9: (slice(5, 8), slice(5, 8)),
             10: (slice(12, 14), slice(12, 17)), 50: (slice(20, 25), slice(20, 30))}
    for (area, where), cls in zip(blobs.items(), (1, 2, 1, 3)):
        mask[where] = cls
        assert (mask == cls)[where].sum() == area
    return mask, blobs


def test_removes_exactly_the_components_below_min_area_and_keeps_the_rest_untouched():
    mask, blobs = _blobs()
    cleaned = clean_mask(mask, min_area=10)
    expected = mask.copy()
    for area in (3, 9):
        expected[blobs[area]] = 0
    np.testing.assert_array_equal(cleaned, expected)
    assert cleaned.dtype == mask.dtype
    np.testing.assert_array_equal(clean_mask(mask, min_area=0), mask)
    np.testing.assert_array_equal(clean_mask(mask, min_area=51), np.zeros_like(mask))


def test_components_are_per_class_and_eight_connected():
    mask = np.zeros((20, 20), dtype=np.int64)
    diagonal = (np.arange(10), np.arange(10))  # one 8-connected component of 10 px, ten 4-connected ones
    mask[diagonal] = 1
    mask[12:18, 12:18] = 2  # 36 px of class 2 ...
    mask[12:14, 18:20] = 1  # ... touching a 4-px class-1 blob, which is its own component
    cleaned = clean_mask(mask, min_area=10)
    assert (cleaned[diagonal] == 1).all()
    assert (cleaned[12:14, 18:20] == 0).all()
    assert (cleaned[12:18, 12:18] == 2).all()


def test_fills_a_hole_enclosed_by_one_class_only():
    mask = np.zeros((12, 12), dtype=np.int64)
    mask[1:7, 1:7] = 3
    mask[3:5, 3:5] = 0  # enclosed hole of class 3
    mask[8:12, 8:12] = 2
    mask[9:11, 9:12] = 0  # a notch open to the image border: not a hole
    np.testing.assert_array_equal(clean_mask(mask, min_area=0), mask)
    filled = clean_mask(mask, min_area=0, fill_holes=True)
    expected = mask.copy()
    expected[3:5, 3:5] = 3
    np.testing.assert_array_equal(filled, expected)


def test_background_enclosed_by_two_classes_is_left_alone():
    mask = np.zeros((9, 9), dtype=np.int64)
    mask[1:8, 1:5] = 1
    mask[1:8, 5:8] = 2
    mask[3:6, 4:6] = 0  # a gap on the boundary between the two objects
    np.testing.assert_array_equal(fill_enclosed_holes(mask), mask)


def test_a_small_island_of_another_class_inside_an_object_becomes_part_of_it():
    mask = np.full((10, 10), 1, dtype=np.int64)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 0
    mask[4:6, 4:6] = 2  # argmax flicker: 4 px of class 2 inside a class-1 object
    cleaned = clean_mask(mask, min_area=5, fill_holes=True)
    expected = mask.copy()
    expected[4:6, 4:6] = 1
    np.testing.assert_array_equal(cleaned, expected)


def test_binary_masks_keep_their_dtype_and_match_scipy_fill_holes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = ndimage.binary_opening(rng.random((30, 30)) < 0.55)  # ragged blobs with holes
        np.testing.assert_array_equal(clean_mask(mask, min_area=0, fill_holes=True), ndimage.binary_fill_holes(mask))
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:5] = True
    mask[2, 2] = False
    assert clean_mask(mask, min_area=3, fill_holes=True).dtype == bool
    assert clean_mask(mask, min_area=3, fill_holes=True).sum() == 16


def test_bad_masks_are_rejected():
    with pytest.raises(ValueError, match="must be \\[H, W\\]"):
        clean_mask(np.zeros((2, 4, 4)), min_area=3)
    with pytest.raises(ValueError, match="min_area"):
        clean_mask(np.zeros((4, 4)), min_area=-1)


def test_binary_probabilities_are_thresholded_inclusively():
    probs = np.array([0.2, 0.5, 0.7, 0.9]).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(probabilities_to_labels(probs), [[[0, 1], [1, 1]]])
    np.testing.assert_array_equal(probabilities_to_labels(probs, 0.7), [[[0, 0], [1, 1]]])


def test_multiclass_probabilities_use_argmax_or_a_foreground_threshold():
    # 3 channels (background, a, b) at 3 pixels
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]).T.reshape(3, 1, 3)
    np.testing.assert_array_equal(probabilities_to_labels(probs), [[0, 2, 0]])
    # foreground probability 1 − p0 = 0.5, 0.8, 0.4: with t = 0.45 the first pixel becomes its best class a
    np.testing.assert_array_equal(probabilities_to_labels(probs, 0.45), [[1, 2, 0]])
    np.testing.assert_array_equal(probabilities_to_labels(probs, 0.9), [[0, 0, 0]])
