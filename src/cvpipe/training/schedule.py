"""How many optimizer steps a training run makes: the schedule follows the size of the training split.

``train.epochs`` were set for the embedded synthetic data (~1,400 training images); on a split of 21 images the
same epochs make a few dozen steps. ``train.min_steps`` (optional) is the number of optimizer steps the schedule
must reach. With ``N`` training items, ``w`` processes (torchrun ranks, 1 without DDP), per-rank batch ``b`` and
``E`` epochs, one shuffled pass over the split gives

    n_rank  = ceil(R · N / w)                              # items per rank of R passes (DistributedSampler pads)
    steps(R) = floor(n_rank / b)  if n_rank > b  else 1    # the loader drops the last partial batch only then

steps per epoch (exactly what the engine's DataLoader yields). When ``E · steps(1) >= min_steps`` (or min_steps
is null) nothing changes: one pass per epoch, the schedule as configured. Otherwise every epoch draws ``R``
passes, the smallest ``R`` with ``E · steps(R) >= min_steps``: the epoch's sampler shuffles ``R`` copies of the
split together (:class:`Repeated`), so every item appears exactly ``R`` times per epoch.

Why more passes per epoch rather than more epochs: ``training.csv``, the MLflow curves, validation
(``train.val_every``) and the checkpoint are per epoch; 500 epochs of 2 steps would validate and write a
checkpoint 500 times. ``E`` stays the number of rows and checkpoints, and the one-cycle learning rate schedule
spans ``E · steps(R)`` steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch.utils.data import Dataset


def steps_per_epoch(items: int, batch_size: int, ranks: int = 1) -> int:
    """Optimizer steps of one epoch over ``items`` samples at per-rank batch ``batch_size`` on ``ranks``
    processes, as the engine's loader makes them (``drop_last`` only when a rank holds more than one batch)."""
    if items < 1 or batch_size < 1 or ranks < 1:
        raise ValueError(f"steps_per_epoch needs positive items, batch_size and ranks, got {items}, {batch_size}, "
                         f"{ranks}")
    per_rank = math.ceil(items / ranks)
    return per_rank // batch_size if per_rank > batch_size else 1


@dataclass(frozen=True)
class Schedule:
    """The resolved schedule: ``epochs`` epochs of ``passes`` shuffled passes over ``items`` training items,
    ``steps_per_epoch`` optimizer steps each; ``reason`` says in words why (logged and stored with the run)."""

    epochs: int
    passes: int  # shuffled passes over the training split per epoch (1 = the configured schedule)
    steps_per_epoch: int
    items: int  # training items (images, or crops for the classifier)
    batch_size: int  # global batch (per-rank batch x ranks)
    min_steps: int | None
    reason: str

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def plan(self) -> dict[str, int]:
        """The numbers that define the run (the checkpoint fingerprint's part): no prose."""
        return {"epochs": self.epochs, "passes": self.passes, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps}

    def report(self) -> dict[str, Any]:
        return {**asdict(self), "total_steps": self.total_steps}


def resolve_schedule(*, epochs: int, min_steps: int | None, items: int, batch_size: int,
                     ranks: int = 1) -> Schedule:
    """The schedule of ``epochs`` epochs over ``items`` items at per-rank batch ``batch_size`` on ``ranks``
    processes, with at least ``min_steps`` optimizer steps in all (None: one pass per epoch). See the module
    docstring for the formula; ``passes`` is the smallest that reaches ``min_steps``."""
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    one = steps_per_epoch(items, batch_size, ranks)
    batch = batch_size * ranks
    base = f"{epochs} epochs x {one} steps ({items} items, batch {batch})"
    if min_steps is None:
        return Schedule(epochs, 1, one, items, batch, None, f"{base} = {epochs * one} steps; min_steps not set")
    if epochs * one >= min_steps:
        return Schedule(epochs, 1, one, items, batch, min_steps,
                        f"{base} = {epochs * one} steps >= min_steps {min_steps}: one pass per epoch")
    per_epoch = math.ceil(min_steps / epochs)  # steps every epoch must make
    # R·N ≥ per_epoch·b·w is enough (ceil and floor only add); step down while a smaller R still reaches it
    passes = max(1, math.ceil(per_epoch * batch / items))
    while passes > 1 and steps_per_epoch((passes - 1) * items, batch_size, ranks) >= per_epoch:
        passes -= 1
    steps = steps_per_epoch(passes * items, batch_size, ranks)
    return Schedule(epochs, passes, steps, items, batch, min_steps,
                    f"{base} = {epochs * one} steps < min_steps {min_steps}: {passes} passes over the data per "
                    f"epoch, {epochs} x {steps} = {epochs * steps} steps")


class Repeated(Dataset):
    """``times`` copies of ``dataset`` end to end: item ``i`` is ``dataset[i mod N]``. A shuffling sampler over it
    draws every item exactly ``times`` times per epoch. Whole-batch fetching (``__getitems__``) passes through."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        if times < 1:
            raise ValueError(f"Repeated needs times >= 1, got {times}")
        self.dataset, self.times, self.size = dataset, times, len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.size * self.times

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % self.size]

    def __getitems__(self, indices: list[int]) -> Any:
        inner = [i % self.size for i in indices]
        fetch = getattr(self.dataset, "__getitems__", None)
        return fetch(inner) if fetch is not None else [self.dataset[i] for i in inner]
