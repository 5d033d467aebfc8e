"""generate: write the embedded synthetic shapes dataset (only when data.source is 'shapes')."""

import argparse
import dataclasses
import logging
from pathlib import Path

from cvpipe.config import DataConfig, load_params
from cvpipe.data.synthetic import generate_shapes
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.generate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="folder for images/ and annotations.json")
    args = parser.parse_args()
    params = load_params(args.params)
    data = DataConfig.from_params(params)
    if data.source != "shapes":
        # The stage's out must exist for DVC; it stays empty when the user brings their own data.
        Path(args.out).mkdir(parents=True, exist_ok=True)
        log.info("data.source is %r: no synthetic data generated", data.source)
        return
    coco = generate_shapes(args.out, seed=int(params["seed"]), **dataclasses.asdict(data.shapes))
    log.info("wrote %d scenes with %d objects to %s", len(coco["images"]), len(coco["annotations"]), args.out)


if __name__ == "__main__":
    run_stage(main)
