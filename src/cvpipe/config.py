"""params.yaml → typed, frozen configuration: the one place where config becomes arguments.

Each params section maps to one frozen dataclass, validated by pydantic (types, ranges, unknown keys) when the
file is loaded: :func:`load_params` checks the whole file at once and names the first faults by their full key
path (``params.yaml: models.yolo.train.lr: Input should be a valid number ... (got 'fast')``), before any
stage does work. Stage scripts then pass plain keyword arguments into the library. The per-task model
sections live in :mod:`cvpipe.task_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, TypeVar

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from typing_extensions import Annotated

from cvpipe.errors import ConfigError

if TYPE_CHECKING:
    from cvpipe.data.image_size import AutoSizeRule

T = TypeVar("T")
STRICT_KEYS = ConfigDict(extra="forbid")  # an unknown key is an error, never silently ignored


def dataclass(*, frozen: bool = True) -> Callable[[type[T]], type[T]]:
    """A frozen dataclass whose fields pydantic validates on construction (types, ranges, unknown keys)."""
    return lambda cls: pydantic_dataclass(cls, frozen=frozen, config=STRICT_KEYS)


def _describe(error: dict[str, Any], where: str) -> str:
    path = ".".join([where, *(str(p) for p in error["loc"])]) if where else ".".join(str(p) for p in error["loc"])
    got = f" (got {error['input']!r})" if error["type"] not in ("missing",) and "input" in error else ""
    return f"{path}: {error['msg']}{got}"


def validated(cls: type[T], data: Any, where: str) -> T:
    """``cls`` built from ``data``; a ConfigError naming each bad key by its full path (``where`` + location)."""
    try:
        return TypeAdapter(cls).validate_python({} if data is None else data)
    except ValidationError as exc:
        problems = [_describe(e, where) for e in exc.errors()]
        raise ConfigError("params.yaml: " + "; ".join(problems[:5])
                          + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")) from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a plain dict, after checking the whole file against :class:`Params`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as fh:
        try:
            params = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    Params.from_dict(params)
    return params


def load_config(path: str | Path = "params.yaml") -> "Params":
    """params.yaml as the typed :class:`Params`."""
    return Params.from_dict(load_params(path))


def from_section(cls: type[T], section: dict[str, Any] | None, where: str) -> T:
    """Build config ``cls`` from one params section; faults are named by their full key path."""
    return validated(cls, dict(section or {}), where)


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
    # Folders (relative to the repo root, or absolute) that file names outside data.path ('../', absolute) may
    # point into; empty: every such name breaks rule 'file name inside data.path'. List them as validate deps.
    outside_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, allowed in (("on_error", ("fail", "quarantine")), ("out_of_bounds", ("reject", "clip")),
                              ("exif_labels", ("auto", "stored", "upright"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"params.yaml: validate.{name} must be one of {list(allowed)}, "
                                  f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class PrepareConfig:
    """prepare: the letterbox size (an integer, or ``auto``: chosen from the data by the rule of
    :mod:`cvpipe.data.image_size`, whose parameters are the ``auto_*`` keys), the split and the crops."""

    image_size: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"  # px, images are letterboxed to this square
    # auto: smallest multiple of 32 at which, in every class, the auto_percentile-th percentile of object short
    # sides is ≥ auto_min_object_px, within [auto_min_size, min(auto_max_size, the images' median longer side)]
    auto_min_object_px: Annotated[float, Field(gt=0)] = 8.0  # px: one cell of the finest detector stride (8)
    auto_percentile: Annotated[float, Field(ge=0, lt=50)] = 5.0  # % of a class's objects allowed below that
    auto_min_size: Annotated[int, Field(ge=32)] = 128  # px, floor: the size the default hyper-parameters were tuned at
    auto_max_size: Annotated[int, Field(ge=32)] = 640  # px, cap (memory and time grow with its square)
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    crop_size: int = 48  # px, object-centred classification crops
    crop_context: float = 1.25  # crop side = context × longer box side
    # a class with no object in the train split: fail (stop with its per-split counts) | warn (report it, go on)
    class_absent_from_train: Literal["fail", "warn"] = "fail"

    def __post_init__(self) -> None:
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"params.yaml: prepare split fractions sum to {total}, not 1")
        for name in ("auto_min_size", "auto_max_size"):
            if getattr(self, name) % 32:
                raise ConfigError(f"params.yaml: prepare.{name} must be a multiple of 32, got {getattr(self, name)}")
        if self.auto_min_size > self.auto_max_size:
            raise ConfigError(f"params.yaml: prepare.auto_min_size ({self.auto_min_size}) is larger than "
                              f"prepare.auto_max_size ({self.auto_max_size})")

    def size_rule(self) -> "AutoSizeRule":
        """The ``auto_*`` keys as the rule's typed arguments (imported here: validate reads this module too)."""
        from cvpipe.data.image_size import AutoSizeRule

        return AutoSizeRule(min_object_px=self.auto_min_object_px, percentile=self.auto_percentile,
                            min_size=self.auto_min_size, max_size=self.auto_max_size)


