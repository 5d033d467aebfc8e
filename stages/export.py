"""export@MODEL: ONNX export, parity gate against PyTorch, latency, MLflow registry (alias challenger)."""

import json
import logging

from cvpipe.stage import model_stage, run_stage

log = logging.getLogger("cvpipe.export")


def main() -> None:
    stage = model_stage(__doc__)
    from cvpipe import engine, tracking

    export, ml = stage.params.export, stage.params.mlflow
    outcome = engine.export(stage.config, prepared=stage.prepared, model_dir=stage.model_dir,
                            report_dir=stage.report_dir, opset=export.opset, latency_runs=export.latency_runs,
                            parity_images=export.parity_images)
    name = f"{ml.registry_prefix}-{stage.model}"
    with tracking.resume_run(tracking.read_run_id(stage.model_dir / "run.json")) as run:
        tracking.log_outcome(outcome.metrics, outcome.artifacts, "export")
        test_metrics = json.loads((stage.report_dir / "metrics.json").read_text())
        version = tracking.register_onnx_model(
            stage.model_dir / "model.onnx", registered_name=name, task=stage.task,
            input_example=engine.onnx_input_example(stage.task, stage.prepared),
            tags={"git_commit": run.data.tags.get("git_commit", "unknown"),
                  "data_hash": run.data.tags.get("data_hash", "unknown"),
                  **{f"test_{k}": str(v) for k, v in test_metrics.items()}})
    (stage.model_dir / "registry.json").write_text(json.dumps({"name": name, "version": version,
                                                                "alias": "challenger"}, indent=2))
    log.info("exported %s: %s; registered %s version %s as challenger", stage.model,
             {k: round(v, 5) for k, v in outcome.metrics.items()}, name, version)


if __name__ == "__main__":
    run_stage(main)
