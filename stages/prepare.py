"""prepare: seeded split, letterbox, train statistics and memory-mappable arrays."""

import argparse
import logging

from cvpipe.config import PrepareConfig, from_section, load_params
from cvpipe.data.canonical import load_coco
from cvpipe.data.prepare import prepare_dataset
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.prepare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="canonical dataset written by validate")
    parser.add_argument("--out", required=True, help="prepared arrays folder")
    args = parser.parse_args()
    params = load_params(args.params)
    config = from_section(PrepareConfig, params.get("prepare"), "prepare")
    meta = prepare_dataset(load_coco(args.dataset), args.out, seed=int(params["seed"]), image_size=config.image_size,
                           fractions=(config.train_fraction, config.val_fraction, config.test_fraction),
                           crop_size=config.crop_size, crop_context=config.crop_context)
    log.info("prepared %s (data hash %s)", meta["splits"], meta["data_hash"])


if __name__ == "__main__":
    run_stage(main)
