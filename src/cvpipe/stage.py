"""What every stage script shares: logging set-up and turning user-fixable faults into a clean exit."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cvpipe.errors import CvpipeError

if TYPE_CHECKING:  # torch loads only once params are known to be valid
    from cvpipe.config import Params
    from cvpipe.device import Runtime

log = logging.getLogger("cvpipe")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a :class:`CvpipeError` prints its message and exits 1, with no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow.store", "great_expectations", "urllib3", "onnxscript", "onnx_ir",
                  "torch.distributed.elastic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main()
    except CvpipeError as exc:
        log.error("%s", exc)
        sys.exit(1)


@dataclass(frozen=True)
class ModelStage:
    """What a train/evaluate/tune/export/promote@MODEL script starts from: its paths, the typed params and the
    model's typed section (``config.task`` names its task in the registry)."""

    model: str
    params_path: Path
    prepared: Path
    model_dir: Path
    report_dir: Path
    params: "Params"
    config: Any

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def runtime(self) -> "Runtime":
        """The device/AMP runtime described by the params' ``runtime`` section."""
        from cvpipe.device import resolve_runtime

        runtime = self.params.runtime
        return resolve_runtime(runtime.device, amp=runtime.amp, num_threads=runtime.num_threads,
                               channels_last=runtime.channels_last, cpu_amp=runtime.cpu_amp,
                               resident_data_gb=runtime.resident_data_gb, compile=runtime.compile)


def model_stage(description: str | None) -> ModelStage:
    """Parse the model stages' shared command line (every path comes from dvc.yaml) and load the typed params."""
    from cvpipe.config import load_config

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="name under models: in params.yaml")
    parser.add_argument("--prepared", type=Path, required=True, help="prepared arrays folder")
    parser.add_argument("--model-dir", type=Path, required=True, help="models/<name>")
    parser.add_argument("--report-dir", type=Path, required=True, help="reports/<name>")
    args = parser.parse_args()
    params = load_config(args.params)
    return ModelStage(model=args.model, params_path=Path(args.params), prepared=args.prepared, model_dir=args.model_dir, report_dir=args.report_dir,
                      params=params, config=params.model(args.model))
