"""What every stage script shares: logging set-up and turning user-fixable faults into a clean exit."""

from __future__ import annotations

import logging
import sys
from typing import Callable

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
