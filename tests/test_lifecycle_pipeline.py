"""The model lifecycle on the real pipeline (tiny params, classifier only) in a temporary git copy:
scheduled retraining twice, the lock, a DVC experiment's MLflow run, and the MLflow UI in headless Chromium."""

from __future__ import annotations

import fcntl
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from repo_support import apt_install, clean_env, free_port, run, stop, tiny_repo, wait_for_http

# one xdist worker runs the whole file: its module fixture (a pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_lifecycle_pipeline")]
CVPIPE = str(Path(sys.executable).parent / "cvpipe")


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], subprocess.CompletedProcess]:
    """A tiny repo (never run) after its first `cvpipe retrain`."""
    env = clean_env()
    repo = tiny_repo(tmp_path_factory.mktemp("lifecycle") / "repo", ["classifier"], env)
    started = time.perf_counter()
    first = run([CVPIPE, "retrain", "--repo", str(repo)], repo, env)
    print(f"first retrain: {time.perf_counter() - started:.1f}s")
    return repo, env, first


def _client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}", registry_uri=f"sqlite:///{repo / 'mlflow.db'}")


def test_first_retrain_runs_the_pipeline_and_promotes_the_first_model(retrained):
    repo, _, first = retrained
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 1, first.stdout
    assert lines[0].startswith("retrained, promoted: cvpipe-classifier v1 is champion (first model")
    report = json.loads((repo / "reports/classifier/promotion.json").read_text())
    assert report["outcome"] == "promoted" and report["metric"] == "top1"
    client = _client(repo)
    champion = client.get_model_version_by_alias("cvpipe-classifier", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["promotion"] == "promoted"
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert champion.tags["data_hash"] == meta["data_hash"]
    head = run(["git", "rev-parse", "HEAD"], repo, clean_env()).stdout.strip()
    assert champion.tags["git_commit"] == head
    metrics = json.loads((repo / "reports/classifier/metrics.json").read_text())
    assert float(champion.tags["test_top1"]) == pytest.approx(metrics["top1"])
    run_tags = client.get_run(champion.run_id).data.tags
    assert run_tags["pipeline_run"] in lines[0]  # every run of this retrain carries its id


def test_the_registered_champion_serves_the_exported_onnx_with_its_processing(retrained):
    """models:/<name>@champion predicts what the exported ONNX graph predicts, from uint8 images."""
    import mlflow
    import numpy as np

    from cvpipe.onnx_inference import onnx_session, run_onnx

    repo, _, _ = retrained
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model("models:/cvpipe-classifier@champion")
    finally:
        mlflow.set_tracking_uri(None)
    crops = np.load(repo / "data/prepared/test/crops.npy")
    table = model.predict(crops)
    logits = run_onnx(onnx_session(repo / "models/classifier/model.onnx"),
                      crops.transpose(0, 3, 1, 2).astype(np.float32))[0]
    assert (table["label"].to_numpy() == logits.argmax(axis=1)).all()
    reject = json.loads((repo / "models/classifier/thresholds.json").read_text())["reject_threshold"]
    assert (table["accepted"].to_numpy() == (table["score"].to_numpy() >= reject)).all()
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None


def test_second_retrain_has_nothing_to_do(retrained):
    repo, env, _ = retrained
    started = time.perf_counter()
    second = run([CVPIPE, "retrain", "--repo", str(repo)], repo, env)
    print(f"second retrain: {time.perf_counter() - started:.1f}s")
    assert second.stdout.strip() == "nothing to do: data, params and code unchanged since the last run"
    assert str(_client(repo).get_model_version_by_alias("cvpipe-classifier", "champion").version) == "1"


def test_a_second_retrain_while_one_holds_the_lock_exits_with_a_clear_message(retrained):
    repo, env, _ = retrained
    lock = repo / ".dvc/tmp/cvpipe-retrain.lock"
    with lock.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write("4242\n")
        fh.flush()
        busy = run([CVPIPE, "retrain", "--repo", str(repo)], repo, env, check=False)
        started = time.perf_counter()
        waited = run([CVPIPE, "retrain", "--repo", str(repo), "--wait", "1.5"], repo, env, check=False)
        assert time.perf_counter() - started >= 1.5
    assert busy.returncode == waited.returncode == 75
    assert busy.stdout.startswith("busy: another retrain is running (pid 4242")
    assert "after waiting 1.5 s" in waited.stdout
    after = run([CVPIPE, "retrain", "--repo", str(repo)], repo, env)  # the lock is free again
    assert after.stdout.startswith("nothing to do")


def test_a_dvc_experiment_is_one_tagged_mlflow_run_compared_by_promotion(retrained):
    repo, env, _ = retrained
    run(["dvc", "exp", "run", "-n", "lr-0002", "-S", "models.classifier.train.lr=0.002"], repo, env)
    client = _client(repo)
    experiment = client.get_experiment_by_name("cvpipe")
    runs = client.search_runs([experiment.experiment_id], "tags.dvc_exp_name = 'lr-0002'")
    assert len(runs) == 1  # one run per model per experiment
    tags = runs[0].data.tags
    assert tags["changed_params"] == "models.classifier.train.lr=0.002"
    assert tags["pipeline_run"] == "exp-lr-0002"
    assert runs[0].data.params["model.train.lr"] == "0.002"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    assert "lr-0002" in json.dumps(shown)
    report = json.loads((repo / "reports/classifier/promotion.json").read_text())
    assert report["challenger"]["run_id"] == runs[0].info.run_id
    assert report["outcome"] in ("promoted", "kept") and report["champion"]["version"] == "1"
    assert report["bootstrap"]["resamples"] == 50
    assert report["bootstrap"]["ci_low"] <= report["bootstrap"]["difference"] <= report["bootstrap"]["ci_high"]
    print(f"promotion of the experiment: {report['reason']} (bootstrap {report['bootstrap']['seconds']} s)")


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _dump_dom(browser: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (virtual time lets the React app fetch and render)."""
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", f"--user-data-dir={profile}", "--window-size=1600,1000",
                             "--virtual-time-budget=30000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)))


def test_make_ui_shows_runs_metrics_and_plots_in_headless_chromium(retrained, tmp_path):
    reason = apt_install("chromium", _chromium)
    if reason:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    repo, env, _ = retrained
    port = free_port()
    # The command `make ui` runs, with this interpreter's venv (the copy has none) and a free port.
    recipe = run(["make", "-s", "-n", "-o", "venv", "ui", f"BIN={Path(sys.executable).parent}",
                  f"MLFLOW_PORT={port}"], repo, env).stdout.strip().splitlines()[-1]
    assert f"--port {port}" in recipe and f"sqlite:///{repo}/mlflow.db" in recipe
    server = subprocess.Popen(shlex.split(recipe), cwd=repo, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(base + "/health", 120, server)
        client = _client(repo)
        experiment = client.get_experiment_by_name("cvpipe")
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        first = next(r for r in runs if r.info.run_name == "classifier")
        browser = _chromium()

        table = _text(_dump_dom(browser, f"{base}/#/experiments/{experiment.experiment_id}/runs", tmp_path / "p1"))
        assert f"{len(runs)} matching runs" in table, table[:3000]
        assert "classifier" in table and "cvpipe-classifier v1" in table

        page = _text(_dump_dom(browser, f"{base}/#/experiments/{experiment.experiment_id}/runs/{first.info.run_id}",
                               tmp_path / "p2"))
        for name in ("test_top1", "val_top1", "train_loss", "export_onnx_latency_ms_p50", "promote_promoted"):
            assert re.search(rf"\b{name} [-0-9.e]+", page), (name, page[:3000])
        assert f"test_top1 {first.data.metrics['test_top1']}"[:16] in page

        artifact = "evaluate/confusion.png"
        dom = _dump_dom(browser, f"{base}/#/experiments/{experiment.experiment_id}/runs/{first.info.run_id}"
                                 f"/artifacts/{artifact}", tmp_path / "p3")
        assert re.search(rf'<img[^>]*alt="{artifact}"[^>]*src="blob:', dom), _text(dom)[:3000]
        with urllib.request.urlopen(f"{base}/get-artifact?path={artifact}&run_uuid={first.info.run_id}") as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"  # the image the page displays
    finally:
        stop(server)
