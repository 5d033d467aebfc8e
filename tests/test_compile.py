"""runtime.compile: the training steps go through torch.compile; validation and the saved weights do not."""

from __future__ import annotations

import pytest
import torch

from cvpipe import engine
from cvpipe.device import resolve_runtime
from tests.conftest import model_config


def test_compiled_training_matches_eager_and_saves_plain_weights(tiny_prepared, tmp_path, monkeypatch):
    """With runtime.compile the engine hands the training module to torch.compile once (here Dynamo with its eager
    backend, so the test stays fast and the numbers comparable; the stage uses inductor), the curve equals the
    uncompiled run's, and model.pt holds plain parameter names that load back."""
    handed = []
    real_compile = torch.compile

    def dynamo_eager(model, **kwargs):
        handed.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", dynamo_eager)
    config = model_config({"task": "classification",
                           "train": {"arch": "small_resnet", "epochs": 2, "batch_size": 16, "augment": "batched",
                                     "model": {"width": 8, "blocks_per_stage": 1}}})
    curves = {}
    for compiled in (False, True):
        rows: list[dict] = []
        engine.train(config, prepared=tiny_prepared, model_dir=tmp_path / f"m{compiled}",
                     report_dir=tmp_path / f"r{compiled}", runtime=resolve_runtime("cpu", compile=compiled), seed=0,
                     on_epoch_end=lambda epoch, row: rows.append(row))
        curves[compiled] = [(row["train_loss"], row["val_top1"]) for row in rows]
    assert len(handed) == 1 and isinstance(handed[0], torch.nn.Module)
    assert [loss for loss, _ in curves[True]] == pytest.approx([loss for loss, _ in curves[False]], rel=1e-5)
    assert [top1 for _, top1 in curves[True]] == [top1 for _, top1 in curves[False]]
    saved = torch.load(tmp_path / "mTrue" / "model.pt", weights_only=True)["state_dict"]
    assert not any(key.startswith("_orig_mod") for key in saved)
    engine.load_trained(tmp_path / "mTrue")
