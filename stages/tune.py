"""tune@MODEL: choose the operating point on validation, report it on test, log it."""

import logging

from cvpipe.stage import model_stage, run_stage

log = logging.getLogger("cvpipe.tune")


def main() -> None:
    stage = model_stage(__doc__)
    from cvpipe import engine, tracking

    outcome = engine.tune(stage.config, prepared=stage.prepared, model_dir=stage.model_dir,
                          report_dir=stage.report_dir, runtime=stage.runtime)
    with tracking.resume_run(tracking.read_run_id(stage.model_dir / "run.json")):
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "tune")
    log.info("%s operating point: %s", stage.model, {k: round(v, 4) for k, v in outcome.metrics.items()})


if __name__ == "__main__":
    run_stage(main)
