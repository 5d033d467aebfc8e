"""The generic stage engine: train, evaluate, tune and export any registered task and architecture.

Files (``model_dir`` = models/<name>, ``report_dir`` = reports/<name>), the same for every task:

- train:    model_dir/model.pt (CPU weights, the typed model config as trained, the data facts the model needs
            to be rebuilt, the resolved schedule), model_dir/checkpoints/last.pt (resume point),
            report_dir/training.csv (DVC plot: one row per epoch, ``steps`` = optimizer steps so far)
- evaluate: report_dir/metrics.json (the task's test metrics + single-image latency), report_dir/evaluate/
            (the task's tables and figures)
- tune:     model_dir/thresholds.json (the operating point), report_dir/tune.json (validation choice, test
            figures), report_dir/tune/ (the grid and its figure)
- export:   model_dir/model.onnx (dynamic batch; thresholds and class names in its metadata),
            report_dir/export.json (parity figures, PyTorch and onnxruntime latency); a broken parity gate
            raises :class:`cvpipe.errors.ParityError`

What differs between tasks comes from their :class:`cvpipe.tasks.base.Task` (:func:`cvpipe.registry.get_task`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cvpipe import distributed
from cvpipe.build import build_criterion, build_model
from cvpipe.code_fingerprint import code_hash
from cvpipe.data.arrays import load_array
from cvpipe.data.prepare import load_meta
from cvpipe.data.whole_batches import WholeBatches, whole_batch
from cvpipe.device import CPU, Runtime
from cvpipe.errors import ConfigError, ParityError
from cvpipe.export import export_onnx
from cvpipe.models.preprocess import to_model_input
from cvpipe.onnx_inference import onnx_latency_ms, onnx_session
from cvpipe.registry import get_task
from cvpipe.task_config import dump_config, load_model_config
from cvpipe.tasks.base import StageOutcome, Task, TrainData, Trained, latency_ms, numeric, write_json
from cvpipe.training.checkpoint import fingerprint, load_checkpoint
from cvpipe.training.loop import adamw_one_cycle, fit
from cvpipe.training.schedule import Repeated, Schedule, resolve_schedule

log = logging.getLogger(__name__)
# train.model keys naming starting weights (backbone or whole zoo model): a trained model is rebuilt without them,
# its own weights follow, so the starting file need not exist any more
STARTING_WEIGHT_KEYS = ("backbone_weights", "weights")


def model_inputs(task: Task, prepared: Path, split: str) -> np.ndarray:
    """The split's model inputs (memory-mapped uint8 [N, H, W, 3]): scenes, or the classifier's crops."""
    return load_array(prepared, split, task.input_array)


def onnx_input_example(task_name: str, prepared: Path) -> np.ndarray:
    """One preprocessed test input: the input example stored with the registered model."""
    return to_model_input(np.asarray(model_inputs(get_task(task_name), prepared, "test")[:1])).numpy()


def build(task: Task, config: Any, meta: dict[str, Any], *, pretrained: bool = True,
          init: dict[str, Any] | None = None) -> torch.nn.Module:
    """The configured architecture for the prepared data described by ``meta`` (random init, then the
    configured pretrained and backbone weights unless ``pretrained`` is False: a trained model's own weights
    follow, so the starting weights need not be there any more)."""
    config = task.resolve_config(config, meta)  # a no-op for a trained model's (already resolved) config
    train = config.train
    if not pretrained:
        model_kwargs = {k: v for k, v in train.model.items() if k not in STARTING_WEIGHT_KEYS}
        train = dataclasses.replace(train, pretrained=None, model=model_kwargs)
    model = build_model(config.task, train, **task.model_arguments(config, meta), **(init or {}))
    task.check_model(model, config)
    return model


def checkpoint_path(model_dir: Path) -> Path:
    return model_dir / "checkpoints" / "last.pt"


def train_schedule(config: Any, items: int) -> Schedule:
    """The resolved schedule of ``config.train`` over ``items`` training items in this (torchrun) world:
    ``train.epochs``, with more passes per epoch where ``train.min_steps`` asks (:mod:`cvpipe.training.schedule`)."""
    cfg = config.train
    return resolve_schedule(epochs=cfg.epochs, min_steps=cfg.min_steps, items=items,
                            batch_size=distributed.per_rank_batch(cfg.batch_size), ranks=distributed.world().size)


def run_fingerprint(config: Any, meta: dict[str, Any], seed: int, schedule: Schedule) -> str:
    """What a checkpoint must match to be resumed: the train params, the data, the seed, the code and the
    resolved schedule (its steps are the one-cycle schedule's length)."""
    return fingerprint(dump_config(config.train), meta["data_hash"], seed, code_hash(config.task, config.train.arch),
                       schedule.plan())


def resumable_run_id(config: Any, *, prepared: Path, model_dir: Path, seed: int) -> str | None:
    """The MLflow run of the checkpoint that :func:`train` would resume, if there is one."""
    task, meta = get_task(config.task), load_meta(prepared)
    items = len(model_inputs(task, prepared, "train"))
    if items == 0:
        return None
    config = task.resolve_config(config, meta)
    schedule = train_schedule(config, items)
    state = load_checkpoint(checkpoint_path(model_dir), run_fingerprint(config, meta, seed, schedule))
    return None if state is None else state.get("mlflow_run_id")


def train(config: Any, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime, seed: int,
          on_epoch_end: Callable[[int, dict[str, float]], None], run_id: str | None = None,
          replay_history: bool = False) -> StageOutcome:
    """Train ``config`` (a typed model section) with AdamW + one-cycle, resuming from the checkpoint of the same
    params, data and code; writes model.pt and training.csv. The schedule is resolved from the training split's
    size (:func:`train_schedule`), logged, returned as ``schedule_*`` metrics and the ``schedule`` tag (its reason
    in words), and stored in model.pt. ``run_id`` (the MLflow run) is kept in the checkpoint so a resumed training
    continues that run; ``replay_history`` re-reports the epochs a resumed checkpoint holds (for a run that has
    not seen them)."""
    task = get_task(config.task)
    meta = load_meta(prepared)
    asked, config = config, task.resolve_config(config, meta)  # e.g. strides: auto; model.pt stores the result
    resolved_tags = {} if config == asked else {"resolved_train_model": json.dumps(config.train.model)}
    cfg = config.train
    runtime = dataclasses.replace(runtime, device=distributed.init(runtime.device))  # torchrun: this rank's device
    main = distributed.world().is_main
    batch_size = distributed.per_rank_batch(cfg.batch_size)
    torch.manual_seed(seed)
    model = runtime.prepare_model(build(task, config, meta, init=task.init_arguments(config, prepared)))
    criterion = build_criterion(config.task, cfg, **task.criterion_arguments(config, meta)).to(runtime.device)
    data = fetched_whole(task.train_data(prepared, config), runtime)
    if len(data.dataset) == 0:
        raise ConfigError(f"{prepared}/train holds no {task.input_array}: nothing to train on")
    schedule = train_schedule(config, len(data.dataset))
    if main:
        log.info("schedule: %s", schedule.reason)
    # more than one pass per epoch (train.min_steps on a small split): the sampler shuffles that many copies
    epoch_data = data.dataset if schedule.passes == 1 else Repeated(data.dataset, schedule.passes)
    # only rank 0 validates: the other ranks never load the validation split
    validate = task.validator(prepared, config, runtime) if main else (lambda net: {})

    def make_batches(epoch: int) -> DataLoader:
        shard = distributed.sampler(epoch_data, seed, epoch)  # None for one process: the loader shuffles
        return DataLoader(epoch_data, batch_size=batch_size, shuffle=shard is None, sampler=shard,
                          collate_fn=data.collate, drop_last=len(shard or epoch_data) > batch_size,
                          generator=torch.Generator().manual_seed(seed + epoch))

    def loss_fn(net: torch.nn.Module, batch: tuple[torch.Tensor, Any]) -> dict[str, torch.Tensor]:
        inputs, targets = batch
        if data.device_augment is not None:  # uint8 to the device (a quarter of the bytes), augmented there
            with torch.autocast(runtime.device.type, enabled=False):  # pixels and boxes in float32 under any AMP
                inputs, targets = data.device_augment(inputs.to(runtime.device, non_blocking=True),
                                                      to_device(targets, runtime.device))
            return criterion(net(runtime.prepare_input(inputs)), targets)
        return criterion(net(runtime.prepare_input(inputs.float())), to_device(targets, runtime.device))

    if len(make_batches(0)) != schedule.steps_per_epoch:  # the plan and the loader must agree: the LR schedule
        raise RuntimeError(f"schedule plans {schedule.steps_per_epoch} steps per epoch, the loader makes "
                           f"{len(make_batches(0))}")
    optimizer, scheduler = adamw_one_cycle(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           total_steps=schedule.total_steps, pct_start=cfg.warmup_fraction,
                                           backbone_lr_factor=cfg.backbone_lr_factor)
    result = fit(model, runtime=runtime, make_batches=make_batches, loss_fn=loss_fn, evaluate=validate,
                 optimizer=optimizer, scheduler=scheduler, epochs=schedule.epochs, seed=seed,
                 checkpoint_path=checkpoint_path(model_dir), fingerprint=run_fingerprint(config, meta, seed, schedule),
                 on_epoch_end=on_epoch_end, grad_clip=cfg.grad_clip,
                 checkpoint_extra={"mlflow_run_id": run_id} if run_id else None, replay_history=replay_history,
                 validate_every=cfg.val_every, ema_decay=cfg.ema_decay)
    distributed.finish()
    if not main:  # rank 0 writes the model and the reports
        return StageOutcome()
    report_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.history).to_csv(report_dir / "training.csv", index=False)
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": dump_config(config),
                "meta": {k: meta[k] for k in task.meta_keys}, "schedule": schedule.report()}, model_dir / "model.pt")
    final = result.history[-1]
    metrics = {"final_train_loss": final["train_loss"],
               **{f"final_{name}": final.get(name, 0.0) for name in task.final_metrics},
               "resumed_from_epoch": float(result.resumed_from_epoch),
               **{f"schedule_{k}": float(v) for k, v in schedule.plan().items()}}
    return StageOutcome(metrics=metrics, artifacts=[model_dir / "model.pt", report_dir / "training.csv"],
                        tags={"schedule": schedule.reason, **resolved_tags})


