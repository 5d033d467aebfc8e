"""MLflow conventions in one place.

- Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<repo root>/mlflow.db`` with artifacts
  in ``<repo root>/mlartifacts``. The repo root is the *main* working tree, also when DVC runs an
  experiment in a temporary workspace (``.dvc/tmp/exps/...``), so no run is written to a throw-away copy.
- One experiment per project, tagged ``mlflow.experimentKind=custom_model_development`` so the UI opens
  on the runs table.
- One run per model per pipeline execution: ``train`` opens it, writes its id to a file (a DVC out), and
  evaluate, tune and export continue the same run.
- Tags on every run: git commit, dirty flag, prepared-data hash, model name, task, device; and, so the UI can
  line up experiments and filter one pipeline execution: ``pipeline_run`` (one id shared by every model of one
  ``dvc repro`` / ``dvc exp run``), ``dvc_exp_name`` (inside ``dvc exp run``) and ``changed_params`` (the params
  that differ from the baseline commit's params.yaml, ``key=value`` joined by ``, ``).
- Registry: each export logs a pyfunc (:mod:`cvpipe.serving`, the ONNX file with its pre- and post-processing)
  and registers it as a new version of ``<prefix>-<model>`` with alias ``challenger``; the promote step moves
  ``champion`` (:mod:`cvpipe.lifecycle.promote`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
PIPELINE_RUN_ENV = "CVPIPE_PIPELINE_RUN"  # set by `cvpipe retrain`; else derived from DVC (see pipeline_run_id)


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


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise store set-up between processes (``dvc queue start -j 2``, parallel stages): a file lock
    beside a SQLite store; nothing for a server, which serialises its own writes."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=600):
        yield


def configure() -> str:
    """Point MLflow at the project's tracking store; returns the URI used.

    A SQLite store is created (schema migrations) by the first process that opens it; two processes doing
    that at once break each other's migration, so the first open happens under :func:`store_lock`.
    """
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if sqlite_path(uri) is not None:
        from mlflow.tracking import MlflowClient

        with store_lock(uri):
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # opens (and on first use creates) the tracking tables
            client.search_registered_models(max_results=1)  # and the registry's
    return uri


def get_or_create_experiment(name: str) -> str:
    """Experiment id of ``name``, created (with local artifacts beside the default store) when missing; two
    processes creating it at once get the same experiment."""
    import mlflow
    from mlflow.exceptions import MlflowException
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
    with store_lock(mlflow.get_tracking_uri()):
        try:
            return client.create_experiment(name, artifact_location=artifacts,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by another process (a server has no lock of ours)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


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


def _dvc_ancestor() -> tuple[int, float] | None:
    """(pid, start time in seconds since the epoch) of the nearest ancestor ``dvc`` process (Linux /proc)."""
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        ticks = os.sysconf("SC_CLK_TCK")
        pid = os.getppid()
        while pid > 1:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
            if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:2]) and \
                    any(a in (b"repro", b"exp") for a in argv):
                return pid, boot + int(fields[19]) / ticks  # field 22 of stat: start time in clock ticks
            pid = int(fields[1])
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    return None


def pipeline_run_id() -> str:
    """One id for every model run of one pipeline execution, so the UI can filter them (``tags.pipeline_run``).

    ``$CVPIPE_PIPELINE_RUN`` when set; inside ``dvc exp run`` the experiment's name; under ``dvc repro`` the
    repro process (start time and pid, shared by all its stages); else a fresh id (the run stands alone).
    """
    if os.environ.get(PIPELINE_RUN_ENV):
        return os.environ[PIPELINE_RUN_ENV]
    if os.environ.get("DVC_EXP_NAME"):
        return f"exp-{os.environ['DVC_EXP_NAME']}"
    ancestor = _dvc_ancestor()
    if ancestor is not None:
        pid, started = ancestor
        return f"repro-{time.strftime('%Y%m%dT%H%M%S', time.localtime(started))}-{pid}"
    return f"run-{uuid.uuid4().hex[:12]}"


def changed_params(params_file: str | Path = "params.yaml") -> dict[str, str]:
    """Flat params that differ from the baseline commit's ``params.yaml`` (DVC's experiment baseline inside
    ``dvc exp run``, else HEAD); {} outside git or when nothing changed."""
    import yaml

    params_file = Path(params_file)
    baseline = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    try:
        old_text = subprocess.run(["git", "show", f"{baseline}:./{params_file.name}"], cwd=params_file.parent or ".",
                                  capture_output=True, text=True, check=True).stdout
        old, new = flatten(yaml.safe_load(old_text) or {}), flatten(yaml.safe_load(params_file.read_text()) or {})
    except (OSError, subprocess.CalledProcessError, yaml.YAMLError):
        return {}
    return {k: v for k, v in sorted(new.items()) if old.get(k) != v}


def execution_tags(params_file: str | Path = "params.yaml") -> dict[str, str]:
    """``pipeline_run``, ``changed_params`` and (in ``dvc exp run``) ``dvc_exp_name`` / ``dvc_exp_baseline``."""
    changed = changed_params(params_file)
    tags = {"pipeline_run": pipeline_run_id(),
            "changed_params": ", ".join(f"{k}={v}" for k, v in changed.items()) or "none"}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
        tags["dvc_exp_baseline"] = os.environ.get("DVC_EXP_BASELINE_REV", "unknown")
    return tags


PROCESS_TAG = "cvpipe.process"  # host:pid of the stage that has the run open, to tell dead RUNNING runs


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_is_gone(process: str | None) -> bool:
    """True when ``process`` (host:pid) ran on this host and no longer exists; unknown hosts count as alive."""
    host, _, pid = (process or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def mark_abandoned_runs_killed(experiment_id: str, model: str) -> list[str]:
    """Runs of ``model`` left RUNNING by a stage that was killed (its process is gone) become KILLED, so the
    runs table never shows a dead training as running. Returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"tags.model = '{model}' and attributes.status = 'RUNNING'")
    killed = [run.info.run_id for run in runs if process_is_gone(run.data.tags.get(PROCESS_TAG))]
    for run_id in killed:
        client.set_terminated(run_id, status="KILLED")
        log.warning("MLflow run %s of %s was left RUNNING by a process that is gone; marked it KILLED", run_id, model)
    return killed


