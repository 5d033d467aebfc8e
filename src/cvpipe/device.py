"""One device/AMP helper for train, evaluate and export: CUDA when present, AMP there; channels_last by choice."""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from cvpipe.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and how they are computed."""

    device: torch.device
    amp: bool  # autocast to ``amp_dtype``: float16 on CUDA (with loss scaling), bfloat16 on a CPU that has it
    channels_last: bool
    # batched augmentation holds the train split's images in memory (transposed) up to this size
    resident_data_bytes: int = 4 << 30
    compile: bool = False  # torch.compile the training steps (runtime.compile)
    amp_dtype: torch.dtype = torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    @property
    def loss_scaling(self) -> bool:
        """float16 needs the gradient scaler; bfloat16 has float32's range and does not."""
        return self.amp and self.amp_dtype == torch.float16

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def prepare_input(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last and batch.ndim == 4 else batch


CPU = Runtime(torch.device("cpu"), amp=False, channels_last=False)  # export, parity and latency run here


def cpu_has_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 natively here (AVX512-BF16 / AMX); elsewhere bf16 would be emulated, slowly."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_runtime(device: str = "auto", *, amp: bool = True, num_threads: int = 0, channels_last: bool = True,
                    resident_data_gb: float = 4.0, compile: bool = False, cpu_amp: bool = False) -> Runtime:
    """``device`` is 'auto', 'cpu', 'cuda' or 'cuda:N'. ``amp``: float16 autocast on CUDA; ``cpu_amp``: bfloat16
    autocast on a CPU with native bf16 (else float32, said once in the log). ``channels_last`` (NHWC activations and
    weights) on either device: oneDNN's CPU convolutions are faster in it too."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"params.yaml: runtime.device={device!r} but no CUDA device is visible")
    on_cuda = dev.type == "cuda"
    bf16 = not on_cuda and cpu_amp and cpu_has_bfloat16()
    if not on_cuda and cpu_amp and not bf16:
        # the default params ask for it: on the many CPUs without bf16 this is the expected case, not a fault
        log.info("runtime.cpu_amp: this CPU has no native bfloat16 (AVX512-BF16/AMX); running in float32")
    return Runtime(device=dev, amp=(amp and on_cuda) or bf16, channels_last=channels_last,
                   resident_data_bytes=int(resident_data_gb * (1 << 30)), compile=compile,
                   amp_dtype=torch.bfloat16 if bf16 else torch.float16)


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
