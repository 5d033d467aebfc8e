"""evaluate@MODEL: test-split metrics, tables, plots and latency, logged on the model's MLflow run."""

import logging

from cvpipe.stage import model_stage, run_stage

log = logging.getLogger("cvpipe.evaluate")


def main() -> None:
    stage = model_stage(__doc__)
    from cvpipe import engine, tracking

    outcome = engine.evaluate(prepared=stage.prepared, model_dir=stage.model_dir, report_dir=stage.report_dir,
                              runtime=stage.runtime, latency_runs=stage.params.export.latency_runs)
    with tracking.resume_run(tracking.read_run_id(stage.model_dir / "run.json")):
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "evaluate")
    log.info("%s test metrics: %s", stage.model, {k: round(v, 4) for k, v in outcome.metrics.items()})


if __name__ == "__main__":
    run_stage(main)