def continuable_run(run_id: str | None, experiment_id: str) -> bool:
    """Whether ``run_id`` (from a resumable checkpoint) still exists in this store and experiment."""
    if not run_id:
        return False
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"


def open_model_run(*, experiment: str, model: str, task: str, params: dict[str, Any], data_hash: str,
                   device: str, params_file: str | Path = "params.yaml",
                   resumable_run_id: str | None = None) -> tuple[str, bool]:
    """The model's run for this pipeline execution: ``resumable_run_id`` (the run of the checkpoint training
    resumes from) when it still exists, so one model story stays one row with the whole curve; else a new
    run. Runs of the model left RUNNING by a dead process are marked KILLED first.
    Returns (run id, whether it continues an existing run)."""
    import mlflow

    configure()
    experiment_id = get_or_create_experiment(experiment)
    mark_abandoned_runs_killed(experiment_id, model)
    if continuable_run(resumable_run_id, experiment_id):
        log.info("continuing MLflow run %s: training resumes from its checkpoint", resumable_run_id)
        return str(resumable_run_id), True
    tags = {"model": model, "task": task, "data_hash": data_hash, "device": device, **git_state(),
            **execution_tags(params_file)}
    with mlflow.start_run(experiment_id=experiment_id, run_name=model, tags=tags) as run:
        mlflow.log_params(flatten(params))
        return run.info.run_id, False


@contextlib.contextmanager
def resume_run(run_id: str) -> Iterator[Any]:
    """Continue the model's run (opened by train) as the active MLflow run, tagged with this process so a
    kill leaves a run that the next train marks KILLED."""
    import mlflow

    configure()
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.set_tag(PROCESS_TAG, this_process())
        yield run


def write_run_id(path: str | Path, run_id: str, *, experiment: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"run_id": run_id, "experiment": experiment, "tracking_uri": tracking_uri()},
                                     indent=2))


def read_run_id(path: str | Path) -> str:
    return json.loads(Path(path).read_text())["run_id"]


def log_outcome(metrics: dict[str, float], artifacts: list[Path], artifact_dir: str, step: int | None = None) -> None:
    """Log a stage's metrics and files on the active run; PNG figures also as MLflow images (``log_image``, key
    ``<stage>/<name>``), so the run page shows them without opening the artifact tree."""
    import mlflow

    if metrics:
        mlflow.log_metrics(metrics, step=step)
    for path in artifacts:
        mlflow.log_artifact(str(path), artifact_path=artifact_dir)
        if Path(path).suffix.lower() == ".png":
            import numpy as np
            from PIL import Image

            with Image.open(path) as image:
                mlflow.log_image(np.asarray(image.convert("RGB")), key=f"{artifact_dir}/{Path(path).stem}",
                                 step=step or 0)


