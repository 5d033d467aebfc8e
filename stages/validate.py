"""validate: import data.source into the canonical tables, check them with the GX suite, write the dataset."""

import argparse
import json
import logging
from pathlib import Path

from cvpipe.config import DataConfig, ValidateConfig, from_section, load_params
from cvpipe.data.importers import import_dataset
from cvpipe.data.validation import quarantine, validate_dataset
from cvpipe.errors import DataValidationError
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.validate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="canonical dataset (COCO JSON)")
    parser.add_argument("--report", required=True, help="validation report (JSON)")
    args = parser.parse_args()
    params = load_params(args.params)
    data = DataConfig.from_params(params)
    config = from_section(ValidateConfig, params.get("validate"), "validate")
    dataset = import_dataset(data.source, data.path)
    report = validate_dataset(dataset, tolerance_px=config.box_tolerance_px)
    summary = report.to_dict(config.max_examples)
    quarantined: list = []
    if not report.success and config.on_error == "quarantine":
        dataset, quarantined = quarantine(dataset, report)
        log.warning("quarantined %d rows; see %s", len(quarantined), args.report)
    summary["quarantine"] = {"count": len(quarantined), "kept": {"images": len(dataset.images),
                                                                 "annotations": len(dataset.annotations)},
                             "items": quarantined}
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(summary, indent=2, default=str))
    if not report.success and config.on_error == "fail":
        raise DataValidationError(f"{report.message(config.max_examples)}\nfull report: {args.report}")
    dataset.save(args.out)
    log.info("%d images, %d annotations, %d classes passed validation -> %s", len(dataset.images),
             len(dataset.annotations), len(dataset.categories), args.out)


if __name__ == "__main__":
    run_stage(main)
