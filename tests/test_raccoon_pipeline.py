"""The whole pipeline on a real dataset brought in Pascal VOC: ../shared/datasets/raccoon (200 web images, one
class; folders ``images/`` and ``annotations/``), the README's worked example, on tiny params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_support import clean_env, copy_repo
from repo_support import run as _run

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
# one xdist worker runs the whole file: its module fixture (a pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_raccoon_pipeline")]


@pytest.fixture(scope="module")
def raccoon_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git copy of the tracked files pointed at the raccoon VOC folder, after `dvc repro export@yolo`."""
    if not (RACCOON / "annotations").is_dir():
        pytest.skip(f"raccoon dataset not found at {RACCOON}: it lives in ../shared beside the repository, "
                    "which a user's clone does not have")

    def readme_settings(params: dict) -> None:  # the README's settings for this dataset, plus tiny training
        params["data"].update(source="voc", path=str(RACCOON))
        params["data"]["voc"] = {"images": "images", "annotations": "annotations"}
        params["pipeline"]["models"] = ["yolo"]
        params["prepare"].update(image_size=64, crop_size=32)
        params["models"]["yolo"]["train"].update(epochs=1, batch_size=32, min_steps=None)
        params["export"].update(latency_runs=2, parity_images=8)

    env = clean_env()
    repo = copy_repo(tmp_path_factory.mktemp("raccoon") / "repo", env, readme_settings)
    _run(["dvc", "repro", "export@yolo"], repo, env)
    return repo


def test_raccoon_runs_from_voc_to_an_exported_detector(raccoon_repo):
    repo = raccoon_repo
    report = json.loads((repo / "reports/validation.json").read_text())
    assert report["success"] and report["quarantine"]["count"] == 0
    assert report["counts"] == {"images": 200, "annotations": 217, "categories": 1}
    assert report["stats"]["modes"] == {"RGB": 197, "L": 3}  # grayscale files are read as RGB
    assert (repo / "reports/validation.md").read_text().startswith("# Dataset validation: passed")
    dataset = json.loads((repo / "data/validated/dataset.json").read_text())
    assert [c["name"] for c in dataset["categories"]] == ["raccoon"]
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert meta["class_names"] == ["raccoon"]
    assert sum(s["images"] for s in meta["splits"].values()) == 200
    metrics = json.loads((repo / "reports/yolo/metrics.json").read_text())
    assert 0.0 <= metrics["map50"] <= 1.0
    assert (repo / "models/yolo/model.onnx").is_file()


def test_unchanged_labels_skip_validation(raccoon_repo):
    status = json.loads(_run(["dvc", "status", "--json", "validate"], raccoon_repo, clean_env()).stdout)
    assert status == {}, status
