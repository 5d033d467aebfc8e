"""params.yaml → typed, frozen configuration: the one place where config becomes arguments.

Each params section maps to one frozen dataclass; stage scripts load them and pass plain
keyword arguments into the library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cvpipe.errors import ConfigError

T = TypeVar("T")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def from_section(cls: type[T], section: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a params section, rejecting unknown keys by name."""
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"params.yaml: unknown key(s) {unknown} in section '{where}'; allowed: {sorted(names)}")
    try:
        return cls(**section)
    except TypeError as exc:
        raise ConfigError(f"params.yaml: section '{where}': {exc}") from None


@dataclass(frozen=True)
class ShapesConfig:
    """The embedded synthetic dataset (data.shapes)."""

    num_images: int = 2000
    image_size: int = 128  # px, square scenes
    min_objects: int = 2
    max_objects: int = 6
    min_object_size: int = 16  # px, side of the object's bounding square
    max_object_size: int = 46
    max_occlusion: float = 0.35  # an object may lose at most this fraction of its area to later objects
    clutter: int = 8  # thin distractor strokes per scene


# data.source → the params section under data that holds its importer's options, where the names differ
# (the generator writes COCO, so `shapes` is read by the COCO importer with data.coco's options).
IMPORTER_OPTIONS_SECTION = {"shapes": "coco"}


def importer_options_section(source: str) -> str:
    return IMPORTER_OPTIONS_SECTION.get(source, source)


@dataclass(frozen=True)
class DataConfig:
    """data: the source format, its path, and per format the keyword options of its importer
    (``cvpipe.data.importers``; unknown keys are rejected by name when the importer runs)."""

    source: str = "shapes"  # shapes | coco | voc | yolo | imagefolder | csv | masks
    path: str = "data/raw/shapes"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    coco: dict[str, Any] = field(default_factory=dict)
    voc: dict[str, Any] = field(default_factory=dict)
    yolo: dict[str, Any] = field(default_factory=dict)
    imagefolder: dict[str, Any] = field(default_factory=dict)
    csv: dict[str, Any] = field(default_factory=dict)
    masks: dict[str, Any] = field(default_factory=dict)

    def importer_options(self) -> dict[str, Any]:
        """The options section of ``source`` (see :data:`IMPORTER_OPTIONS_SECTION`)."""
        return dict(getattr(self, importer_options_section(self.source), None) or {})

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "DataConfig":
        section = dict(params.get("data") or {})
        shapes = from_section(ShapesConfig, section.pop("shapes", None), "data.shapes")
        return dataclasses.replace(from_section(cls, section, "data"), shapes=shapes)


