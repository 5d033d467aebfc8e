"""What every stage script shares: logging set-up and turning user-fixable faults into a clean exit."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from cvpipe.device import Runtime, resolve_runtime
from cvpipe.errors import CvpipeError

log = logging.getLogger("cvpipe")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a :class:`CvpipeError` prints its message and exits 1, with no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow.store", "great_expectations", "urllib3", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except CvpipeError as exc:
        log.error("%s", exc)
        sys.exit(1)


@dataclass(frozen=True)
class ModelStage:
    """What a train/evaluate/tune/export@MODEL script starts from: its paths, params, task runner and config."""

    model: str
    prepared: Path
    model_dir: Path
    report_dir: Path
    params: dict[str, Any]
    task: str
    runner: ModuleType
    config: Any


def model_stage(description: str | None) -> ModelStage:
    """Parse the model stages' shared command line (every path comes from dvc.yaml) and load the config."""
    from cvpipe.config import load_params, model_task
    from cvpipe.runners import runner_for

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="name under models: in params.yaml")
    parser.add_argument("--prepared", type=Path, required=True, help="prepared arrays folder")
    parser.add_argument("--model-dir", type=Path, required=True, help="models/<name>")
    parser.add_argument("--report-dir", type=Path, required=True, help="reports/<name>")
    args = parser.parse_args()
    params = load_params(args.params)
    task = model_task(params, args.model)
    runner = runner_for(task)
    return ModelStage(model=args.model, prepared=args.prepared, model_dir=args.model_dir, report_dir=args.report_dir,
                      params=params, task=task, runner=runner, config=runner.load_config(params, args.model))


def runtime_from_params(params: dict[str, Any]) -> Runtime:
    """The device/AMP runtime described by the params' ``runtime`` section."""
    from cvpipe.config import RuntimeConfig, from_section

    config = from_section(RuntimeConfig, params.get("runtime"), "runtime")
    return resolve_runtime(config.device, amp=config.amp, num_threads=config.num_threads)
