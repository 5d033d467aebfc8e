"""validate: import data.source into the canonical tables, check them with the GX suite, write the dataset.

Outputs: the canonical dataset (COCO JSON; absent when validation fails with on_error: fail), the JSON and
Markdown reports, which open with the outcome (passed | passed with quarantine: rows set aside and the run
went on | FAILED: the run stopped), and the quarantine list (header only when nothing was set aside). A data
fault exits 1 with a short message naming the rule, the count and the first offending files; never a traceback.
The image files are decoded in ``runtime.data_workers`` processes (0 = every core); the outputs are the same
whatever it is.
"""

import argparse
import json
import logging
from pathlib import Path

from cvpipe.config import DataConfig, MlflowConfig, RuntimeConfig, ValidateConfig, from_section, load_params
from cvpipe.data.importers import import_dataset
from cvpipe.data.parallel import resolve_workers
from cvpipe.data.validation import quarantine, validate_dataset
from cvpipe.data.validation_report import (dataset_stats, log_to_mlflow, summary, write_markdown,
                                           write_quarantine_csv)
from cvpipe.errors import DataValidationError
from cvpipe.stage import run_stage

log = logging.getLogger("cvpipe.validate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True, help="canonical dataset (COCO JSON)")
    parser.add_argument("--report", type=Path, required=True, help="validation report (JSON)")
    parser.add_argument("--report-md", type=Path, help="validation report (Markdown); default: beside --report")
    parser.add_argument("--quarantine", type=Path,
                        help="quarantine list (CSV: file, rule, value); default: beside --out")
    args = parser.parse_args()
    args.report_md = args.report_md or args.report.with_suffix(".md")
    args.quarantine = args.quarantine or args.out.parent / "quarantine.csv"
    params = load_params(args.params)
    data = DataConfig.from_params(params)
    config = from_section(ValidateConfig, params.get("validate"), "validate")
    mlflow_config = from_section(MlflowConfig, params.get("mlflow"), "mlflow")
    workers = resolve_workers(from_section(RuntimeConfig, params.get("runtime"), "runtime").data_workers)
    args.out.unlink(missing_ok=True)  # a failed run must not leave the previous dataset behind

    dataset = import_dataset(data.source, data.path, data.importer_options())
    report = validate_dataset(dataset, tolerance_px=config.box_tolerance_px, out_of_bounds=config.out_of_bounds,
                              exif_labels=config.exif_labels, outside_paths=config.outside_paths, workers=workers)
    kept, quarantined, refusal = report.checked, [], None
    if not report.success and config.on_error == "quarantine":
        try:
            kept, quarantined = quarantine(report.checked, report)
        except DataValidationError as exc:  # class table faults: reported in full, then the stage stops
            refusal = exc
    files = report.files.loc[report.checked.images["file_name"].isin(kept.images["file_name"]).to_numpy()]
    goes_on = refusal is None and (report.success or config.on_error == "quarantine")
    empty = [name for name, table in (("images", kept.images), ("annotations", kept.annotations),
                                      ("classes", kept.categories)) if table.empty] if goes_on else []
    stopped = None
    if refusal is not None:
        stopped = "the class table breaks rules that quarantine cannot set aside"
    elif empty:
        stopped = f"no {' and no '.join(empty)} left to train on" + (" after the quarantine" if quarantined else "")
    result = summary(report, dataset_stats(kept, files), quarantined, kept, config.max_examples,
                     {"source": data.source, "path": data.path}, on_error=config.on_error, stopped=stopped,
                     quarantine_file=str(args.quarantine))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    write_markdown(result, args.report_md, config.max_examples)
    write_quarantine_csv(quarantined, args.quarantine)
    log_to_mlflow(result, [args.report, args.report_md, args.quarantine], experiment=mlflow_config.experiment)
    if refusal is not None:
        raise DataValidationError(f"{refusal}\nfull report: {args.report} and {args.report_md}")
    if quarantined:
        log.warning("%s", result["headline"])
    if not report.success and config.on_error == "fail":
        raise DataValidationError(f"{report.message(config.max_examples)}\nfull report: {args.report} "
                                  f"and {args.report_md}")
    if empty:  # nothing to train on: a clear stop, never an empty dataset handed to prepare
        where = (f"left after validation ({len(quarantined)} rows quarantined, see {args.quarantine})" if quarantined
                 else f"in the source ({len(kept.images)} images, {len(kept.annotations)} objects)")
        raise DataValidationError(f"{data.path}: rule 'dataset not empty': no {' and no '.join(empty)} {where}; "
                                  "nothing to train on")
    kept.info = {**kept.info, "validation": {"images": len(kept.images), "annotations": len(kept.annotations),
                                             "quarantined": len(quarantined)}}
    kept.save(args.out)
    log.info("%d images, %d annotations, %d classes passed validation -> %s", len(kept.images),
             len(kept.annotations), len(kept.categories), args.out)


if __name__ == "__main__":
    run_stage(main)
