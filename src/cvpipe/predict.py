"""``cvpipe predict SOURCE --model MODEL``: a trained model on image files of any size.

MODEL is an MLflow model URI (``models:/cvpipe-yolo@champion``, ``models:/cvpipe-yolo/3``, ``runs:/<id>/model``),
a pipeline model folder (``models/yolo``: its ``model.onnx``) or an exported ``.onnx`` file. All of them run the
same ONNX graph with the same pre- and post-processing as the registered pyfunc
(:mod:`cvpipe.onnx_predictor`), with the tuned thresholds unless overridden. What is written per task:
:mod:`cvpipe.prediction_writers`; plus ``predict.json`` (counts, throughput, the model, the thresholds used)
and ``skipped.csv`` (every file that could not be read, and why: reported and skipped, never a traceback).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cvpipe.image_io import find_images, read_image

log = logging.getLogger(__name__)


class PredictError(Exception):
    """A problem with the command's arguments (source, model, thresholds); the message says which."""


def load_predictor(model: str) -> Any:
    """The :class:`cvpipe.onnx_predictor.OnnxPredictor` that ``model`` names (see the module docstring). Only a
    registry URI imports MLflow; an ONNX file or model folder loads without MLflow or torch."""
    from cvpipe.onnx_predictor import OnnxPredictor

    if model.startswith(("models:/", "runs:/")):
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        from cvpipe import tracking

        tracking.configure()
        try:
            loaded = mlflow.pyfunc.load_model(model).unwrap_python_model()
        except (MlflowException, OSError) as exc:
            raise PredictError(f"cannot load {model} from {tracking.tracking_uri()}: {exc}") from None
        if not isinstance(loaded, OnnxPredictor):
            raise PredictError(f"{model} is not a cvpipe model (its pyfunc is {type(loaded).__name__})")
        return loaded
    path = Path(model)
    if path.is_dir():
        path = path / "model.onnx"
    if path.suffix != ".onnx" or not path.is_file():
        raise PredictError(f"--model {model}: not an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION), "
                           f"a pipeline model folder with a model.onnx, or an .onnx file")
    predictor = OnnxPredictor()
    try:
        predictor.load_onnx(path)
    except ValueError as exc:
        raise PredictError(f"--model {model}: {exc}") from None
    return predictor


def threshold_params(predictor: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The given overrides (None = keep the tuned value), checked against what the model's task accepts."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(predictor.task.serving_params))
    if unknown:
        raise PredictError(f"a {predictor.task_name} model has no {', '.join(unknown)}; it takes "
                           f"{sorted(predictor.task.serving_params)}")
    return given


def output_names(paths: list[Path]) -> list[Path]:
    """Each file's name relative to the folder common to all of them (folders kept, so names stay unique)."""
    if not paths:
        return []
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    return [p.resolve().relative_to(root) for p in paths]


def predict(source: str, model: str, out_dir: Path, *, overrides: dict[str, Any] | None = None,
            batch_size: int = 16, overlays: bool = True, progress: bool = True) -> dict[str, Any]:
    """Predict every image ``source`` names; writes the task's files, ``predict.json`` and ``skipped.csv`` into
    ``out_dir`` and returns the report."""
    from tqdm import tqdm

    started = time.perf_counter()
    paths = find_images(source)
    if not paths:
        raise PredictError(f"no image files at {source} (a file, a folder searched recursively, or a glob)")
    predictor = load_predictor(model)
    params = threshold_params(predictor, overrides or {})
    loaded = time.perf_counter()
    writer = predictor.task.prediction_writer(out_dir, predictor.class_names, overlays=overlays)
    names = dict(zip(paths, output_names(paths)))
    skipped: list[tuple[str, str]] = []
    predicted = 0
    with tqdm(total=len(paths), desc="predict", unit="image", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk, images = [], []
            for path in paths[start:start + batch_size]:
                try:
                    images.append(read_image(path))
                    chunk.append(path)
                except ValueError as exc:
                    skipped.append((str(path), str(exc)))
                    log.warning("skipped %s: %s", path, exc)
            for path, image, answer in zip(chunk, images, predictor.predict_images(images, params)):
                writer.add(names[path], image, answer)
            predicted += len(chunk)
            bar.update(len(paths[start:start + batch_size]))
    files = writer.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "skipped.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("file", "reason"), *skipped])
    seconds = time.perf_counter() - loaded
    report = {"source": str(source), "model": model, "task": predictor.task_name, "images": predicted,
              "skipped": len(skipped), "startup_seconds": round(loaded - started, 3),
              "predict_seconds": round(seconds, 3),
              "images_per_second": round(predicted / seconds, 2) if seconds > 0 else None,
              "thresholds": {k: predictor.setting(params, k) for k in predictor.task.serving_params},
              "class_names": predictor.class_names, "files": [str(p) for p in files[:5]]}
    (out_dir / "predict.json").write_text(json.dumps(report, indent=2))
    return report
