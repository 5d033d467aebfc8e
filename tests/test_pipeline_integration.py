"""The real `dvc repro` on tiny params in a temporary copy of the repository."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from repo_support import REPO, clean_env, tiny_repo
from repo_support import run as _run

# one xdist worker runs the whole file: its module fixture (a pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_pipeline_integration")]


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git copy of the tracked files with tiny params for every default model, after one full `dvc repro`."""
    env = clean_env()
    models = yaml.safe_load((REPO / "params.yaml").read_text())["pipeline"]["models"]
    repo = tiny_repo(tmp_path_factory.mktemp("pipeline") / "repo", models, env)
    _run(["dvc", "repro"], repo, env)
    return repo, env


def test_repro_writes_every_output(pipeline_repo):
    repo, _ = pipeline_repo
    for path in ["data/validated/dataset.json", "reports/validation.json", "data/prepared/meta.json",
                 "models/classifier/model.pt", "models/classifier/model.onnx", "models/classifier/thresholds.json",
                 "reports/classifier/evaluate/confusion.png", "reports/classifier/evaluate/samples.png",
                 "reports/classifier/training.csv", "reports/classifier/tune/tune_curve.png"]:
        assert (repo / path).is_file(), path
    metrics = json.loads((repo / "reports/classifier/metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    export = json.loads((repo / "reports/classifier/export.json").read_text())
    assert export["max_abs_diff"] < 1e-3 and export["top1_agreement"] == 1.0


def test_mlflow_holds_one_run_with_the_whole_story(pipeline_repo):
    import mlflow
    from mlflow.tracking import MlflowClient

    repo, _ = pipeline_repo
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cvpipe")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    models = yaml.safe_load((repo / "params.yaml").read_text())["pipeline"]["models"]
    assert sorted(runs) == sorted(models)  # one run per model per pipeline execution
    run = runs["classifier"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert run.data.tags["git_commit"] == head
    assert run.data.tags["data_hash"] == meta["data_hash"]
    assert run.data.tags["model"] == "classifier" and run.data.tags["task"] == "classification"
    assert run.data.params["model.train.lr"] == "0.003"
    for key in ("train_loss", "val_top1", "test_top1", "test_top5", "reject_threshold", "export_onnx_latency_ms_p50"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1  # one point per epoch
    artifacts = {a.path for d in ("train", "evaluate", "tune", "export")
                 for a in client.list_artifacts(run.info.run_id, d)}
    assert {"train/model.pt", "evaluate/confusion.png", "evaluate/samples.png", "export/model.onnx"} <= artifacts
    # the prepared data as the run's input dataset; figures as images; descriptions on the registry
    dataset = run.inputs.dataset_inputs[0].dataset
    assert (dataset.name, dataset.digest) == ("prepared", meta["data_hash"])
    assert any(a.path.startswith("images") for a in client.list_artifacts(run.info.run_id))  # mlflow.log_image
    version = client.get_model_version_by_alias("cvpipe-classifier", "challenger")
    assert version.run_id == run.info.run_id
    assert "top1" in version.description and "reject_threshold" in version.description
    assert "classification" in client.get_registered_model("cvpipe-classifier").description
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    champion = mlflow.pyfunc.load_model("models:/cvpipe-classifier@champion")  # first model: promoted
    assert champion.metadata.run_id == run.info.run_id
    assert len(champion.predict(np.load(repo / "data/prepared/test/crops.npy")[:3])) == 3
    # All models of one `dvc repro` share one pipeline_run tag (the UI's filter for one execution).
    assert len({r.data.tags["pipeline_run"] for r in runs.values()}) == 1
    assert run.data.tags["pipeline_run"].startswith("repro-")


def test_every_model_gets_its_task_metrics_and_a_passing_parity_gate(pipeline_repo):
    repo, _ = pipeline_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    expected = {"classification": {"top1", "top5"}, "detection": {"map50", "map50_95", "map75", "ar100"},
                "segmentation": {"miou", "dice", "pixel_accuracy"},
                "instance_segmentation": {"mask_map50", "mask_map50_95", "map50", "map50_95"}}
    for name in params["pipeline"]["models"]:
        task = params["models"][name]["task"]
        metrics = json.loads((repo / "reports" / name / "metrics.json").read_text())
        assert expected[task] <= set(metrics), name
        assert (repo / "models" / name / "model.onnx").is_file()
        assert json.loads((repo / "reports" / name / "tune.json").read_text())
        for metrics_file in ("tune_metrics", "export", "promotion_metrics"):  # DVC metrics: numbers only
            values = json.loads((repo / "reports" / name / f"{metrics_file}.json").read_text())
            assert values and all(isinstance(v, (int, float)) for v in values.values()), (name, metrics_file)
        assert json.loads((repo / "models" / name / "registry.json").read_text())["alias"] == "challenger"
        assert json.loads((repo / "reports" / name / "promotion.json").read_text())["reason"].startswith("first model")


def test_second_repro_runs_nothing_and_params_change_touches_only_that_model(pipeline_repo):
    repo, env = pipeline_repo
    started = time.perf_counter()
    out = _run(["dvc", "repro"], repo, env).stdout
    assert "Running stage" not in out, out
    print(f"no-op dvc repro: {time.perf_counter() - started:.2f}s")
    original = (repo / "params.yaml").read_text()

    def changed_stages(section: str, key: str, value: object) -> set[str]:
        """Stages whose own deps/params changed (DVC re-runs their descendants too)."""
        params = yaml.safe_load(original)
        node = params
        for part in section.split("."):
            node = node[part]
        node[key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        try:
            return set(json.loads(_run(["dvc", "status", "--json"], repo, env).stdout))
        finally:
            (repo / "params.yaml").write_text(original)

    # `arrays` re-reads every model's task (a second), and its unchanged plan keeps prepare clean: see below
    assert changed_stages("models.classifier.train", "lr", 0.001) == {"arrays", "train@classifier"}
    assert changed_stages("models.classifier.tune", "target_precision", 0.9) == {"arrays", "tune@classifier"}
    assert changed_stages("data.shapes", "clutter", 2) == {"generate"}
    assert changed_stages("prepare", "crop_context", 1.5) == {"prepare"}
    params = yaml.safe_load(original)
    params["models"]["classifier"]["train"]["lr"] = 0.001
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:  # the plan is re-made, finds the same arrays, and nothing downstream of prepare is touched
        _run(["dvc", "repro", "--single-item", "arrays"], repo, env)
        assert set(json.loads(_run(["dvc", "status", "--json"], repo, env).stdout)) == {"train@classifier"}
    finally:
        (repo / "params.yaml").write_text(original)
        _run(["dvc", "repro", "--single-item", "arrays"], repo, env)


def test_a_planted_label_fault_stops_the_pipeline_with_a_clear_message(pipeline_repo, tmp_path):
    repo, env = pipeline_repo
    coco = json.loads((repo / "data/raw/shapes/annotations.json").read_text())
    coco["annotations"][0]["bbox"][2] = -5
    bad = tmp_path / "bad"
    shutil.copytree(repo / "data/raw/shapes/images", bad / "images")
    (bad / "annotations.json").write_text(json.dumps(coco))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(source="coco", path=str(bad))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "stages/validate.py", "--params", str(tmp_path / "params.yaml"),
                             "--out", str(tmp_path / "ds.json"), "--report", str(tmp_path / "report.json")],
                            cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "rule 'box width positive'" in result.stderr and "scene_00000.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ds.json").exists()
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["success"]


def test_a_code_change_reruns_only_the_models_it_touches(pipeline_repo):
    """Editing one architecture's file changes that model's code fingerprint only: after the cheap code stages
    re-hash, `dvc status` lists exactly that model's stages; reverting the edit makes the pipeline clean again."""
    repo, env = pipeline_repo
    ssd = repo / "src/cvpipe/models/ssd.py"
    original = ssd.read_text()
    code_stages = [f"code@{m}" for m in yaml.safe_load((repo / "params.yaml").read_text())["pipeline"]["models"]]
    try:
        ssd.write_text(original + "\n# a changed model file\n")
        _run(["dvc", "repro", "--single-item", *code_stages], repo, env)
        changed = set(json.loads(_run(["dvc", "status", "--json"], repo, env).stdout))
        assert changed == {f"{stage}@ssd" for stage in ("train", "evaluate", "tune", "export", "promote")}, changed
    finally:
        ssd.write_text(original)
    _run(["dvc", "repro", "--single-item", *code_stages], repo, env)
    assert json.loads(_run(["dvc", "status", "--json"], repo, env).stdout) == {}


def test_dvc_plots_render_the_training_curves_by_column_and_every_figure(pipeline_repo):
    repo, env = pipeline_repo
    shown = json.loads(_run(["dvc", "plots", "show", "--json", "--split"], repo, env).stdout)
    assert not shown.get("errors"), shown.get("errors")
    plots = shown.get("data", shown)
    assert "Training loss (detectors)" in plots and "Validation top-1 (classifier)" in plots
    drawn = {p for p in plots if p.endswith(".png")}
    for model in yaml.safe_load((repo / "params.yaml").read_text())["pipeline"]["models"]:
        figures = {str(p.relative_to(repo)) for p in (repo / "reports" / model).rglob("*.png")}
        assert figures and figures <= drawn, (model, figures - drawn)
