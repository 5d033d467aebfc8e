"""Shared fixtures: a tiny synthetic dataset, generated and prepared once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvpipe.data.importers import import_dataset
from cvpipe.data.prepare import prepare_dataset
from cvpipe.data.synthetic import generate_shapes

TINY_SHAPES = dict(num_images=40, image_size=64, min_objects=2, max_objects=4, min_object_size=14,
                   max_object_size=28, max_occlusion=0.3, clutter=3)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "shapes"
    generate_shapes(out, seed=7, **TINY_SHAPES)
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(import_dataset("shapes", tiny_raw), out, seed=3, image_size=64, fractions=(0.6, 0.2, 0.2),
                    crop_size=32, crop_context=1.25)
    return out
