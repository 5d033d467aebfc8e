"""train@MODEL: train one configured model on the prepared arrays; opens the model's MLflow run.

With ``runtime.distributed.nproc_per_node`` > 1 the script runs itself again under torchrun (DDP); rank 0 owns
the MLflow run and every file, the other ranks only train (:mod:`cvpipe.distributed`)."""

import logging
import sys

from cvpipe.stage import model_stage, run_stage

log = logging.getLogger("cvpipe.train")


def main() -> None:
    stage = model_stage(__doc__)
    from cvpipe import distributed

    processes = stage.params.runtime.distributed.nproc_per_node
    distributed.per_rank_batch(stage.config.train.batch_size, processes)  # a bad split fails here, once
    code = distributed.relaunch_under_torchrun(processes, __file__, sys.argv[1:])
    if code is not None:
        sys.exit(code)
    import mlflow

    from cvpipe import engine, tracking
    from cvpipe.config import load_params
    from cvpipe.data.prepare import load_meta

    params, raw = stage.params, load_params(stage.params_path)
    runtime = stage.runtime
    world = distributed.world()
    if not world.is_main:  # a torchrun worker: trains its shard; rank 0 writes and logs
        engine.train(stage.config, prepared=stage.prepared, model_dir=stage.model_dir, report_dir=stage.report_dir,
                     runtime=runtime, seed=params.seed, on_epoch_end=lambda epoch, row: None)
        return
    stage.model_dir.mkdir(parents=True, exist_ok=True)
    # A checkpoint this training resumes from names its MLflow run: continue that run (one row per model).
    resumable = engine.resumable_run_id(stage.config, prepared=stage.prepared, model_dir=stage.model_dir,
                                        seed=params.seed)
    run_id, continued = tracking.open_model_run(
        experiment=params.mlflow.experiment, model=stage.model, task=stage.task,
        data_hash=load_meta(stage.prepared)["data_hash"],
        device=f"{runtime.device} x {world.size} (DDP)" if world.distributed else str(runtime.device),
        params={"seed": params.seed, "model": raw["models"][stage.model], "data": raw.get("data", {}),
                "prepare": raw.get("prepare", {})}, resumable_run_id=resumable)
    tracking.write_run_id(stage.model_dir / "run.json", run_id, experiment=params.mlflow.experiment)
    with tracking.resume_run(run_id):
        if not continued:
            tracking.log_prepared_dataset(stage.prepared, load_meta(stage.prepared)["data_hash"])
        outcome = engine.train(stage.config, prepared=stage.prepared, model_dir=stage.model_dir,
                               report_dir=stage.report_dir, runtime=runtime, seed=params.seed,
                               on_epoch_end=lambda epoch, row: mlflow.log_metrics(row, step=epoch),
                               run_id=run_id, replay_history=not continued)
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "train")
        # the choices left to the data: the schedule's reason, resolved strides, and the prepared image size
        mlflow.set_tags({**outcome.tags, "image_size": str(load_meta(stage.prepared)["image_size"])})
    log.info("trained %s; MLflow run %s", stage.model, run_id)


if __name__ == "__main__":
    run_stage(main)
