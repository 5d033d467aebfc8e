"""One device/AMP helper for train, evaluate and export: CUDA when present, AMP there; channels_last by choice."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from cvpipe.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and how they are computed."""

    device: torch.device
    amp: bool  # autocast to float16 (CUDA only)
    channels_last: bool
    # batched augmentation holds the train split's images in memory (transposed) up to this size
    resident_data_bytes: int = 4 << 30
    compile: bool = False  # torch.compile the training steps (runtime.compile)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last and batch.ndim == 4 else batch


CPU = Runtime(torch.device("cpu"), amp=False, channels_last=False)  # export, parity and latency run here


def resolve_runtime(device: str = "auto", *, amp: bool = True, num_threads: int = 0, channels_last: bool = True,
                    resident_data_gb: float = 4.0, compile: bool = False) -> Runtime:
    """``device`` is 'auto', 'cpu', 'cuda' or 'cuda:N'; AMP only ever applies on CUDA; ``channels_last`` (NHWC
    activations and weights) on either device: oneDNN's CPU convolutions are faster in it too."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"params.yaml: runtime.device={device!r} but no CUDA device is visible")
    on_cuda = dev.type == "cuda"
    return Runtime(device=dev, amp=amp and on_cuda, channels_last=channels_last,
                   resident_data_bytes=int(resident_data_gb * (1 << 30)), compile=compile)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; on CPU the same seed then gives the same metrics."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inference mode without gradients; restores the training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def predict_in_batches(model: torch.nn.Module, images: np.ndarray, runtime: Runtime, batch_size: int,
                       outputs: Callable[[torch.nn.Module, torch.Tensor], Sequence[torch.Tensor]]) -> list[np.ndarray]:
    """``outputs(model, x)`` over uint8 images [N, H, W, 3] in batches, in eval mode on the runtime's device (AMP,
    memory format); each output tensor concatenated over the batches as a NumPy array ([] when N = 0)."""
    from cvpipe.models.preprocess import to_model_input

    parts: list[list[np.ndarray]] = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = runtime.prepare_input(to_model_input(images[start:start + batch_size]))
            with runtime.autocast():
                tensors = outputs(model, x)
            parts = parts or [[] for _ in tensors]
            for part, tensor in zip(parts, tensors):
                part.append(tensor.cpu().numpy())
    return [np.concatenate(part) for part in parts]
