"""evaluate@MODEL: test-split metrics, tables, plots and latency, logged on the model's MLflow run."""

import logging

from cvpipe import tracking
from cvpipe.config import ExportConfig, from_section
from cvpipe.stage import model_stage, run_stage, runtime_from_params

log = logging.getLogger("cvpipe.evaluate")


def main() -> None:
    stage = model_stage(__doc__)
    latency_runs = from_section(ExportConfig, stage.params.get("export"), "export").latency_runs
    outcome = stage.runner.evaluate(stage.config, prepared=stage.prepared, model_dir=stage.model_dir,
                                    report_dir=stage.report_dir, runtime=runtime_from_params(stage.params),
                                    latency_runs=latency_runs)
    with tracking.resume_run(tracking.read_run_id(stage.model_dir / "run.json")):
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "evaluate")
    log.info("%s test metrics: %s", stage.model, {k: round(v, 4) for k, v in outcome.metrics.items()})


if __name__ == "__main__":
    run_stage(main)
