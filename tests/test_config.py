import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cvpipe.config import PrepareConfig, from_section, load_config, load_params
from cvpipe.errors import ConfigError
from cvpipe.tracking import repo_root
from tests.conftest import model_config

META = {"class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.2] * 3}
REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_load_into_typed_configs():
    params = load_config("params.yaml")
    assert set(params.pipeline.models) <= set(params.models)
    for name in params.pipeline.models:
        config = params.model(name)
        assert type(config).__name__.endswith("Config") and config.task == load_params()["models"][name]["task"]
    assert params.model("classifier").tune.target_precision > 0
    assert params.model("classifier").train.model["width"] == 32


def _write(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["models"]["yolo"]["train"].update(lr="fast"), r"models\.yolo\.train\.lr: Input should be a valid number.*'fast'"),
    (lambda p: p["models"]["ssd"]["train"].update(epochs=-5), r"models\.ssd\.train\.epochs: Input should be greater than 0.*-5"),
    (lambda p: p["runtime"].update(device="gpu"), r"runtime\.device: String should match pattern.*'gpu'"),
    (lambda p: p["models"]["unet"]["train"].update(epoch=3), r"models\.unet\.train\.epoch: Unexpected keyword argument"),
    (lambda p: p.update(sead=1), r"sead: Unexpected keyword argument"),
    (lambda p: p["validate"].update(on_error="drop"), r"validate.on_error must be one of"),
    (lambda p: p["models"]["yolo"].update(task="keypoints"), r"models\.yolo\.task 'keypoints' is unknown"),
    (lambda p: p["pipeline"].update(models=["yolo", "rcnn"]), r"pipeline.models names \['rcnn'\]"),
    (lambda p: p["promote"].update(metric={"detection": "top1"}), r"promote.metric.detection: 'top1' cannot be"),
])
def test_bad_params_fail_at_load_naming_the_full_key_path(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_params(_write(tmp_path, edit))


def test_a_bad_value_stops_a_stage_before_torch_loads(tmp_path):
    """The params are checked first: the stage exits 1 with the key path, and nothing heavy was imported."""
    bad = _write(tmp_path, lambda p: p["models"]["yolo"]["train"].update(lr="fast"))
    probe = ("import sys\nfrom cvpipe.config import load_params\nfrom cvpipe.errors import ConfigError\n"
             f"try:\n    load_params({str(bad)!r})\nexcept ConfigError:\n    print('torch' in sys.modules)\n")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    result = subprocess.run([sys.executable, "stages/train.py", "--params", str(bad), "--model", "yolo", "--prepared",
                             "p", "--model-dir", "m", "--report-dir", "r"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "models.yolo.train.lr" in result.stderr and "Traceback" not in result.stderr


def test_unknown_model_and_loss_arguments_and_architectures_are_named():
    from cvpipe.build import build_model

    config = model_config({"task": "detection", "train": {"arch": "yolo", "model": {"depthh": 2}}})
    with pytest.raises(ConfigError, match=r"\['depthh'\]"):
        build_model("detection", config.train, num_classes=2, mean=META["mean"], std=META["std"])
    with pytest.raises(ConfigError, match=r"models.m.train.arch 'rcnn' is unknown for task 'detection'"):
        from cvpipe.registry import architecture

        architecture("rcnn", "detection", "models.m.train")
    with pytest.raises(ConfigError, match="sum to"):
        from_section(PrepareConfig, {"train_fraction": 0.9}, "prepare")


def test_grid_lists_become_tuples_and_the_config_survives_a_round_trip():
    from cvpipe.task_config import dump_config, load_model_config

    config = model_config({"task": "detection", "train": {"arch": "ssd"}, "tune": {"score_thresholds": [0.2, 0.4]}})
    assert config.tune.score_thresholds == (0.2, 0.4)
    assert load_model_config(dump_config(config), "model.pt") == config


def test_mlflow_root_is_the_main_tree_inside_a_dvc_temp_workspace(tmp_path):
    workspace = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    assert repo_root(workspace) == tmp_path / "project"