def fetched_whole(data: TrainData, runtime: Runtime) -> TrainData:
    """With batched augmentation, the loader fetches whole batches (:mod:`cvpipe.data.whole_batches`): the
    augmentation then sees a batch as one uint8 tensor, gathered from the split held in memory."""
    if data.device_augment is None:
        return data
    return dataclasses.replace(data, dataset=WholeBatches(data.dataset, resident_bytes=runtime.resident_data_bytes),
                               collate=whole_batch)


def to_device(targets: Any, device: torch.device) -> Any:
    """A batch's targets on ``device``: a tensor, or a list (one per image) of dicts of tensors."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def load_trained(model_dir: Path) -> Trained:
    """The model saved by :func:`train` (CPU, eval mode) with its typed config and data facts."""
    path = model_dir / "model.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: no trained model; run the train stage first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if "config" not in saved:
        raise ConfigError(f"{path} was written by an older cvpipe (no typed config); re-run `dvc repro`")
    config = load_model_config(saved["config"], str(path))
    task = get_task(config.task)
    model = build(task, config, saved["meta"], pretrained=False)
    model.load_state_dict(saved["state_dict"])
    return Trained(model=model.eval(), config=config, meta=saved["meta"])


def evaluate(*, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime,
             latency_runs: int) -> StageOutcome:
    """The task's test metrics and figures, plus p50/p95 single-image latency on ``runtime``."""
    trained = load_trained(model_dir)
    task = get_task(trained.config.task)
    model = runtime.prepare_model(trained.model)
    result = task.evaluate(trained, model, prepared, runtime, report_dir / "evaluate")
    example = to_model_input(np.asarray(model_inputs(task, prepared, "test")[:1]))
    lat = latency_ms(task.graph(model), example, runtime, latency_runs)
    metrics = {**result.metrics, "latency_ms_p50": lat["p50"], "latency_ms_p95": lat["p95"]}
    paths = [write_json(report_dir / "metrics.json", metrics), *result.artifacts]
    return StageOutcome(metrics={f"test_{k}": float(v) for k, v in metrics.items()}, artifacts=paths)