@dataclass(frozen=True)
class ValidateConfig:
    on_error: str = "fail"  # fail | quarantine
    box_tolerance_px: float = 0.5  # boxes may overhang the image by this much (rounding)
    out_of_bounds: str = "reject"  # reject: a box beyond the tolerance breaks a rule | clip: clip it, listed in the report
    exif_labels: str = "auto"  # auto | stored | upright: the pixels boxes were drawn on when a file has EXIF orientation
    max_examples: int = 5  # offending rows quoted per failed rule

    def __post_init__(self) -> None:
        for name, allowed in (("on_error", ("fail", "quarantine")), ("out_of_bounds", ("reject", "clip")),
                              ("exif_labels", ("auto", "stored", "upright"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"params.yaml: validate.{name} must be one of {list(allowed)}, "
                                  f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int = 128  # px, images are letterboxed to this square
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    crop_size: int = 48  # px, object-centred classification crops
    crop_context: float = 1.25  # crop side = context × longer box side

    def __post_init__(self) -> None:
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"params.yaml: prepare split fractions sum to {total}, not 1")


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    amp: bool = True  # mixed precision, only ever used on CUDA


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "cvpipe"
    registry_prefix: str = "cvpipe"


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    latency_runs: int = 30
    parity_images: int = 64


def model_section(params: dict[str, Any], model: str) -> dict[str, Any]:
    """The params section of one configured model, with a clear error when it is missing."""
    models = params.get("models") or {}
    if model not in models:
        raise ConfigError(f"params.yaml: models.{model} is not defined; defined: {sorted(models)}")
    return dict(models[model])

def model_sections(params: dict[str, Any], model: str, train_cls: type, tune_cls: type,
                   export_cls: type) -> tuple[Any, Any, Any]:
    """models.<model>.{train, tune, export} as typed configs; lists become tuples (frozen, hashable)."""
    section = model_section(params, model)
    unknown = sorted(set(section) - {"task", "train", "tune", "export"})
    if unknown:
        raise ConfigError(f"params.yaml: models.{model} has unknown key(s) {unknown}; expected task, train, tune, export")

    def typed(cls: type, name: str) -> Any:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in (section.get(name) or {}).items()}
        return from_section(cls, values, f"models.{model}.{name}")

    return typed(train_cls, "train"), typed(tune_cls, "tune"), typed(export_cls, "export")



@dataclass(frozen=True)
class ClassifierTuneConfig:
    target_precision: float = 0.99  # precision wanted on the predictions that are not rejected


@dataclass(frozen=True)
class ClassifierExportConfig:
    max_abs_diff: float = 1e-3  # largest allowed |onnx - torch| on the logits
    min_top1_agreement: float = 0.999


@dataclass(frozen=True)
class ClassifierConfig:
    """models.<name> for task 'classification': ``train`` keys are fields, ``tune`` and ``export`` nested."""

    arch: str = "small_resnet"
    width: int = 32  # channels of the first stage; doubled at every later stage
    blocks_per_stage: int = 1
    stem_stride: int = 2  # 1 keeps full crop resolution in the first stage (4× its compute)
    epochs: int = 25
    batch_size: int = 64
    lr: float = 0.003  # peak learning rate of AdamW under a one-cycle schedule
    weight_decay: float = 0.0005
    label_smoothing: float = 0.05
    pretrained: str | None = None  # local path or URL of a state_dict to start from
    tune: ClassifierTuneConfig = field(default_factory=ClassifierTuneConfig)
    export: ClassifierExportConfig = field(default_factory=ClassifierExportConfig)

    @classmethod
    def from_params(cls, params: dict[str, Any], model: str) -> "ClassifierConfig":
        train, tune, export = model_sections(params, model, cls, ClassifierTuneConfig, ClassifierExportConfig)
        return dataclasses.replace(train, tune=tune, export=export)


def model_task(params: dict[str, Any], model: str) -> str:
    """The task ('classification', ...) a configured model solves."""
    return str(model_section(params, model).get("task", ""))


@dataclass(frozen=True)
class DetectorTrainConfig:
    """models.<name>.train for task 'detection'. ``model``/``loss`` are the keyword arguments of the
    architecture's builder and criterion; :func:`checked_kwargs` rejects names they do not take."""

    arch: str = "yolo"  # yolo | ssd | detr
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.002
    weight_decay: float = 0.0005
    grad_clip: float | None = None  # max gradient norm (DETR uses 0.1)
    nms_iou: float | None = 0.5  # NMS IoU for the COCO-protocol evaluation; null for DETR
    pretrained: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DetectorTuneConfig:
    objective: str = "f1"  # f1 | recall_at_precision
    target_precision: float = 0.9  # for recall_at_precision
    score_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    nms_iou_thresholds: tuple[float, ...] = (0.3, 0.45, 0.6, 0.75)  # ignored for detectors without NMS
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.objective not in ("f1", "recall_at_precision"):
            raise ConfigError(f"params.yaml: tune.objective must be 'f1' or 'recall_at_precision', got {self.objective!r}")


@dataclass(frozen=True)
class DetectorExportConfig:
    box_atol: float = 0.05  # px, largest allowed box difference between PyTorch and ONNX detections
    score_atol: float = 0.001
    map_tolerance: float = 0.005  # largest allowed |mAP(onnx) - mAP(torch)| on the test split


@dataclass(frozen=True)
class DetectorConfig:
    train: DetectorTrainConfig
    tune: DetectorTuneConfig
    export: DetectorExportConfig

    @classmethod
    def from_params(cls, params: dict[str, Any], model: str) -> "DetectorConfig":
        return cls(*model_sections(params, model, DetectorTrainConfig, DetectorTuneConfig, DetectorExportConfig))


def checked_kwargs(function: Any, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` if ``function`` accepts every name in it, else a ConfigError naming the strays."""
    import inspect

    accepted = set(inspect.signature(function).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"params.yaml: {where} has unknown key(s) {unknown}; "
                          f"{function.__name__} accepts {sorted(accepted)}")
    return dict(kwargs)


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """models.<name>.train for task 'segmentation' (semantic). ``model``/``loss``: builder/criterion kwargs."""

    arch: str = "unet"
    binary: bool = False  # one foreground class (sigmoid + threshold) instead of K classes (softmax)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.005
    weight_decay: float = 0.0001
    pretrained: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmenterTuneConfig:
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)  # foreground probability (binary mode)
    min_areas: tuple[int, ...] = (0, 4, 8, 16, 32, 64)  # px, smaller connected components are removed
    fill_holes: bool = False


@dataclass(frozen=True)
class SegmenterExportConfig:
    logits_atol: float = 0.001
    min_mask_iou: float = 0.99  # IoU between PyTorch and ONNX label maps on test images


@dataclass(frozen=True)
class SegmenterConfig:
    train: SegmenterTrainConfig
    tune: SegmenterTuneConfig
    export: SegmenterExportConfig

    @classmethod
    def from_params(cls, params: dict[str, Any], model: str) -> "SegmenterConfig":
        return cls(*model_sections(params, model, SegmenterTrainConfig, SegmenterTuneConfig, SegmenterExportConfig))


@dataclass(frozen=True)
class InstanceTuneConfig:
    """models.<name>.tune for task 'instance_segmentation': the grid searched on validation (objective: F1 of
    instances matched by mask IoU, averaged over IoU 0.50:0.05:0.95, COCO's thresholds)."""

    score_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    mask_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)  # on the cropped mask probability
    max_detections: int = 100

    def __post_init__(self) -> None:
        if not self.score_thresholds or not self.mask_thresholds:
            raise ConfigError("params.yaml: tune.score_thresholds and tune.mask_thresholds must not be empty")
        if any(not 0.0 < t < 1.0 for t in self.mask_thresholds):
            raise ConfigError(f"params.yaml: tune.mask_thresholds must lie in (0, 1), got {self.mask_thresholds}")


@dataclass(frozen=True)
class InstanceExportConfig:
    box_atol: float = 0.05  # px
    score_atol: float = 0.001
    min_mask_iou: float = 0.99  # smallest mean IoU between PyTorch and ONNX masks of the same detections
    map_tolerance: float = 0.005  # largest |mask mAP(onnx) - mask mAP(torch)| on the test split


@dataclass(frozen=True)
class InstanceSegmenterConfig:
    train: DetectorTrainConfig  # a detector arch that predicts masks (yolact)
    tune: InstanceTuneConfig
    export: InstanceExportConfig

    @classmethod
    def from_params(cls, params: dict[str, Any], model: str) -> "InstanceSegmenterConfig":
        return cls(*model_sections(params, model, DetectorTrainConfig, InstanceTuneConfig, InstanceExportConfig))
