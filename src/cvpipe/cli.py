"""The ``cvpipe`` command.

``cvpipe coco-eval GT.json PREDICTIONS.json [--iou-type bbox|segm] [--json OUT]`` scores a COCO results
file against COCO ground truth with :func:`cvpipe.metrics.detection.coco_evaluate` (the code path of the
evaluate stage), prints pycocotools' twelve summary lines and a per-class AP table, and with ``--json``
writes the same numbers as JSON. Faults in the user's files end with a one-line message naming the file
and exit status 2, never a traceback.

``cvpipe retrain [--repo DIR] [--wait SECONDS]`` is the scheduled-retraining entry point
(:mod:`cvpipe.lifecycle.retrain`): re-runs the pipeline only when ``dvc status`` reports a change, lets the
promote stages decide champion vs challenger, prints one summary line and exits 0; exit 75 (EX_TEMPFAIL) when
another retrain holds the lock, 1 when the pipeline fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvpipe.metrics.detection import IOU_TYPES, check_gt, check_predictions, coco_evaluate

EXIT_USER_ERROR = 2  # the same status argparse uses for a bad command line
EXIT_BUSY = 75  # sysexits.h EX_TEMPFAIL: another retrain is running, try again later


class UserError(Exception):
    """A fault in a file the user passed; the message names the file."""


def _load_json(path: Path, what: str) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} file {path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} file {path} cannot be read: {exc}") from None


def format_per_class(per_class: list[dict[str, Any]]) -> str:
    """Fixed-width table: class, category id, AP@[.50:.95], AP@.50 (-1: no ground truth of that class)."""
    width = max([len("class")] + [len(str(row["class"])) for row in per_class])
    lines = [f"{'class':<{width}}  {'cat_id':>6}  {'AP50:95':>7}  {'AP50':>7}"]
    for row in per_class:
        lines.append(f"{row['class']:<{width}}  {row['category_id']:>6}  {row['ap50_95']:>7.3f}  {row['ap50']:>7.3f}")
    return "\n".join(lines)


def _coco_eval(args: argparse.Namespace) -> int:
    gt = _load_json(args.gt, "ground-truth")
    predictions = _load_json(args.predictions, "predictions")
    try:
        check_gt(gt, args.iou_type)
    except ValueError as exc:
        raise UserError(f"ground-truth file {args.gt}: {exc}") from None
    try:
        check_predictions(predictions, gt, args.iou_type)
    except ValueError as exc:
        raise UserError(f"predictions file {args.predictions}: {exc}") from None
    result = coco_evaluate(gt, predictions, iou_type=args.iou_type)
    sys.stdout.write(result["summary"])
    sys.stdout.write("\n" + format_per_class(result["per_class"]) + "\n")
    if args.json is not None:
        out = {"iou_type": args.iou_type, **{k: v for k, v in result.items() if k != "summary"}}
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write JSON output {args.json}: {exc}") from None
    return 0


def _retrain(args: argparse.Namespace) -> int:
    import logging

    from cvpipe.lifecycle.retrain import RetrainBusy, RetrainFailed, retrain

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        result = retrain(args.repo, wait_s=args.wait)
    except RetrainBusy as exc:
        sys.stdout.write(f"busy: {exc}\n")
        return EXIT_BUSY
    except RetrainFailed as exc:
        sys.stderr.write(f"cvpipe retrain: error: {exc}\n")
        return 1
    sys.stdout.write(result.summary + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import logging

    from cvpipe.predict import PredictError, predict

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"score_threshold": args.score_threshold, "nms_iou_threshold": args.nms_iou_threshold,
                 "max_detections": args.max_detections, "mask_threshold": args.mask_threshold,
                 "min_area": args.min_area, "reject_threshold": args.reject_threshold}
    try:
        report = predict(args.source, args.model, args.out, overrides=overrides, batch_size=args.batch_size,
                         overlays=not args.no_overlays, progress=not args.quiet)
    except PredictError as exc:
        raise UserError(str(exc)) from None
    sys.stdout.write(f"{report['images']} images predicted ({report['images_per_second']} images/s), "
                     f"{report['skipped']} skipped (see {args.out / 'skipped.csv'}); outputs in {args.out}\n")
    return 0 if report["images"] else 1


def _clean(args: argparse.Namespace) -> int:
    from cvpipe.clean import clean

    for path in clean(args.repo, dry_run=args.dry_run):
        sys.stdout.write(f"{'would delete' if args.dry_run else 'deleted'} {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvpipe", description="cvpipe command-line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    coco = sub.add_parser("coco-eval", help="COCO mAP/mAR of a results file against COCO ground truth")
    coco.add_argument("gt", type=Path, help="COCO instances JSON (images, annotations, categories)")
    coco.add_argument("predictions", type=Path, help="COCO results JSON: list of {image_id, category_id, "
                                                     "bbox [x,y,w,h], score[, segmentation RLE]}")
    coco.add_argument("--iou-type", choices=IOU_TYPES, default="bbox", help="box or mask IoU (default: bbox)")
    coco.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the metrics as JSON")
    coco.set_defaults(func=_coco_eval)
    retrain = sub.add_parser("retrain", help="re-run the pipeline if data/params changed, then promote (for schedulers)")
    retrain.add_argument("--repo", type=Path, default=Path("."), help="the project's DVC repository (default: .)")
    retrain.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                         help="wait this long for a running retrain to finish (default 0: exit 75 at once)")
    retrain.set_defaults(func=_retrain)
    pred = sub.add_parser("predict", help="run a trained model on image files (a file, a folder or a glob)")
    pred.add_argument("source", help="an image file, a folder (searched recursively) or a glob such as 'shots/**/*.jpg'")
    pred.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model, a "
                                                     "pipeline model folder (models/yolo) or an .onnx file")
    pred.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    pred.add_argument("--batch-size", type=int, default=16)
    pred.add_argument("--no-overlays", action="store_true", help="skip the overlay pictures")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    for flag, kind in (("--score-threshold", float), ("--nms-iou-threshold", float), ("--max-detections", int),
                       ("--mask-threshold", float), ("--min-area", int), ("--reject-threshold", float)):
        pred.add_argument(flag, type=kind, default=None, help="override the tuned value (where the task has it)")
    pred.set_defaults(func=_predict)
    clean = sub.add_parser("clean", help="delete the outputs dvc.yaml declares and dvc.lock; never user data or MLflow")
    clean.add_argument("--repo", type=Path, default=Path("."), help="the project's DVC repository (default: .)")
    clean.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    clean.set_defaults(func=_clean)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cvpipe`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        sys.stderr.write(f"cvpipe {args.command}: error: {exc}\n")
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
