"""evaluate@MODEL: test-split metrics, tables, plots and latency, logged on the model's MLflow run."""

import argparse
import logging
from pathlib import Path

from cvpipe import tracking
from cvpipe.config import ExportConfig, RuntimeConfig, from_section, load_params, model_task
from cvpipe.device import resolve_runtime
from cvpipe.runners import runner_for
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    runner = runner_for(model_task(params, args.model))
    rt_config = from_section(RuntimeConfig, params.get("runtime"), "runtime")
    runtime = resolve_runtime(rt_config.device, amp=rt_config.amp, num_threads=rt_config.num_threads)
    latency_runs = from_section(ExportConfig, params.get("export"), "export").latency_runs
    outcome = runner.evaluate(runner.load_config(params, args.model), prepared=args.prepared, model_dir=args.model_dir, report_dir=args.report_dir,
                              runtime=runtime, latency_runs=latency_runs)
    with tracking.resume_run(tracking.read_run_id(args.model_dir / "run.json")):
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "evaluate")
    log.info("%s test metrics: %s", args.model, {k: round(v, 4) for k, v in outcome.metrics.items()})


if __name__ == "__main__":
    run_stage(main)
