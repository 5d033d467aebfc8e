"""Runtime options of the training steps: torch.compile, bfloat16 autocast on CPU, channels_last."""

from __future__ import annotations

import logging

import pytest
import torch

from cvpipe import engine
from cvpipe.device import cpu_has_bfloat16, resolve_runtime
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


TINY_CLASSIFIER = {"task": "classification",
                   "train": {"arch": "small_resnet", "epochs": 3, "batch_size": 16, "augment": "batched",
                             "model": {"width": 8, "blocks_per_stage": 1}}}


def test_cpu_amp_trains_in_bfloat16_where_the_cpu_has_it(tiny_prepared, tmp_path, caplog):
    """runtime.cpu_amp: bfloat16 autocast (no loss scaling) on a CPU with native bf16, and the model still learns;
    on a CPU without it float32, said in the log."""
    with caplog.at_level(logging.INFO, logger="cvpipe.device"):
        runtime = resolve_runtime("cpu", cpu_amp=True)
    if not cpu_has_bfloat16():
        assert not runtime.amp and "no native bfloat16" in caplog.text
        return
    assert runtime.amp and runtime.amp_dtype == torch.bfloat16 and not runtime.loss_scaling
    with runtime.autocast():
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    rows: list[dict] = []
    engine.train(model_config(TINY_CLASSIFIER), prepared=tiny_prepared, model_dir=tmp_path / "m",
                 report_dir=tmp_path / "r", runtime=runtime, seed=0, on_epoch_end=lambda epoch, row: rows.append(row))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    saved = torch.load(tmp_path / "m" / "model.pt", weights_only=True)["state_dict"]
    assert all(v.dtype != torch.bfloat16 for v in saved.values())  # float32 master weights


def test_channels_last_changes_the_layout_not_the_model(tiny_prepared, tmp_path):
    """runtime.channels_last: the same seed trains to the same curve (up to summation order) in NCHW and NHWC."""
    curves = {}
    for channels_last in (False, True):
        rows: list[dict] = []
        engine.train(model_config(TINY_CLASSIFIER), prepared=tiny_prepared, model_dir=tmp_path / f"m{channels_last}",
                     report_dir=tmp_path / f"r{channels_last}", runtime=resolve_runtime("cpu", channels_last=channels_last),
                     seed=0, on_epoch_end=lambda epoch, row: rows.append(row))
        curves[channels_last] = [row["train_loss"] for row in rows]
    assert curves[True] == pytest.approx(curves[False], rel=1e-3)
