"""Every registered architecture, through the generic stage engine, held to the same contract: train → evaluate
→ tune → export on the tiny prepared set, the typed config surviving model.pt, the ONNX file served by the pyfunc
and scored by its task's promotion scorer. A new architecture is one model file, one loss file and one registry
line: the plug-in detector in ``tests/plugins`` is added that way and runs the same path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cvpipe import engine
from cvpipe.code_fingerprint import model_sources
from cvpipe.data.arrays import load_array
from cvpipe.errors import ConfigError
from cvpipe.onnx_inference import onnx_metadata, onnx_session
from cvpipe.registry import ARCHITECTURES, Architecture, architecture, get_task, registered
from cvpipe.serving import OnnxVisionModel
from tests.conftest import model_config, run_model_stages

# The smallest settings of each registered architecture (a new one must add its line here).
TINY = {
    "small_resnet": {"model": {"width": 8}},
    "yolo": {"model": {"width": 8}},
    "ssd": {"model": {"width": 8}},
    "detr": {"model": {"width": 8, "d_model": 32, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 2,
                       "dim_feedforward": 64, "num_queries": 5}, "nms_iou": None},
    "retinanet": {"model": {}},  # torchvision's ResNet50-FPN: nothing to shrink
    "fcos": {"model": {}},
    "ssdlite320": {"model": {}},
    "ssd300_vgg16": {"lr": 0.0001, "model": {"trainable_backbone_layers": 0}},  # 300 px whatever the input: SLOW
    "unet": {"model": {"base_channels": 8, "depth": 2}},
    "lraspp_mobilenet_v3": {"model": {}},  # torchvision's fixed widths: nothing to shrink
    "deeplabv3": {"model": {"backbone": "mobilenet_v3_large"}},
    "yolact": {"model": {"width": 8, "num_prototypes": 4}},
}
TUNE = {"classification": {}, "detection": {"score_thresholds": [0.05, 0.2], "nms_iou_thresholds": [0.5]},
        "segmentation": {"min_areas": [0, 8]}, "instance_segmentation": {"score_thresholds": [0.05, 0.2],
                                                                          "mask_thresholds": [0.5]}}


class Served:
    """The MLflow pyfunc interface (``predict(inputs, params=...)``, ``unwrap_python_model``) over the model class
    that the registry logs, loaded straight from an ONNX file."""

    def __init__(self, model: OnnxVisionModel) -> None:
        self.model = model

    def predict(self, inputs: np.ndarray, params: dict | None = None):
        return self.model.predict(None, inputs, params)

    def unwrap_python_model(self) -> OnnxVisionModel:
        return self.model


def _config(arch: str):
    entry = ARCHITECTURES[arch]
    tiny = TINY[arch]
    return model_config({"task": entry.task, "train": {"arch": arch, "epochs": 1, "batch_size": 8, **tiny},
                         "tune": TUNE[entry.task]}, arch)


def _check_contract(config, prepared, tmp_path) -> None:
    task = get_task(config.task)
    run = run_model_stages(config, prepared, tmp_path)
    model_dir, report_dir = tmp_path / "m", run.report_dir
    # train: one history row per epoch with the loss terms and the validation metric; the config survives.
    assert len(run.epochs) == config.train.epochs and np.isfinite(run.epochs[-1]["train_loss"])
    assert {name for name in task.final_metrics} <= set(run.epochs[0])
    trained = engine.load_trained(model_dir)
    assert trained.config == config and set(trained.meta) == set(task.meta_keys)
    # evaluate: the task's numeric metrics plus latency, also as MLflow metrics.
    metrics = json.loads((report_dir / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values()) and metrics["latency_ms_p50"] > 0
    assert run.evaluated.metrics == {f"test_{k}": float(v) for k, v in metrics.items()}
    assert all(p.is_file() for p in run.evaluated.artifacts)
    # tune: the operating point is stored and travels into the ONNX metadata.
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    assert thresholds and set(thresholds) <= set(run.tuned)
    meta = onnx_metadata(onnx_session(model_dir / "model.onnx"))
    assert {k: meta[k] for k in thresholds} == thresholds
    assert meta["class_names"] == task.class_names(config, trained.meta)
    # export: the parity gate passed (it raises otherwise) and its figures were written.
    exported = json.loads((report_dir / "export.json").read_text())
    assert exported["parity_images"] == 4 and exported["onnx_latency_ms_p50"] > 0
    # serving and promotion: the pyfunc answers for every test input, and the task's scorer scores it.
    served = OnnxVisionModel()
    served.load_onnx(model_dir / "model.onnx", task=config.task)
    inputs = np.asarray(engine.model_inputs(task, prepared, "test"))
    assert len(served.predict(None, inputs)) == len(inputs)
    score = task.scorer(Served(served), type(config).promote_metrics[0], prepared)
    assert 0.0 <= score(np.arange(len(inputs))) <= 1.0


# VGG16 at 300 px whatever the input: ~160 s of the contract on a 2-core CPU (it passed so), a tenth of the whole
# suite's CPU time; `make test-heavy` (CVPIPE_HEAVY_TESTS=1) runs it. Its wrapper code is the ssdlite320's
# (models/zoo_ssd.py), whose contract always runs, and tests/test_zoo_detection.py checks its weights, decode and loss.
HEAVY = {"ssd300_vgg16"}
RUN_HEAVY = os.environ.get("CVPIPE_HEAVY_TESTS") == "1"


@pytest.mark.parametrize("arch", [pytest.param(a, marks=[pytest.mark.slow, pytest.mark.skipif(
    not RUN_HEAVY, reason="heavy on a CPU: CVPIPE_HEAVY_TESTS=1 (make test-heavy) runs it")]) if a in HEAVY else a
                                  for a in sorted(ARCHITECTURES)])
def test_every_registered_architecture_meets_the_stage_contract(arch, tiny_prepared, tmp_path):
    _check_contract(_config(arch), tiny_prepared, tmp_path)


def test_a_new_detector_is_one_model_file_one_loss_file_and_one_registry_line(tiny_prepared, tmp_path):
    entry = Architecture("detection", "plugins.centre_net:build_centre_net", "plugins.centre_net_loss:CentreNetLoss")
    with registered("centre_net", entry):
        config = model_config({"task": "detection", "train": {"arch": "centre_net", "epochs": 2, "batch_size": 8,
                                                              "lr": 0.01, "loss": {"weight_box": 2.0}},
                               "tune": TUNE["detection"]}, "centre")
        _check_contract(config, tiny_prepared, tmp_path)
        history = (tmp_path / "r" / "training.csv").read_text().splitlines()
        assert history[0].split(",")[:4] == ["epoch", "train_loss_cls", "train_loss_box", "train_loss"]
        losses = [float(row.split(",")[3]) for row in history[1:]]
        assert losses[1] < losses[0]  # it learns
        # its fingerprint is the engine's and the detection task's code (the plug-in lives outside the package)
        assert any(p.name == "detection.py" and p.parent.name == "tasks" for p in model_sources("detection",
                                                                                                "centre_net"))
    with pytest.raises(ConfigError, match="'centre_net' is unknown"):  # registered for the block only
        architecture("centre_net", "detection")


def test_model_sources_follow_the_registry_and_not_other_architectures():
    ssd = {p.name for p in model_sources("detection", "ssd")}
    assert {"ssd.py", "default_boxes.py", "engine.py", "detection.py"} <= ssd
    assert not {"yolo.py", "detr.py", "unet.py", "classifier.py"} & ssd
    yolact = {str(p.relative_to(p.parents[1])) for p in model_sources("instance_segmentation", "yolact")}
    assert {"models/yolact.py", "models/yolo.py", "losses/yolo.py", "losses/yolact.py"} <= yolact


def test_inputs_come_from_the_array_the_task_names(tiny_prepared):
    crops = load_array(tiny_prepared, "test", "crops")
    assert engine.model_inputs(get_task("classification"), tiny_prepared, "test").shape == crops.shape
    example = engine.onnx_input_example("detection", tiny_prepared)
    assert example.shape == (1, 3, 64, 64) and example.dtype == np.float32
