"""ISBI-2012-style membranes (grey images, binary 0/255 PNG masks) through the real pipeline, validate → export.

The fixture imitates the canonical U-Net dataset: grey cells separated by dark membranes, a few dark blobs
inside cells, masks 255 on cells and 0 on membranes. Only ``data.source: masks``, ``data.path``,
``pipeline.models: [unet]`` and ``models.unet.train.binary: true`` are set (plus the tiny sizes every
pipeline test uses); the 0/255 masks must import as one ``foreground`` class with no other setting.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from repo_support import clean_env, copy_repo, tiny_params
from repo_support import run as _run

# one xdist worker runs the whole file: its module fixture (a pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_isbi")]
log = logging.getLogger(__name__)
SIZE = 64  # px, square
IMAGES = 24


def membrane_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grey image [SIZE, SIZE] and its mask (255 cell, 0 membrane): Voronoi cells of 5-9 random seeds
    whose borders, 2 px wide, are the membranes; dark blobs inside cells (mitochondria) stay cell."""
    seeds = rng.uniform(0, SIZE, (int(rng.integers(5, 10)), 2))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cell = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    border = (np.diff(cell, axis=0, prepend=cell[:1]) != 0) | (np.diff(cell, axis=1, prepend=cell[:, :1]) != 0)
    membrane = ndimage.binary_dilation(border, iterations=1)
    image = rng.normal(160, 25, (SIZE, SIZE))
    image[membrane] = rng.normal(85, 25, int(membrane.sum()))
    for _ in range(int(rng.integers(1, 4))):  # blobs as dark as membranes but round: the model must tell them apart
        cy, cx, r = rng.uniform(8, SIZE - 8), rng.uniform(8, SIZE - 8), rng.uniform(2, 4)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2) & ~membrane
        image[blob] = rng.normal(85, 20, int(blob.sum()))
    image = ndimage.gaussian_filter(image, 0.7)
    return np.clip(image, 0, 255).astype(np.uint8), np.where(membrane, 0, 255).astype(np.uint8)


def write_isbi(root: Path, seed: int = 0) -> Path:
    """``images/NN.png`` (8-bit grey) and ``masks/NN.png`` (0/255), the layout of data.source masks."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for k in range(IMAGES):
        image, mask = membrane_scene(rng)
        Image.fromarray(image).save(root / "images" / f"{k:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k:02d}.png")
    return root


@pytest.fixture(scope="module")
def isbi_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_isbi(tmp_path_factory.mktemp("isbi") / "membranes")

    def settings(params: dict) -> None:
        default_epochs = params["models"]["unet"]["train"]["epochs"]
        tiny_params(params, ["unet"])  # 64 px, few latency runs
        # what a user sets for ISBI-style data, and nothing else (the default schedule; the head starts at the
        # training masks' background share, so cells covering ~85 % of the pixels are no problem)
        params["data"].update(source="masks", path=str(data))
        params["models"]["unet"]["train"].update(binary=True, epochs=default_epochs)

    env = clean_env()
    repo = copy_repo(tmp_path_factory.mktemp("isbi") / "repo", env, settings)
    _run(["dvc", "repro", "export@unet"], repo, env)
    return repo


def test_isbi_masks_run_from_validate_to_an_exported_binary_unet(isbi_repo):
    repo = isbi_repo
    report = json.loads((repo / "reports/validation.json").read_text())
    assert report["success"] and report["quarantine"]["count"] == 0
    assert report["counts"]["images"] == IMAGES and report["counts"]["categories"] == 1
    dataset = json.loads((repo / "data/validated/dataset.json").read_text())
    assert [c["name"] for c in dataset["categories"]] == ["foreground"]  # 255 = cell; 0 = background
    assert json.loads((repo / "data/prepared/meta.json").read_text())["class_names"] == ["foreground"]
    metrics = json.loads((repo / "reports/unet/metrics.json").read_text())
    per_class = json.loads((repo / "reports/unet/evaluate/per_class.json").read_text())
    assert [c["class"] for c in per_class] == ["background", "foreground"]  # binary: background is label 0
    test_masks = np.load(repo / "data/prepared/test/semantic.npy")
    labelled = test_masks != 255
    share = np.count_nonzero(labelled & (test_masks > 0)) / np.count_nonzero(labelled)
    all_foreground = 2 * share / (share + 1)  # the Dice of predicting "cell" everywhere
    assert all_foreground < metrics["dice"] <= 1.0 and 0.0 <= metrics["miou"] <= 1.0  # learnt more than the prior
    print(f"ISBI-style fixture: test Dice {metrics['dice']:.3f}, mIoU {metrics['miou']:.3f} (foreground)")
    export = json.loads((repo / "reports/unet/export.json").read_text())
    assert (repo / "models/unet/model.onnx").is_file() and export
