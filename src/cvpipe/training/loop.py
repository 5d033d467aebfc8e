"""The generic epoch loop: every model's ``train`` stage runs through :func:`fit`.

Per epoch: seed the RNGs with ``seed + epoch`` (so a resumed run sees the same batches and
augmentations as an uninterrupted one), run the train batches with AMP where the runtime allows,
evaluate on validation, report metrics, save a checkpoint. The task supplies ``loss_fn`` (batch →
dict of named loss terms plus 'loss') and ``evaluate`` (model → dict of validation metrics).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from cvpipe import distributed
from cvpipe.device import Runtime, seed_everything
from cvpipe.errors import ConfigError
from cvpipe.training.checkpoint import load_checkpoint, save_checkpoint
from cvpipe.training.ema import WeightEMA

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], dict[str, torch.Tensor]]
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class FitResult:
    history: list[dict[str, float]]
    resumed_from_epoch: int  # 0 when training started fresh


def fit(model: nn.Module, *, runtime: Runtime, make_batches: Callable[[int], Iterable[Any]],
        loss_fn: LossFn, evaluate: Callable[[nn.Module], dict[str, float]],
        optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        epochs: int, seed: int, checkpoint_path: str | Path, fingerprint: str,
        on_epoch_end: EpochCallback | None = None, grad_clip: float | None = None,
        checkpoint_extra: dict[str, Any] | None = None, replay_history: bool = False,
        validate_every: int = 1, ema_decay: float | None = None) -> FitResult:
    """Train ``model`` for ``epochs`` epochs, resuming from ``checkpoint_path`` when it matches.

    One record per epoch: ``epoch``, ``train_*`` (mean loss terms), ``val_*``, ``lr``, ``steps`` (optimizer steps
    since the start, resumed epochs included) and ``epoch_seconds``.
    ``evaluate`` runs after every ``validate_every``-th epoch and after the last; the other epochs' records
    have no ``val_*`` entries. ``checkpoint_extra`` is stored in every checkpoint (the MLflow run id).
    ``replay_history``: when resuming, call ``on_epoch_end`` for the epochs the checkpoint already holds (a new
    MLflow run gets the whole curve).

    ``ema_decay``: an exponential moving average of the weights (:class:`cvpipe.training.ema.WeightEMA`) is
    updated after every optimizer step, validated instead of the raw weights, and copied into ``model`` at the end
    (what the engine saves); the checkpoint keeps the raw weights and the average, so a resume continues both.

    Under torchrun (:mod:`cvpipe.distributed`) the model trains wrapped in DDP on every rank; rank 0 alone reads
    and writes the checkpoint (the state read is broadcast), validates and calls ``on_epoch_end``.
    """
    main = distributed.world().is_main
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.loss_scaling)
    history: list[dict[str, float]] = []
    start_epoch = steps = 0
    state = distributed.broadcast(load_checkpoint(checkpoint_path, fingerprint) if main else None)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch = state["history"], state["epoch"]
        steps = int(history[-1]["steps"]) if history else 0
        log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
        if replay_history and on_epoch_end is not None and main:
            for record in history:
                on_epoch_end(int(record["epoch"]), record)
    ema = WeightEMA(model, ema_decay) if ema_decay else None
    if ema is not None and state is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    net = distributed.wrap(model, runtime.device)  # trains; ``model`` (the same parameters) validates and is saved
    if runtime.compile:  # the training steps only: validation, export and the saved weights use ``model``
        net = torch.compile(net)
    for epoch in range(start_epoch + 1, epochs + 1):
        seed_everything(seed + epoch)
        net.train()
        sums: dict[str, float] = {}
        count = 0
        started = time.perf_counter()
        bar = tqdm(make_batches(epoch), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not main)
        for batch in bar:
            with runtime.autocast():
                terms = loss_fn(net, batch)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch}: loss is {loss.item()}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update(model)
            steps += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            count += 1
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        seconds = time.perf_counter() - started
        sums, count = distributed.sum_over_ranks(sums, count)
        validated = main and (epoch % validate_every == 0 or epoch == epochs)
        record = {"epoch": float(epoch), **{f"train_{k}": v / max(count, 1) for k, v in sums.items()},
                  **({f"val_{k}": v for k, v in evaluate(model if ema is None else ema.module).items()}
                     if validated else {}),
                  "lr": optimizer.param_groups[0]["lr"], "steps": float(steps), "epoch_seconds": seconds}
        history.append(record)
        if not main:
            continue
        log.info("epoch %d/%d: %s", epoch, epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "epoch": epoch, "history": history, "fingerprint": fingerprint,
            "ema": ema.state_dict() if ema is not None else None, **(checkpoint_extra or {}),
        })
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    if ema is not None:  # the averaged weights are the trained model
        model.load_state_dict(ema.module.state_dict())
    return FitResult(history=history, resumed_from_epoch=start_epoch)


def adamw_one_cycle(model: nn.Module, *, lr: float, weight_decay: float, total_steps: int, pct_start: float,
                    backbone_lr_factor: float = 1.0
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle schedule peaking at ``lr`` after ``pct_start`` of ``total_steps`` (≥ 1).

    ``backbone_lr_factor`` < 1: two param groups, the rest of the model first (peak ``lr``; the ``lr`` that
    :func:`fit` records is this group's), then the parameters of ``model.backbone`` (peak ``lr · factor``); the
    schedule's shape is the same for both. 1.0: one group of ``model.parameters()``, exactly as without it. A
    model without a ``backbone`` submodule (the built-in networks) and a factor < 1 is a ConfigError.

    OneCycleLR divides by the length of its warm-up phase, ``pct_start · total_steps − 1`` steps; when that is
    exactly 0 (10 steps at 0.1: a small dataset, few epochs) it would raise ZeroDivisionError, so the warm-up is
    halved there, which makes the schedule pure annealing, as it already is whenever that length is below 0.
    """
    max_lr: float | list[float] = lr
    if backbone_lr_factor == 1.0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"params.yaml: train.backbone_lr_factor {backbone_lr_factor} needs a model with a "
                              "torchvision backbone (model.backbone); this one has none")
        in_backbone = {id(p) for p in backbone.parameters()}
        rest = [p for p in model.parameters() if id(p) not in in_backbone]
        max_lr = [lr, lr * backbone_lr_factor]
        optimizer = torch.optim.AdamW([{"params": rest, "lr": max_lr[0]},
                                       {"params": list(backbone.parameters()), "lr": max_lr[1]}],
                                      lr=lr, weight_decay=weight_decay)
    total_steps = max(total_steps, 1)
    if math.isclose(pct_start * total_steps, 1.0):
        pct_start /= 2
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                                    pct_start=pct_start)
    return optimizer, scheduler
