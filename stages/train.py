"""train@MODEL: train one configured model on the prepared arrays; opens the model's MLflow run."""

import argparse
import logging
from pathlib import Path

import mlflow

from cvpipe import tracking
from cvpipe.config import MlflowConfig, RuntimeConfig, from_section, load_params, model_section
from cvpipe.data.prepare import load_meta
from cvpipe.device import resolve_runtime
from cvpipe.runners import runner_for
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="name under models: in params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    section = model_section(params, args.model)
    task = section.get("task", "")
    runner = runner_for(task)
    config = runner.load_config(params, args.model)
    rt_config = from_section(RuntimeConfig, params.get("runtime"), "runtime")
    runtime = resolve_runtime(rt_config.device, amp=rt_config.amp, num_threads=rt_config.num_threads)
    ml = from_section(MlflowConfig, params.get("mlflow"), "mlflow")
    meta = load_meta(args.prepared)
    args.model_dir.mkdir(parents=True, exist_ok=True)
    run_id = tracking.start_model_run(
        experiment=ml.experiment, model=args.model, task=task, data_hash=meta["data_hash"], device=str(runtime.device),
        params={"seed": params["seed"], "model": section, "data": params.get("data", {}),
                "prepare": params.get("prepare", {})})
    tracking.write_run_id(args.model_dir / "run.json", run_id, experiment=ml.experiment)
    with tracking.resume_run(run_id):
        outcome = runner.train(config, prepared=args.prepared, model_dir=args.model_dir, report_dir=args.report_dir,
                               runtime=runtime, seed=int(params["seed"]),
                               on_epoch_end=lambda epoch, row: mlflow.log_metrics(row, step=epoch))
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "train")
    log.info("trained %s; MLflow run %s", args.model, run_id)


if __name__ == "__main__":
    run_stage(main)
