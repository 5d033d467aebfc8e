"""A crashed, killed or changed run comes back right: code changes retrain, broken checkpoints are moved aside,
killed trainings keep one MLflow run, concurrent processes share one store, promotions compare-and-set, and
`make clean` deletes only what the pipeline made."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cvpipe import engine, tracking
from cvpipe.device import resolve_runtime
from tests.conftest import model_config
from tests.repo_support import REPO

CPU = resolve_runtime("cpu")
TINY_SECTION = {"task": "classification", "train": {"arch": "small_resnet", "epochs": 2, "batch_size": 16,
                                                    "lr": 0.01, "model": {"width": 8}}}
TINY = model_config(TINY_SECTION)


class Interrupted(Exception):
    pass


def _train(prepared, model_dir, **kwargs):
    outcome = engine.train(TINY, prepared=prepared, model_dir=model_dir, report_dir=model_dir / "r", runtime=CPU,
                           seed=1, **{"on_epoch_end": lambda epoch, row: None, **kwargs})
    return outcome, torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]


def _interrupt_after_first_epoch(epoch, row):
    raise Interrupted(epoch)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))


# --- a code change retrains -------------------------------------------------------------------------------

TRAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from cvpipe import engine
    from cvpipe.device import resolve_runtime
    from cvpipe.task_config import load_model_config
    section, prepared, model_dir = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    outcome = engine.train(load_model_config(section, "models.m"), prepared=prepared, model_dir=model_dir,
                           report_dir=model_dir / "r", runtime=resolve_runtime("cpu"), seed=1,
                           on_epoch_end=lambda epoch, row: None)
    print(json.dumps(outcome.metrics))
""")


def test_a_changed_loss_file_retrains_instead_of_resuming_the_finished_checkpoint(tiny_prepared, tmp_path):
    """The train stage re-runs after an edit to the loss; the finished checkpoint of the old code must not be
    "resumed" (which would keep the old weights): the new code trains from scratch and its weights differ."""
    import json

    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**os.environ, "PYTHONPATH": str(src)}
    model_dir = tmp_path / "model"

    def train() -> tuple[dict, dict]:
        out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, json.dumps(TINY_SECTION), str(tiny_prepared),
                              str(model_dir)], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.splitlines()[-1]), torch.load(model_dir / "model.pt")["state_dict"]

    before, old_weights = train()
    assert before["resumed_from_epoch"] == 0.0
    again, same_weights = train()  # unchanged code: the finished checkpoint is resumed, nothing retrains
    assert again["resumed_from_epoch"] == 2.0 and _same_weights(old_weights, same_weights)

    loss_file = src / "cvpipe/losses/classification.py"
    text = loss_file.read_text()
    assert "label_smoothing=self.label_smoothing" in text
    loss_file.write_text(text.replace("label_smoothing=self.label_smoothing", "label_smoothing=0.3"))
    after, new_weights = train()
    assert after["resumed_from_epoch"] == 0.0
    assert not _same_weights(old_weights, new_weights)


# --- broken checkpoints -----------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a checkpoint"])
def test_an_unreadable_checkpoint_is_moved_aside_and_training_starts_from_scratch(tiny_prepared, tmp_path, damage,
                                                                                   caplog):
    _, fresh = _train(tiny_prepared, tmp_path / "fresh")
    model_dir = tmp_path / "damaged"
    with pytest.raises(Interrupted):
        _train(tiny_prepared, model_dir, on_epoch_end=_interrupt_after_first_epoch)
    checkpoint = model_dir / "checkpoints" / "last.pt"
    data = checkpoint.read_bytes()
    if damage == "truncated":
        checkpoint.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        checkpoint.write_bytes(os.urandom(4096))
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, checkpoint)

    outcome, weights = _train(tiny_prepared, model_dir)

    assert outcome.metrics["resumed_from_epoch"] == 0.0
    assert _same_weights(fresh, weights)  # a full, deterministic run from scratch
    aside = list(checkpoint.parent.glob("last.pt.unreadable-*"))
    assert len(aside) == 1, "the broken file is kept for inspection, never deleted"
    assert "unreadable" in caplog.text and "from scratch" in caplog.text
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2  # the new run wrote a good one


# --- MLflow runs of killed trainings ------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    tracking.configure()
    return tmp_path


