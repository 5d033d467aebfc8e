"""export@MODEL: ONNX export, parity gate against PyTorch, latency, MLflow registry (alias challenger)."""

import argparse
import json
import logging
from pathlib import Path

from cvpipe import tracking
from cvpipe.config import ExportConfig, MlflowConfig, from_section, load_params, model_task
from cvpipe.runners import runner_for
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.export")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True)
    args = parser.parse_args()
    params = load_params(args.params)
    task = model_task(params, args.model)
    runner = runner_for(task)
    config = runner.load_config(params, args.model)
    export_config = from_section(ExportConfig, params.get("export"), "export")
    ml = from_section(MlflowConfig, params.get("mlflow"), "mlflow")
    outcome = runner.export(config, export_config, prepared=args.prepared, model_dir=args.model_dir,
                            report_dir=args.report_dir)
    run_id = tracking.read_run_id(args.model_dir / "run.json")
    with tracking.resume_run(run_id) as run:
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "export")
        test_metrics = json.loads((args.report_dir / "metrics.json").read_text())
        version = tracking.register_onnx_model(
            args.model_dir / "model.onnx", registered_name=f"{ml.registry_prefix}-{args.model}",
            input_example=runner.onnx_input_example(args.prepared),
            tags={"git_commit": run.data.tags.get("git_commit", "unknown"),
                  "data_hash": run.data.tags.get("data_hash", "unknown"), "task": task,
                  **{f"test_{k}": str(v) for k, v in test_metrics.items()}})
    (args.model_dir / "registry.json").write_text(json.dumps(
        {"name": f"{ml.registry_prefix}-{args.model}", "version": version, "alias": "challenger"}, indent=2))
    log.info("exported %s: %s; registered version %s as challenger", args.model,
             {k: round(v, 5) for k, v in outcome.metrics.items()}, version)


if __name__ == "__main__":
    run_stage(main)
