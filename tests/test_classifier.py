"""The classifier learns, resumes exactly, loads saved weights and exports faithfully to ONNX."""

import dataclasses

import numpy as np
import pytest
import torch

from cvpipe import engine
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.device import resolve_runtime
from cvpipe.export import export_onnx
from cvpipe.onnx_inference import onnx_metadata, onnx_session, run_onnx
from cvpipe.models.classifier import SmallResNet
from cvpipe.models.preprocess import to_model_input
from cvpipe.models.weights import load_pretrained
from cvpipe.inference import predict_probs
from tests.conftest import model_config

CPU = resolve_runtime("cpu")
TINY = model_config({"task": "classification", "train": {"arch": "small_resnet", "epochs": 2, "batch_size": 16,
                                                         "lr": 0.01, "model": {"width": 8}}})


def test_output_shape_for_sizes_that_are_not_powers_of_two():
    model = SmallResNet(num_classes=6, mean=[0.5] * 3, std=[0.2] * 3, width=8).eval()
    for size in (24, 37, 48):
        assert model(torch.rand(3, 3, size, size) * 255).shape == (3, 6)


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    images = torch.rand(12, 3, 32, 32) * 255
    labels = torch.arange(12) % 6
    model = SmallResNet(num_classes=6, mean=[0.5] * 3, std=[0.29] * 3, width=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() == 1.0
    assert loss.item() < 0.05


def _train(prepared, model_dir, config=TINY, on_epoch_end=lambda epoch, row: None):
    """engine.train as the train stage calls it; returns the outcome and the saved weights."""
    outcome = engine.train(config, prepared=prepared, model_dir=model_dir, report_dir=model_dir / "r", runtime=CPU,
                           seed=1, on_epoch_end=on_epoch_end)
    return outcome, torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]


def test_interrupted_training_resumes_to_the_same_weights(tiny_prepared, tmp_path):
    _, full = _train(tiny_prepared, tmp_path / "a")

    def interrupt(epoch, record):  # a real interruption: after the first checkpoint is written
        raise Interrupted(epoch)

    with pytest.raises(Interrupted):
        _train(tiny_prepared, tmp_path / "b", on_epoch_end=interrupt)
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    outcome, resumed = _train(tiny_prepared, tmp_path / "b")
    assert outcome.metrics["resumed_from_epoch"] == 1.0
    assert len((tmp_path / "b" / "r" / "training.csv").read_text().splitlines()) == 1 + 2
    for (name, a), b in zip(full.items(), resumed.values()):
        torch.testing.assert_close(a, b, msg=name)


class Interrupted(Exception):
    pass


def test_checkpoint_of_another_configuration_is_not_resumed(tiny_prepared, tmp_path):
    _train(tiny_prepared, tmp_path / "c")
    other = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, lr=0.02))
    outcome, _ = _train(tiny_prepared, tmp_path / "c", config=other)
    assert outcome.metrics["resumed_from_epoch"] == 0.0


def test_pretrained_weights_from_a_saved_file_are_loaded_except_a_mismatched_head(tmp_path):
    source = SmallResNet(num_classes=4, mean=[0.5] * 3, std=[0.2] * 3, width=8)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = SmallResNet(num_classes=6, mean=[0.5] * 3, std=[0.2] * 3, width=8)
    skipped = load_pretrained(target, str(tmp_path / "w.pt"))
    assert skipped == ["head.bias", "head.weight"]
    torch.testing.assert_close(target.stem[0].weight, source.stem[0].weight)


def test_onnx_matches_pytorch_on_prepared_crops_with_dynamic_batch(tiny_prepared, tmp_path):
    meta = load_meta(tiny_prepared)
    model = SmallResNet(num_classes=len(meta["class_names"]), mean=meta["mean"], std=meta["std"], width=8).eval()
    crops = np.asarray(load_array(tiny_prepared, "test", "crops"))
    inputs = to_model_input(crops)
    path = export_onnx(model, inputs[:2], tmp_path / "m.onnx", opset=18, metadata={"reject_threshold": 0.7})
    session = onnx_session(path)
    assert onnx_metadata(session)["reject_threshold"] == 0.7
    for batch in (1, 5, len(crops)):
        onnx_logits = run_onnx(session, inputs[:batch].numpy())[0]
        with torch.no_grad():
            np.testing.assert_allclose(onnx_logits, model(inputs[:batch]).numpy(), atol=1e-4, rtol=1e-4)
    probs = predict_probs(model, crops, CPU)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