def log_prepared_dataset(prepared: Path, data_hash: str, *, name: str = "prepared") -> None:
    """The prepared arrays as the run's input dataset (``mlflow.log_input``; digest = the data hash), so the runs
    table's Dataset column says which data a model was trained on."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow warns that it guessed the source type (a local folder: right)
        source = resolve_dataset_source(str(Path(prepared).resolve()))
    mlflow.log_input(MetaDataset(source=source, name=name, digest=data_hash[:36]), context="training")


def register_onnx_model(onnx_path: str | Path, *, registered_name: str, task: str, input_example: Any,
                        tags: dict[str, str], alias: str = "challenger") -> str:
    """Log the ONNX file as an MLflow pyfunc model (:class:`cvpipe.serving.OnnxVisionModel`: the ONNX graph with its
    pre- and post-processing and tuned thresholds) on the active run, register a new version, set ``alias``.

    ``input_example``: images, uint8 [N, H, W, 3], or the ONNX graph's float32 [N, 3, H, W] 0..255 input (turned
    back into images). The version is tagged ``task`` and ``tags``. Returns the version number; load it with
    ``mlflow.pyfunc.load_model(f"models:/{name}@{alias}")``.
    """
    import mlflow
    import mlflow.pyfunc
    import numpy as np
    from mlflow.tracking import MlflowClient

    import cvpipe
    from cvpipe import serving

    example = np.asarray(input_example)
    if example.ndim == 4 and example.shape[1] == 3 and example.dtype != np.uint8:
        example = example.transpose(0, 2, 3, 1).round().clip(0, 255).astype(np.uint8)
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(serving.__file__).with_name("serving_model.py")),
        model_config={"task": task}, artifacts={"onnx": str(onnx_path)},
        signature=serving.signature(task), input_example=example, pip_requirements=serving.pip_requirements(),
        code_paths=[str(Path(cvpipe.__file__).parent)], registered_model_name=registered_name,
        tags={"task": task})
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {"task": task, **tags}.items():
        client.set_model_version_tag(registered_name, version, key, value)
    client.set_registered_model_alias(registered_name, alias, version)
    from cvpipe.onnx_inference import onnx_metadata, onnx_session

    meta = onnx_metadata(onnx_session(onnx_path))
    client.update_model_version(registered_name, version, description=version_description(
        registered_name, version, task, meta, tags))
    client.update_registered_model(registered_name, description=model_description(registered_name, task, meta))
    return version


SERVING_KEYS = ("score_threshold", "nms_iou_threshold", "max_detections", "mask_threshold", "min_area",
                "reject_threshold")


def model_description(name: str, task: str, meta: dict[str, Any]) -> str:
    """The registered model's description (Markdown): what it is and how to load and serve it."""
    return (f"cvpipe **{task}** model; classes: {', '.join(meta.get('class_names', []))}.\n\n"
            f"Load: `mlflow.pyfunc.load_model(\"models:/{name}@champion\").predict(images)` with uint8 "
            f"[N, H, W, 3] RGB images of any size, or a DataFrame with a column `image` of base64-encoded files.\n\n"
            f"Files: `cvpipe predict shots/ --model models:/{name}@champion`. REST: `mlflow models serve -m "
            f"models:/{name}@champion --env-manager local`. Loading runs the cvpipe code shipped with each version "
            f"(see the README, \"What loading a registered model executes\").")


def version_description(name: str, version: str, task: str, meta: dict[str, Any], tags: dict[str, str]) -> str:
    """A version's description: its commit and data, test metrics and the tuned thresholds it serves with."""
    metrics = ", ".join(f"{k[len('test_'):]} {float(v):.4f}" for k, v in tags.items()
                        if k.startswith("test_") and "latency" not in k and "_ms" not in k and _is_number(v))
    thresholds = ", ".join(f"{k} {meta[k]}" for k in SERVING_KEYS if k in meta)
    return (f"{task}, classes: {', '.join(meta.get('class_names', []))}. Test: {metrics or 'n/a'}. "
            f"Thresholds: {thresholds or 'n/a'}. git {tags.get('git_commit', 'unknown')[:12]}, data "
            f"{tags.get('data_hash', 'unknown')[:12]}. Load: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\")`.")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