def tune(config: Any, *, prepared: Path, model_dir: Path, report_dir: Path, runtime: Runtime) -> StageOutcome:
    """The operating point chosen on validation with ``config.tune``'s grid, reported on test."""
    trained = load_trained(model_dir)
    task = get_task(trained.config.task)
    model = runtime.prepare_model(trained.model)
    tuning = task.tune(trained, model, config.tune, prepared, runtime, report_dir / "tune")
    paths = [write_json(model_dir / "thresholds.json", tuning.thresholds),
             write_json(report_dir / "tune.json", tuning.report),
             write_json(report_dir / "tune_metrics.json", numeric(tuning.report)), *tuning.artifacts]
    return StageOutcome(metrics=numeric(tuning.report), artifacts=paths)


def export(config: Any, *, prepared: Path, model_dir: Path, report_dir: Path, opset: int, latency_runs: int,
           parity_images: int) -> StageOutcome:
    """ONNX with a dynamic batch axis, checked against PyTorch on test inputs (tolerances: ``config.export``)."""
    trained = load_trained(model_dir)
    task = get_task(trained.config.task)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())
    inputs = to_model_input(np.asarray(model_inputs(task, prepared, "test")[:parity_images]))
    graph = task.graph(trained.model).eval()
    onnx_path = export_onnx(graph, inputs[:2], model_dir / "model.onnx", opset=opset, output_names=task.onnx_outputs,
                            metadata={"task": task.name, **task.onnx_metadata(trained), **thresholds})
    session = onnx_session(onnx_path)
    parity = task.parity(trained, graph, session, inputs, prepared, thresholds, config.export)
    result = {**parity.figures, "parity_images": int(len(inputs)),
              **export_latencies(graph, session, inputs[:1], latency_runs)}
    write_json(report_dir / "export.json", numeric(result))  # a DVC metrics file: numbers only (flags as 0/1)
    if parity.problems:
        raise ParityError(f"{onnx_path}: ONNX disagrees with PyTorch on {len(inputs)} test inputs: "
                          + "; ".join(parity.problems))
    return StageOutcome(metrics={f"export_{k}": float(v) for k, v in result.items()},
                        artifacts=[onnx_path, report_dir / "export.json"])


def export_latencies(model: torch.nn.Module, session: Any, example: torch.Tensor, runs: int) -> dict[str, float]:
    """p50/p95 ms of one input through the PyTorch model on the CPU and through the onnxruntime session."""
    torch_lat = latency_ms(model, example, CPU, runs)
    onnx_lat = onnx_latency_ms(session, example.numpy(), runs)
    return {"torch_latency_ms_p50": torch_lat["p50"], "torch_latency_ms_p95": torch_lat["p95"],
            "onnx_latency_ms_p50": onnx_lat["p50"], "onnx_latency_ms_p95": onnx_lat["p95"]}