def _dead_process() -> str:
    child = subprocess.Popen(["true"])
    child.wait()
    return f"{__import__('socket').gethostname()}:{child.pid}"


def _open(model_dir, prepared, resumable=None):
    return tracking.open_model_run(experiment="crash", model="clf", task="classification", params={"a": 1},
                                   data_hash="h", device="cpu", resumable_run_id=resumable)


def _kill(run_id: str) -> None:
    """What SIGKILL leaves behind: the run RUNNING, tagged with a process that no longer exists."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tracking.PROCESS_TAG, _dead_process())


def _train_in_run(run_id, prepared, model_dir, replay, **kwargs):
    import mlflow

    with tracking.resume_run(run_id):
        return _train(prepared, model_dir, run_id=run_id, replay_history=replay,
                      on_epoch_end=kwargs.get("on_epoch_end", lambda e, row: mlflow.log_metrics(row, step=e)))


def _epochs_logged(run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "train_loss"))


def test_a_killed_training_resumes_in_the_same_mlflow_run_with_the_whole_curve(store, tiny_prepared):
    from mlflow.tracking import MlflowClient

    model_dir = store / "model"
    run_id, continued = _open(model_dir, tiny_prepared)
    assert not continued

    def log_then_die(epoch, row):
        import mlflow

        mlflow.log_metrics(row, step=epoch)
        raise Interrupted(epoch)

    with pytest.raises(Interrupted):
        _train_in_run(run_id, tiny_prepared, model_dir, replay=True, on_epoch_end=log_then_die)
    _kill(run_id)

    resumable = engine.resumable_run_id(TINY, prepared=tiny_prepared, model_dir=model_dir, seed=1)
    assert resumable == run_id
    again, continued = _open(model_dir, tiny_prepared, resumable)
    assert (again, continued) == (run_id, True)
    outcome, _ = _train_in_run(again, tiny_prepared, model_dir, replay=not continued)
    assert outcome.metrics["resumed_from_epoch"] == 1.0
    assert _epochs_logged(run_id) == [1, 2]  # one row, the whole curve, no epoch twice
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("crash").experiment_id])
    assert len(runs) == 1


def test_a_dead_running_run_is_marked_killed_and_a_lost_run_is_replaced_by_one_with_the_whole_curve(
        store, tiny_prepared):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    model_dir = store / "model"
    old, _ = _open(model_dir, tiny_prepared)
    with pytest.raises(Interrupted):
        _train_in_run(old, tiny_prepared, model_dir, replay=True, on_epoch_end=_interrupt_after_first_epoch)
    _kill(old)
    alive, _ = _open(store / "other", tiny_prepared)  # a run whose process lives (this test): never touched
    client.update_run(alive, status="RUNNING")
    client.set_tag(alive, tracking.PROCESS_TAG, tracking.this_process())

    fresh, continued = _open(store / "fresh", tiny_prepared)  # another training of the model starts
    assert not continued and fresh not in (old, alive)
    assert client.get_run(old).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"

    client.delete_run(old)  # the checkpoint's run was deleted in the UI: resume into a new run
    resumable = engine.resumable_run_id(TINY, prepared=tiny_prepared, model_dir=model_dir, seed=1)
    assert resumable == old
    new, continued = _open(model_dir, tiny_prepared, resumable)
    assert not continued and new != old
    outcome, _ = _train_in_run(new, tiny_prepared, model_dir, replay=not continued)
    assert outcome.metrics["resumed_from_epoch"] == 1.0
    assert _epochs_logged(new) == [1, 2]  # epoch 1 replayed from the checkpoint, epoch 2 trained


# --- concurrent creation of the embedded store ------------------------------------------------------------

STORE_SCRIPT = textwrap.dedent("""
    import sys, time
    start = float(sys.argv[1])
    import mlflow
    from cvpipe import tracking
    time.sleep(max(0.0, start - time.time()))  # all processes open the new store at the same moment
    tracking.configure()
    experiment = tracking.get_or_create_experiment("concurrent")
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("x", 1.0)
    print(experiment)
