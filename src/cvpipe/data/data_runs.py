"""The MLflow runs of the data stages (validate, prepare): one run per stage execution, named after the stage, in
the experiment ``<mlflow.experiment>-data`` (the model experiment keeps one run per model)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def metric_name(text: str) -> str:
    """``"Box width positive"`` → ``"box_width_positive"``: a name MLflow accepts and a person can read."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def log_data_run(stage: str, *, experiment: str, tags: dict[str, str], metrics: dict[str, float],
                 artifacts: list[Path], artifact_dir: str, params: dict[str, Any] | None = None) -> str:
    """Open a run named ``stage`` in ``<experiment>-data``; set ``tags`` (plus ``stage`` and the git state), log
    ``params`` and ``metrics``, and the files of ``artifacts`` that exist under the run's folder ``artifact_dir``.
    Returns the run id."""
    import mlflow

    from cvpipe import tracking

    tracking.configure()
    experiment_id = tracking.get_or_create_experiment(f"{experiment}-data")
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage) as run:
        mlflow.set_tags({"stage": stage, **tags, **tracking.git_state()})
        if params:
            mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for path in artifacts:
            if Path(path).is_file():
                mlflow.log_artifact(str(path), artifact_dir)
        return run.info.run_id
