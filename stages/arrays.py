"""arrays: which prepared arrays the models in ``pipeline.models`` read (:mod:`cvpipe.data.array_plan`).

Its output is a dependency of prepare, so prepare re-runs when the set of arrays changes (a segmentation model
added to pipeline.models) and not when any other model param does."""

import argparse
import logging
from pathlib import Path

from cvpipe.config import load_params
from cvpipe.data.array_plan import plan_from_params, write_plan
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.arrays")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="the array plan (JSON)")
    args = parser.parse_args()
    plan = plan_from_params(load_params(args.params))
    write_plan(plan, args.out)
    log.info("prepare writes %s for %s", sorted(plan.arrays), plan.models)


if __name__ == "__main__":
    run_stage(main)
