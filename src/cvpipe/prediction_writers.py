"""What ``cvpipe predict`` writes for each task, from the served (pyfunc) answers, one image at a time.

- classification: ``predictions.csv`` (file, label, class_name, score, accepted)
- detection: ``results.json`` in COCO's results format (image_id, category_id = class index + 1, bbox
  [x, y, w, h] in the image's pixels, score) and ``images.json`` (COCO ``images`` with the file names,
  ``categories``): together they load with ``pycocotools.coco.COCO.loadRes``
- instance segmentation: the same, each result with its mask as COCO RLE under ``segmentation``
- segmentation: ``masks/<file>.png``, the label map (0 = background, k = class k; 8-bit, 16-bit above 255
  classes) at the image's size
- overlays (``overlays/<file>.jpg``, JPEG quality 90: PNG took 15x longer to write; unless switched off): boxes
  with class and score drawn with
  ``torchvision.utils.draw_bounding_boxes``, masks with ``draw_segmentation_masks``

Output names keep the input's folders relative to the source, so files with the same name in different folders
never overwrite each other.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
           "#008080", "#e6beff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


class PredictionWriter:
    """Collects per-image answers; :meth:`close` writes the task's files and returns their paths."""

    def __init__(self, out_dir: Path, class_names: list[str], *, overlays: bool) -> None:
        self.out_dir, self.class_names, self.overlays = Path(out_dir), list(class_names), overlays
        self.written: list[Path] = []

    def add(self, name: Path, image: np.ndarray, answer: Any) -> None:
        raise NotImplementedError

    def close(self) -> list[Path]:
        return self.written

    def save_overlay(self, name: Path, drawn: np.ndarray) -> None:
        from PIL import Image

        path = self.out_dir / "overlays" / name.with_suffix(".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawn).save(path, quality=90)
        self.written.append(path)

    def colour(self, label: int) -> str:
        return PALETTE[label % len(PALETTE)]


class ClassificationWriter(PredictionWriter):
    def __init__(self, out_dir: Path, class_names: list[str], *, overlays: bool) -> None:
        super().__init__(out_dir, class_names, overlays=overlays)
        self.rows: list[dict[str, Any]] = []

    def add(self, name: Path, image: np.ndarray, answer: Any) -> None:
        row = answer.iloc[0]
        self.rows.append({"file": name.as_posix(), "label": int(row["label"]), "class_name": row["class_name"],
                          "score": float(row["score"]), "accepted": bool(row["accepted"])})
        if self.overlays:
            self.save_overlay(name, draw_boxes(image, np.array([[0, 0, image.shape[1] - 1, image.shape[0] - 1]]),
                                               [f"{row['class_name']} {float(row['score']):.2f}"],
                                               [self.colour(int(row["label"]))]))

    def close(self) -> list[Path]:
        path = self.out_dir / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "label", "class_name", "score", "accepted"])
            writer.writeheader()
            writer.writerows(self.rows)
        return [path, *self.written]


class DetectionWriter(PredictionWriter):
    def __init__(self, out_dir: Path, class_names: list[str], *, overlays: bool, with_masks: bool = False) -> None:
        super().__init__(out_dir, class_names, overlays=overlays)
        self.with_masks = with_masks
        self.images: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def add(self, name: Path, image: np.ndarray, answer: Any) -> None:
        row = answer.iloc[0]
        image_id = len(self.images) + 1
        height, width = image.shape[:2]
        self.images.append({"id": image_id, "file_name": name.as_posix(), "height": height, "width": width})
        masks = list(row["masks"]) if self.with_masks else [None] * len(row["boxes"])
        for box, score, label, mask in zip(row["boxes"], row["scores"], row["labels"], masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            result = {"image_id": image_id, "category_id": int(label) + 1,
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
            if mask is not None:
                result["segmentation"] = {"size": [int(v) for v in mask["size"]], "counts": mask["counts"]}
            self.results.append(result)
        if self.overlays:
            boxes = np.asarray(row["boxes"], dtype=np.float64).reshape(-1, 4)
            labels = [int(v) for v in row["labels"]]
            drawn = image
            if self.with_masks and len(masks):
                from cvpipe.postprocess.instances import decode_rles

                drawn = draw_masks(drawn, decode_rles(masks, (height, width)), [self.colour(v) for v in labels])
            self.save_overlay(name, draw_boxes(drawn, boxes, [f"{self.class_names[v]} {s:.2f}" for v, s in
                                                               zip(labels, row["scores"])],
                                               [self.colour(v) for v in labels]))

    def close(self) -> list[Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        images = self.out_dir / "images.json"
        images.write_text(json.dumps({"images": self.images, "categories": [
            {"id": i + 1, "name": name} for i, name in enumerate(self.class_names)]}, indent=1))
        results = self.out_dir / "results.json"
        results.write_text(json.dumps(self.results))
        return [results, images, *self.written]


class SegmentationWriter(PredictionWriter):
    def add(self, name: Path, image: np.ndarray, answer: Any) -> None:
        from PIL import Image

        labels = np.asarray(answer)[0]
        path = self.out_dir / "masks" / name.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(path)
        self.written.append(path)
        if self.overlays:
            classes = [k for k in range(1, len(self.class_names) + 1) if (labels == k).any()]
            self.save_overlay(name, draw_masks(image, np.stack([labels == k for k in classes]) if classes else
                                               np.zeros((0, *labels.shape), bool), [self.colour(k - 1) for k in classes]))


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: list[str], colours: list[str]) -> np.ndarray:
    """``image`` (uint8 [H, W, 3]) with ``boxes`` (xyxy px) and their labels drawn on it."""
    import torch
    from torchvision.utils import draw_bounding_boxes

    if len(boxes) == 0:
        return image
    drawn = draw_bounding_boxes(torch.from_numpy(np.array(image)).permute(2, 0, 1),  # a writable copy
                                torch.as_tensor(boxes, dtype=torch.float32), labels=labels, colors=colours,
                                width=max(1, min(image.shape[:2]) // 150))
    return drawn.permute(1, 2, 0).numpy()


def draw_masks(image: np.ndarray, masks: np.ndarray, colours: list[str]) -> np.ndarray:
    """``image`` with the bool ``masks`` [D, H, W] blended in, one colour each."""
    import torch
    from torchvision.utils import draw_segmentation_masks

    if len(masks) == 0:
        return image
    drawn = draw_segmentation_masks(torch.from_numpy(np.array(image)).permute(2, 0, 1),
                                    torch.from_numpy(np.asarray(masks, dtype=bool)), alpha=0.45, colors=colours)
    return drawn.permute(1, 2, 0).numpy()