@dataclass(frozen=True)
class DistributedConfig:
    # > 1: the train stage runs itself under torchrun with this many processes (one per GPU; gloo on CPU), DDP;
    # several machines: start `torchrun --nnodes ... stages/train.py ...` on each (cvpipe.distributed)
    nproc_per_node: Annotated[int, Field(ge=1)] = 1


@dataclass(frozen=True)
class RuntimeConfig:
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: Annotated[int, Field(ge=0)] = 0  # torch intra-op threads; 0 keeps torch's default
    amp: bool = True  # mixed precision, only ever used on CUDA
    cpu_amp: bool = True  # bfloat16 autocast on CPU, where the CPU has it natively (AVX512-BF16 / AMX)
    channels_last: bool = True  # NHWC memory format for training and evaluation, on CUDA and CPU alike
    # train.augment batched: the train split's images are held in memory when at most this big (GiB)
    resident_data_gb: Annotated[float, Field(ge=0)] = 4.0
    compile: bool = False  # torch.compile the training steps (inductor; the first steps pay the compile time)
    # processes for validate's decode checks and prepare's letterboxing; 0 = every available core. The stages'
    # outputs are byte-identical whatever it is, so it is no DVC dependency of theirs.
    data_workers: Annotated[int, Field(ge=0)] = 0
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass(frozen=True)
class MlflowConfig:
    experiment: str = "cvpipe"
    registry_prefix: str = "cvpipe"


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    latency_runs: int = 30
    parity_images: int = 64


def checked_kwargs(function: Any, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` if ``function`` accepts every name in it, else a ConfigError naming the strays."""
    import inspect

    accepted = set(inspect.signature(function).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"params.yaml: {where} has unknown key(s) {unknown}; "
                          f"{function.__name__} accepts {sorted(accepted)}")
    return dict(kwargs)


def check_promote_metric(task: str, metric: str) -> None:
    """A ConfigError unless ``metric`` is one the promotion bootstrap can score for ``task``."""
    from cvpipe.registry import task_config_class

    allowed = task_config_class(task, "promote.metric").promote_metrics
    if metric not in allowed:
        raise ConfigError(f"params.yaml: promote.metric.{task}: {metric!r} cannot be bootstrapped; choose one of "
                          f"{list(allowed)}")


def _default_promote_metrics() -> dict[str, str]:
    from cvpipe.registry import TASKS, task_config_class

    return {task: task_config_class(task).promote_metrics[0] for task in TASKS}


@dataclass(frozen=True)
class PromoteConfig:
    """promote: champion/challenger rule (:mod:`cvpipe.lifecycle.promote`)."""

    metric: dict[str, str] = field(default_factory=_default_promote_metrics)  # per task; bootstrappable ones only
    margin: float = 0.0  # the difference's lower confidence bound must exceed this (metric units)
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.95  # two-sided level of the bootstrap interval
    resamples: Annotated[int, Field(ge=0)] = 200  # bootstrap draws of the test images
    seed: int = 0
    latency_budget_ms: Annotated[float, Field(gt=0.0)] | None = None  # challenger's ONNX p50 must fit; null = none
    latency_runs: Annotated[int, Field(gt=0)] = 20

    def __post_init__(self) -> None:
        for task, name in self.metric.items():
            check_promote_metric(task, name)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "PromoteConfig":
        section = dict(params.get("promote") or {})
        metric = {**_default_promote_metrics(), **(section.pop("metric", None) or {})}
        return validated(cls, {**section, "metric": metric}, "promote")


@dataclass(frozen=True)
class PipelineConfig:
    models: tuple[str, ...] = ()  # each entry gets train/evaluate/tune/export/promote stages


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml, typed. ``models`` maps each model name to its task's config class
    (:mod:`cvpipe.task_config`), chosen by the section's ``task`` through :mod:`cvpipe.registry`."""

    seed: int
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    promote: dict[str, Any] = field(default_factory=dict)  # typed by PromoteConfig.from_params (defaults merged)
    models: dict[str, Any] = field(default_factory=dict)  # name → ClassifierConfig | DetectorConfig | ...

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Params":
        from cvpipe.task_config import load_model_config

        raw = dict(raw)
        models = raw.pop("models", None) or {}
        if not isinstance(models, dict):
            raise ConfigError(f"params.yaml: models must be a mapping of model name to section, got {models!r}")
        typed = {name: load_model_config(section if isinstance(section, dict) else {"task": section},
                                         f"models.{name}") for name, section in models.items()}
        params = validated(cls, {**raw, "models": {}}, "")
        missing = [m for m in params.pipeline.models if m not in typed]
        if missing:
            raise ConfigError(f"params.yaml: pipeline.models names {missing}, which models: does not define; "
                              f"defined: {sorted(typed)}")
        PromoteConfig.from_params(raw)
        return dataclasses.replace(params, models=typed)

    def model(self, name: str) -> Any:
        """The typed section of one configured model, with a clear error when it is missing."""
        if name not in self.models:
            raise ConfigError(f"params.yaml: models.{name} is not defined; defined: {sorted(self.models)}")
        return self.models[name]
