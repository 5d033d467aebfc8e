"""Shared fixtures: a tiny synthetic dataset, generated and prepared once per test session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cvpipe.data.importers import import_dataset
from cvpipe.data.prepare import prepare_dataset
from cvpipe.data.synthetic import generate_shapes
from cvpipe.device import resolve_runtime
from cvpipe.tasks.base import StageOutcome


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread per test: tiny models gain nothing from more, and on a busy 2-core machine OpenMP
    threads spin against each other (a 5 s test was measured at 130 s with two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


def assert_detector_onnx_parity(model: torch.nn.Module, path: Path, image_size: int = 64) -> None:
    """Export ``model`` (decode in the graph) at batch 2, run batch 3 in onnxruntime, compare with PyTorch."""
    import numpy as np

    from cvpipe.export import export_onnx
    from cvpipe.models.detector import DecodedDetector
    from cvpipe.onnx_inference import onnx_session, run_onnx

    images = torch.rand(3, 3, image_size, image_size) * 255
    export_onnx(DecodedDetector(model.eval()), images[:2], path, opset=18, output_names=("boxes", "scores"))
    onnx_boxes, onnx_scores = run_onnx(onnx_session(path), images.numpy())
    with torch.no_grad():
        boxes, scores = model.decode(model(images))
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-4)


def resaved_state_dict(tmp_path: Path, path: Path, edit) -> str:
    """``path``'s state dict with ``edit(state)`` applied, saved as ``tmp_path/edited.pth`` (a broken weights file)."""
    state = torch.load(path, weights_only=True)
    edit(state)
    out = tmp_path / "edited.pth"
    torch.save(state, out)
    return str(out)


def overfit(model: torch.nn.Module, criterion: torch.nn.Module, images: torch.Tensor, targets: list, *,
            steps: int = 150, lr: float = 3e-3) -> torch.nn.Module:
    """AdamW on one fixed batch with a linearly decaying learning rate; returns the model in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.1, total_iters=steps)
    for _ in range(steps):
        loss = criterion(model(images), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


@dataclass
class StageResults:
    epochs: list[dict]
    evaluated: StageOutcome
    tuned: dict  # the tune stage's JSON report
    exported: StageOutcome
    report_dir: Path


def model_config(section: dict, name: str = "m"):
    """A typed model config from a params-style ``models.<name>`` section (task, train, tune, export)."""
    from cvpipe.task_config import load_model_config

    return load_model_config(section, f"models.{name}")


def run_model_stages(config, prepared: Path, tmp_path: Path) -> StageResults:
    """train → evaluate → tune → export of a typed model config on ``prepared``, as the stages call the engine,
    outside DVC."""
    from cvpipe import engine

    runtime = resolve_runtime("cpu")
    model_dir, report_dir = tmp_path / "m", tmp_path / "r"
    model_dir.mkdir()
    epochs: list[dict] = []
    engine.train(config, prepared=prepared, model_dir=model_dir, report_dir=report_dir, runtime=runtime, seed=0,
                 on_epoch_end=lambda epoch, row: epochs.append(row))
    evaluated = engine.evaluate(prepared=prepared, model_dir=model_dir, report_dir=report_dir, runtime=runtime,
                                latency_runs=2)
    engine.tune(config, prepared=prepared, model_dir=model_dir, report_dir=report_dir, runtime=runtime)
    exported = engine.export(config, prepared=prepared, model_dir=model_dir, report_dir=report_dir, opset=18,
                             latency_runs=2, parity_images=4)
    tuned = json.loads((report_dir / "tune.json").read_text())
    return StageResults(epochs, evaluated, tuned, exported, report_dir)
