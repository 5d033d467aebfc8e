"""train@MODEL: train one configured model on the prepared arrays; opens the model's MLflow run."""

import logging

import mlflow

from cvpipe import tracking
from cvpipe.config import MlflowConfig, from_section, model_section
from cvpipe.data.prepare import load_meta
from cvpipe.stage import model_stage, run_stage, runtime_from_params

log = logging.getLogger("cvpipe.train")


def main() -> None:
    stage = model_stage(__doc__)
    params = stage.params
    runtime = runtime_from_params(params)
    ml = from_section(MlflowConfig, params.get("mlflow"), "mlflow")
    stage.model_dir.mkdir(parents=True, exist_ok=True)
    run_id = tracking.start_model_run(
        experiment=ml.experiment, model=stage.model, task=stage.task, data_hash=load_meta(stage.prepared)["data_hash"],
        device=str(runtime.device), params={"seed": params["seed"], "model": model_section(params, stage.model),
                                            "data": params.get("data", {}), "prepare": params.get("prepare", {})})
    tracking.write_run_id(stage.model_dir / "run.json", run_id, experiment=ml.experiment)
    with tracking.resume_run(run_id):
        outcome = stage.runner.train(stage.config, prepared=stage.prepared, model_dir=stage.model_dir,
                                     report_dir=stage.report_dir, runtime=runtime, seed=int(params["seed"]),
                                     on_epoch_end=lambda epoch, row: mlflow.log_metrics(row, step=epoch))
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "train")
    log.info("trained %s; MLflow run %s", stage.model, run_id)


if __name__ == "__main__":
    run_stage(main)
