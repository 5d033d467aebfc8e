import pytest

from cvpipe.config import ClassifierConfig, DetectorConfig, PrepareConfig, from_section, load_params
from cvpipe.errors import ConfigError
from cvpipe.models.registry import build_detector
from cvpipe.tracking import repo_root

META = {"class_names": ["a", "b"], "mean": [0.5] * 3, "std": [0.2] * 3}


def test_shipped_params_load_into_typed_configs():
    from cvpipe.runners import RUNNERS, runner_for

    params = load_params("params.yaml")
    for name in params["pipeline"]["models"]:
        task = params["models"][name]["task"]
        assert task in RUNNERS
        runner_for(task).load_config(params, name)  # every section typed; unknown keys would raise
    assert ClassifierConfig.from_params(params, "classifier").tune.target_precision > 0


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epoch'\] in section 'models.c.train'"):
        ClassifierConfig.from_params({"models": {"c": {"train": {"epoch": 3}}}}, "c")
    with pytest.raises(ConfigError, match=r"\['depthh'\]"):
        build_detector("yolo", META, {"depthh": 2})
    with pytest.raises(ConfigError, match="detector arch 'rcnn' is unknown"):
        build_detector("rcnn", META, {})
    with pytest.raises(ConfigError, match="sum to"):
        from_section(PrepareConfig, {"train_fraction": 0.9}, "prepare")


def test_detector_grid_lists_become_tuples():
    config = DetectorConfig.from_params({"models": {"d": {"tune": {"score_thresholds": [0.2, 0.4]}}}}, "d")
    assert config.tune.score_thresholds == (0.2, 0.4)


def test_mlflow_root_is_the_main_tree_inside_a_dvc_temp_workspace(tmp_path):
    workspace = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    assert repo_root(workspace) == tmp_path / "project"
