"""``models.<name>`` of params.yaml → one typed, frozen config per task (validated by pydantic at load).

Every model section has the same shape: ``task`` (a name in :data:`cvpipe.registry.TASKS`), ``train`` (the
architecture, the optimiser schedule, and the keyword arguments of the architecture's model builder and
criterion under ``model`` / ``loss``), ``tune`` (the grid the tune stage searches) and ``export`` (the
parity tolerances). ``train``'s fields are the same for every task but for a task's own extras
(``nms_iou`` for detectors, ``binary`` for semantic segmentation).

The config survives a trained model: the train stage stores :func:`dump_config` in ``model.pt`` and
:func:`cvpipe.engine.load_trained` turns it back into the same class with :func:`load_model_config`.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, ClassVar, Literal

from pydantic import Field, TypeAdapter
from typing_extensions import Annotated

from cvpipe.config import dataclass

PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


@dataclass(frozen=True)
class TrainConfig:
    """models.<name>.train, shared by every task. ``model``/``loss`` go to the architecture's builder and
    criterion as keyword arguments; :func:`cvpipe.build.build_model` rejects names they do not take."""

    arch: str
    epochs: PositiveInt = 20
    # optimizer steps the schedule must reach: when epochs x steps per pass over the training split fall short (a
    # small dataset), every epoch makes more shuffled passes over it (cvpipe.training.schedule); null = one pass
    min_steps: PositiveInt | None = None
    val_every: PositiveInt = 1  # validation metrics every N epochs and after the last (training.csv: empty between)
    # validation metrics on the first N validation images only (crops for the classifier); null = all. Prepare
    # shuffled the split with the seed, so they are a fixed random subset; evaluate and tune still use all
    val_images: PositiveInt | None = None
    batch_size: PositiveInt = 32
    lr: Annotated[float, Field(gt=0.0)] = 0.003  # peak learning rate of AdamW under a one-cycle schedule
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0005
    warmup_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # one-cycle: share of steps rising to lr
    grad_clip: Annotated[float, Field(gt=0.0)] | None = None  # max gradient norm; null = no clipping
    # exponential moving average of the weights, validated and saved instead of the raw ones
    # (cvpipe.training.ema: d_t = min(decay, (1 + t) / (10 + t))); null = off
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    pretrained: str | None = None  # local path or URL of a state_dict to start from
    # < 1: the parameters of the model's torchvision ``backbone`` (model.backbone) train at lr · factor, the rest at
    # lr (two AdamW param groups); 1.0: one group, as without it
    backbone_lr_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    # per_sample: torchvision transforms.v2 per image in the loader; batched: the same family of flips, affine and
    # colour jitter on whole batches on the training device (cvpipe.data.batch_augment), boxes/masks moved alike
    augment: Literal["per_sample", "batched"] = "per_sample"


@dataclass(frozen=True)
class DetectorTrainConfig(TrainConfig):
    nms_iou: Probability | None = 0.5  # NMS IoU of the COCO-protocol evaluation; null for set predictors (DETR)


@dataclass(frozen=True)
class ElasticConfig:
    """train.elastic of a segmenter: smooth random deformations of images and label maps (Simard et al. 2003, the
    U-Net paper), composed into the batched augmentation's sampling grid (:mod:`cvpipe.data.batch_augment`)."""

    # std of the displacement at each coarse point, as a fraction of the image side (U-Net: 10 px of 512 ≈ 0.02)
    std: Annotated[float, Field(ge=0.0, le=0.25)] = 0.02
    grid: Annotated[int, Field(ge=2, le=32)] = 3  # coarse points per side, bicubically upsampled (U-Net: 3 x 3)


@dataclass(frozen=True)
class SegmenterTrainConfig(TrainConfig):
    binary: bool = False  # one foreground class (sigmoid + threshold) instead of K classes (softmax)
    elastic: ElasticConfig | None = None  # null = no elastic deformation; needs augment: batched

    def __post_init__(self) -> None:
        if self.elastic is not None and self.augment != "batched":
            raise ValueError("train.elastic deforms whole batches on the device: it needs train.augment: batched "
                             f"(got {self.augment!r}); set elastic: null for per_sample augmentation")


@dataclass(frozen=True)
class ClassifierTuneConfig:
    target_precision: Probability = 0.99  # precision wanted on the predictions that are not rejected


@dataclass(frozen=True)
class ClassifierExportConfig:
    max_abs_diff: float = 1e-3  # largest allowed |onnx - torch| on the logits
    min_top1_agreement: Probability = 0.999