""")


def test_processes_creating_the_sqlite_store_at_once_all_succeed(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    start = time.time() + 8  # after every interpreter has imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", STORE_SCRIPT, str(start)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err[-3000:]
    assert len({out.strip() for _, out, _ in results}) == 1  # one experiment
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("concurrent")
    assert len(client.search_runs([experiment.experiment_id])) == 3


# --- promotion is compare-and-set ----------------------------------------------------------------------------

def _registered(client, name: str, versions: int, tmp_path: Path) -> None:
    client.create_registered_model(name)
    for i in range(versions):
        (tmp_path / f"v{i}").mkdir()
        client.create_model_version(name, source=str(tmp_path / f"v{i}"))


def test_a_champion_that_moves_during_the_comparison_is_compared_again(store, tiny_prepared, monkeypatch):
    """v2 is compared with no champion; meanwhile another process makes v3 champion. v2 must not take the alias
    on the strength of a comparison with nothing: it is compared with v3 (and loses here)."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from cvpipe.config import PromoteConfig
    from cvpipe.lifecycle import promote as promotion

    client = MlflowClient()
    _registered(client, "m", 3, store)
    seen: list[str | None] = []

    def decide(client, name, task, challenger_version, challenger_model, champion, prepared, config):
        seen.append(None if champion is None else str(champion.version))
        if champion is None:
            client.set_registered_model_alias(name, "champion", "3")  # the other promotion lands meanwhile
            return {"metric": None, "challenger": {}, "champion": None}, "promoted", "first model"
        return {"metric": None, "challenger": {}, "champion": {}}, "kept", "no significant gain"

    monkeypatch.setattr(promotion, "_decide", decide)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda uri: object())
    report = promotion.promote(name="m", task="classification", challenger_version="2", prepared=tiny_prepared,
                               config=PromoteConfig(), report_path=store / "promotion.json")
    assert seen == [None, "3"]
    assert report["outcome"] == "kept" and report["champion_version"] == "3"
    assert str(client.get_model_version_by_alias("m", "champion").version) == "3"


def test_two_promotions_at_once_run_one_after_the_other(store, tiny_prepared, monkeypatch):
    import threading

    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from cvpipe.config import PromoteConfig
    from cvpipe.lifecycle import promote as promotion

    client = MlflowClient()
    _registered(client, "m", 2, store)
    inside, overlaps, seen = [0], [], {}

    def decide(client, name, task, challenger_version, challenger_model, champion, prepared, config):
        inside[0] += 1
        overlaps.append(inside[0])
        time.sleep(0.5)
        inside[0] -= 1
        seen[challenger_version] = None if champion is None else str(champion.version)
        return {"metric": None, "challenger": {}, "champion": None}, "promoted", "better"

    monkeypatch.setattr(promotion, "_decide", decide)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda uri: object())
    threads = [threading.Thread(target=promotion.promote, kwargs=dict(
        name="m", task="classification", challenger_version=v, prepared=tiny_prepared, config=PromoteConfig(),
        report_path=store / f"promotion-{v}.json")) for v in ("1", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1  # never two comparisons at once
    first, second = sorted(seen, key=lambda v: seen[v] is not None)
    assert seen[first] is None and seen[second] == first  # the second was compared with the first's result
    assert str(client.get_model_version_by_alias("m", "champion").version) == second


# --- make clean -------------------------------------------------------------------------------------------------

def test_clean_deletes_the_pipeline_outputs_and_never_user_files(tmp_path):
    from tests.repo_support import clean_env, copy_repo

    env = clean_env()
    repo = copy_repo(tmp_path / "repo", env, lambda params: params["pipeline"].update(models=["yolo"]))
    generated = [repo / "data/raw/shapes/images/a.png", repo / "data/prepared/meta.json",
                 repo / "models/yolo/model.pt", repo / "models/yolo/checkpoints/last.pt",
                 repo / "reports/yolo/metrics.json", repo / "reports/validation.json", repo / "dvc.lock"]
    mine = [repo / "data/raw/my_dataset/img.jpg", repo / "models/notes.md", repo / "reports/my_analysis.ipynb",
            repo / "mlflow.db"]
    for path in generated + mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("schema: '2.0'\nstages: {}\n" if path.name == "dvc.lock" else "x")
    out = subprocess.run([sys.executable, "-c", "from cvpipe.cli import main; raise SystemExit(main())", "clean",
                          "--repo", str(repo)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert [p for p in generated if p.exists()] == []
    assert [p for p in mine if not p.exists()] == []
    assert not (repo / "models/yolo").exists() and (repo / "models").is_dir()
