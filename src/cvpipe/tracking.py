"""MLflow conventions in one place.

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo root>/mlflow.db`` with artifacts
  in ``<repo root>/mlartifacts``. The repo root is the *main* working tree, also when DVC runs an
  experiment in a temporary workspace (``.dvc/tmp/exps/...``), so no run is written to a throw-away copy.
- One experiment per project, tagged ``mlflow.experimentKind=custom_model_development`` so the UI opens
  on the runs table.
- One run per model per pipeline execution: ``train`` opens it, writes its id to a file (a DVC out), and
  evaluate, tune and export continue the same run.
- Tags on every run: git commit, dirty flag, prepared-data hash, model name, task, device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def repo_root(start: str | Path | None = None) -> Path:
    """The main working tree: the folder above ``.dvc/tmp/exps/<ws>`` for DVC temp workspaces,
    else git's main worktree, else ``start`` itself."""
    start = Path(start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=start,
                                capture_output=True, text=True, check=True).stdout.strip()
        return Path(common).parent
    except (OSError, subprocess.CalledProcessError):
        return start


def default_tracking_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def configure() -> str:
    """Point MLflow at the project's tracking store; returns the URI used."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def get_or_create_experiment(name: str) -> str:
    """Experiment id of ``name``, created (with local artifacts beside the default store) when missing."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    # Beside the embedded store only; a team server decides its own artifact root. (mlflow.set_tracking_uri
    # exports MLFLOW_TRACKING_URI, so compare URIs rather than test the variable.)
    embedded = mlflow.get_tracking_uri() == default_tracking_uri()
    artifacts = (repo_root() / "mlartifacts").as_uri() if embedded else None
    return client.create_experiment(name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def git_state(cwd: str | Path | None = None) -> dict[str, str]:
    """Commit hash and dirty flag of the working tree ('unknown' outside git)."""
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} → {'a.b': '1'}; MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def start_model_run(*, experiment: str, model: str, task: str, params: dict[str, Any], data_hash: str,
                    device: str) -> str:
    """Open the model's run for this pipeline execution; returns its id."""
    import mlflow

    configure()
    experiment_id = get_or_create_experiment(experiment)
    tags = {"model": model, "task": task, "data_hash": data_hash, "device": device, **git_state()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=model, tags=tags) as run:
        mlflow.log_params(flatten(params))
        return run.info.run_id


@contextlib.contextmanager
def resume_run(run_id: str) -> Iterator[Any]:
    """Continue the model's run (opened by train) as the active MLflow run."""
    import mlflow

    configure()
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def write_run_id(path: str | Path, run_id: str, *, experiment: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"run_id": run_id, "experiment": experiment, "tracking_uri": tracking_uri()},
                                     indent=2))


def read_run_id(path: str | Path) -> str:
    return json.loads(Path(path).read_text())["run_id"]


def log_outcome(metrics: dict[str, float], artifacts: list[Path], artifact_dir: str, step: int | None = None) -> None:
    """Log a stage's metrics and files on the active run."""
    import mlflow

    if metrics:
        mlflow.log_metrics(metrics, step=step)
    for path in artifacts:
        mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def register_onnx_model(onnx_path: str | Path, *, registered_name: str, input_example: Any,
                        tags: dict[str, str], alias: str = "challenger") -> str:
    """Log the ONNX file as an MLflow model on the active run, register a new version, set ``alias``.

    Returns the version number; load it with ``mlflow.onnx.load_model(f"models:/{name}@{alias}")``.
    """
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.tracking import MlflowClient

    info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="onnx_model", input_example=input_example,
                                 registered_model_name=registered_name,
                                 onnx_execution_providers=["CPUExecutionProvider"])
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    client.set_registered_model_alias(registered_name, alias, version)
    return version
