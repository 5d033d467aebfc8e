"""Data-parallel training through ``torchrun`` (PyTorch DDP): one process per device, on one machine or many.

``runtime.distributed.nproc_per_node: N`` (> 1) makes the train stage start itself again under
``torchrun --standalone --nproc-per-node N`` (:func:`relaunch_under_torchrun`); on
several machines, run ``torchrun --nnodes ... stages/train.py ...`` on each yourself, and the stage picks up the
world from torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``).

In a world of W processes:

- each rank trains on its shard of the train split (``DistributedSampler``, reshuffled per epoch from the run's
  seed), with ``train.batch_size / W`` images per step, so the global batch, the step count and the learning-rate
  schedule stay those of the single-process run;
- gradients are averaged across ranks by ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU);
- rank 0 alone validates, writes checkpoints, ``model.pt``, the reports and the MLflow run; a resumed run reads
  the checkpoint on rank 0 and broadcasts it, so every rank continues from the same state;
- the logged train loss is the mean over all ranks' batches.

Batch-norm statistics are per rank (as torchvision's reference scripts do without ``--sync-bn``), so metrics are
close to, not identical with, the single-process run's.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cvpipe.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the torchrun world (rank 0 of 1 outside torchrun)."""
    return World(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 size=int(os.environ.get("WORLD_SIZE", 1)))


def relaunch_under_torchrun(nproc_per_node: int, script: str, argv: list[str]) -> int | None:
    """With ``nproc_per_node`` > 1 outside torchrun: run ``script argv`` in that many processes on this machine,
    as ``torchrun --standalone`` does (torch's elastic launcher, no restarts), and return the exit status (1 when
    a process failed: its own message is already printed); None when this process should train itself (one
    process, or already under torchrun)."""
    if nproc_per_node <= 1 or "LOCAL_RANK" in os.environ:
        return None
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc_per_node, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, entrypoint=sys.executable)(script, *argv)
    except ChildFailedError as exc:
        failed = ", ".join(f"rank {rank} (exit {failure.exitcode})" for rank, failure in exc.failures.items())
        sys.stderr.write(f"torchrun: {failed} failed; see the messages above\n")
        return 1
    return 0


def init(device: torch.device) -> torch.device:
    """Join the process group of the torchrun world (no-op for one process); this rank's device."""
    current = world()
    if not current.distributed:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        if torch.cuda.device_count() <= current.local_rank:
            raise ConfigError(f"torchrun started {current.size} processes on this node, but only "
                              f"{torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", current.local_rank)
        torch.cuda.set_device(device)
    else:  # CPU ranks share this node's cores: oversubscribed OpenMP threads spin against each other
        local = max(int(os.environ.get("LOCAL_WORLD_SIZE", current.size)), 1)
        torch.set_num_threads(min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) // local)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def finish() -> None:
    """Leave the process group (after the last collective)."""
    if world().distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def per_rank_batch(batch_size: int, size: int | None = None) -> int:
    """``train.batch_size`` split over ``size`` processes (default: this world's), so the global batch stays the
    configured one; a ConfigError when it does not split evenly."""
    size = world().size if size is None else size
    if batch_size % size:
        raise ConfigError(f"params.yaml: train.batch_size {batch_size} does not split over {size} processes; "
                          f"use a multiple of {size}")
    return batch_size // size


def sampler(dataset: Any, seed: int, epoch: int) -> Any:
    """This rank's shard of ``dataset`` for ``epoch`` (None for one process: the loader shuffles itself)."""
    current = world()
    if not current.distributed:
        return None
    from torch.utils.data import DistributedSampler

    shard = DistributedSampler(dataset, num_replicas=current.size, rank=current.rank, shuffle=True, seed=seed,
                               drop_last=False)
    shard.set_epoch(epoch)
    return shard


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel in a torchrun world; unchanged otherwise."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (pickled; for checkpoints and small records)."""
    if not world().distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """Per-name sums and the batch count, added up over all ranks."""
    if not world().distributed:
        return values, count
    import torch.distributed as dist

    names = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    packed = torch.tensor([values[name] for name in names] + [float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(names, packed[:-1].tolist())), int(packed[-1].item())
