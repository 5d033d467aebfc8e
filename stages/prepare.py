"""prepare: seeded split and its rules, image size (an integer or ``auto``: from the data), letterbox on
``runtime.data_workers`` processes, train statistics and the memory-mappable arrays the plan (``--arrays``) lists;
the report (``--report``, ``--report-md``) and the MLflow run ``prepare``."""

import argparse
import logging
from pathlib import Path

from cvpipe.config import MlflowConfig, PrepareConfig, RuntimeConfig, from_section, load_params
from cvpipe.data.array_plan import ArrayPlan, read_plan
from cvpipe.data.canonical import load_coco
from cvpipe.data.parallel import resolve_workers
from cvpipe.data.prepare import prepare_dataset
from cvpipe.data.prepare_report import log_to_mlflow, write_reports
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.prepare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dataset", required=True, help="canonical dataset written by validate")
    parser.add_argument("--out", required=True, help="prepared arrays folder")
    parser.add_argument("--report", type=Path, required=True, help="image size report (JSON)")
    parser.add_argument("--report-md", type=Path, help="image size report (Markdown); default: beside --report")
    parser.add_argument("--arrays", type=Path,
                        help="array plan written by the arrays stage; default: every array the data allows")
    args = parser.parse_args()
    args.report_md = args.report_md or args.report.with_suffix(".md")
    params = load_params(args.params)
    config = from_section(PrepareConfig, params.get("prepare"), "prepare")
    mlflow_config = from_section(MlflowConfig, params.get("mlflow"), "mlflow")
    workers = resolve_workers(from_section(RuntimeConfig, params.get("runtime"), "runtime").data_workers)
    meta = prepare_dataset(load_coco(args.dataset), args.out, seed=int(params["seed"]), image_size=config.image_size,
                           fractions=(config.train_fraction, config.val_fraction, config.test_fraction),
                           crop_size=config.crop_size, crop_context=config.crop_context, size_rule=config.size_rule(),
                           plan=read_plan(args.arrays) if args.arrays else ArrayPlan(), workers=workers,
                           class_absent_from_train=config.class_absent_from_train)
    report = write_reports(meta, args.report, args.report_md)
    log_to_mlflow(report, [args.report, args.report_md], experiment=mlflow_config.experiment)
    log.info("prepared %s at %d px (data hash %s); report %s", meta["splits"], meta["image_size"], meta["data_hash"],
             args.report_md)


if __name__ == "__main__":
    run_stage(main)