@dataclass(frozen=True)
class DetectorTuneConfig:
    objective: Literal["f1", "recall_at_precision"] = "f1"
    target_precision: Probability = 0.9  # for recall_at_precision
    score_thresholds: tuple[Probability, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    nms_iou_thresholds: tuple[Probability, ...] = (0.3, 0.45, 0.6, 0.75)  # ignored for detectors without NMS
    max_detections: PositiveInt = 100


@dataclass(frozen=True)
class DetectorExportConfig:
    box_atol: float = 0.05  # px, largest allowed box difference between PyTorch and ONNX detections
    score_atol: float = 0.001
    map_tolerance: float = 0.005  # largest allowed |mAP(onnx) - mAP(torch)| on the test split


@dataclass(frozen=True)
class SegmenterTuneConfig:
    thresholds: tuple[Probability, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)  # foreground probability (binary mode)
    min_areas: tuple[Annotated[int, Field(ge=0)], ...] = (0, 4, 8, 16, 32, 64)  # px, smaller components removed
    fill_holes: bool = False


@dataclass(frozen=True)
class SegmenterExportConfig:
    logits_atol: float = 0.001
    min_mask_iou: Probability = 0.99  # IoU between PyTorch and ONNX label maps on test images


@dataclass(frozen=True)
class InstanceTuneConfig:
    """The grid searched on validation (objective: F1 of instances matched by mask IoU, averaged over IoU
    0.50:0.05:0.95, COCO's thresholds)."""

    score_thresholds: Annotated[tuple[Probability, ...], Field(min_length=1)] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    mask_thresholds: Annotated[tuple[Annotated[float, Field(gt=0.0, lt=1.0)], ...], Field(min_length=1)] = (
        0.3, 0.4, 0.5, 0.6, 0.7)  # on the cropped mask probability
    max_detections: PositiveInt = 100


@dataclass(frozen=True)
class InstanceExportConfig:
    box_atol: float = 0.05  # px
    score_atol: float = 0.001
    min_mask_iou: Probability = 0.99  # smallest mean IoU between PyTorch and ONNX masks of the same detections
    map_tolerance: float = 0.005  # largest |mask mAP(onnx) - mask mAP(torch)| on the test split


@dataclass(frozen=True)
class ClassifierConfig:
    """models.<name> for task 'classification' (object-centred crops)."""

    task: Literal["classification"] = "classification"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(arch="small_resnet", warmup_fraction=0.2))
    tune: ClassifierTuneConfig = field(default_factory=ClassifierTuneConfig)
    export: ClassifierExportConfig = field(default_factory=ClassifierExportConfig)
    promote_metrics: ClassVar[tuple[str, ...]] = ("top1",)  # bootstrappable; the first is the default


@dataclass(frozen=True)
class DetectorConfig:
    """models.<name> for task 'detection'."""

    task: Literal["detection"] = "detection"
    train: DetectorTrainConfig = field(default_factory=lambda: DetectorTrainConfig(arch="yolo"))
    tune: DetectorTuneConfig = field(default_factory=DetectorTuneConfig)
    export: DetectorExportConfig = field(default_factory=DetectorExportConfig)
    promote_metrics: ClassVar[tuple[str, ...]] = ("map50_95", "map50", "map75")


@dataclass(frozen=True)
class SegmenterConfig:
    """models.<name> for task 'segmentation' (semantic)."""

    task: Literal["segmentation"] = "segmentation"
    train: SegmenterTrainConfig = field(default_factory=lambda: SegmenterTrainConfig(arch="unet"))
    tune: SegmenterTuneConfig = field(default_factory=SegmenterTuneConfig)
    export: SegmenterExportConfig = field(default_factory=SegmenterExportConfig)
    promote_metrics: ClassVar[tuple[str, ...]] = ("miou", "dice")


@dataclass(frozen=True)
class InstanceSegmenterConfig:
    """models.<name> for task 'instance_segmentation': a detector arch that predicts masks (yolact)."""

    task: Literal["instance_segmentation"] = "instance_segmentation"
    train: DetectorTrainConfig = field(default_factory=lambda: DetectorTrainConfig(arch="yolact"))
    tune: InstanceTuneConfig = field(default_factory=InstanceTuneConfig)
    export: InstanceExportConfig = field(default_factory=InstanceExportConfig)
    promote_metrics: ClassVar[tuple[str, ...]] = ("mask_map50_95", "mask_map50", "mask_map75")


ModelConfig = ClassifierConfig | DetectorConfig | SegmenterConfig | InstanceSegmenterConfig


def dump_config(config: Any) -> dict[str, Any]:
    """A model config as plain JSON-able data (what ``model.pt`` stores)."""
    return TypeAdapter(type(config)).dump_python(config, mode="json")


def load_model_config(data: dict[str, Any], where: str) -> Any:
    """The typed config of a model section (``data["task"]`` picks the class through the registry)."""
    from cvpipe.config import validated
    from cvpipe.registry import task_config_class

    return validated(task_config_class(str(data.get("task", "")), where), data, where)
