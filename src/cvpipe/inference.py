"""Batched inference over prepared uint8 images [N, H, W, 3]: the raw predictions every task post-processes.

All functions run in eval mode on the runtime's device (AMP, memory format) through
:func:`cvpipe.device.predict_in_batches` and return NumPy arrays on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cvpipe.device import Runtime, predict_in_batches
from cvpipe.postprocess.instances import DenseInstances


def predict_dense(model: nn.Module, images: np.ndarray, runtime: Runtime,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Decoded candidates for uint8 images [N, S, S, 3]: boxes [N, A, 4] xyxy abs px, scores [N, A, K]."""
    boxes, scores = predict_in_batches(model, images, runtime, batch_size,
                                       lambda net, x: [t.float() for t in net.decode(net(x))])
    return boxes, scores


def predict_instances(model: nn.Module, images: np.ndarray, runtime: Runtime, batch_size: int = 64) -> DenseInstances:
    """Run ``model.decode_instances`` over uint8 images [N, S, S, 3] in batches."""
    parts = predict_in_batches(model, images, runtime, batch_size,
                               lambda net, x: [t.float() for t in net.decode_instances(net(x))])
    return DenseInstances(*parts, image_size=tuple(images.shape[1:3]))


def predict_probabilities(model: nn.Module, images: np.ndarray, runtime: Runtime,
                          batch_size: int = 32) -> np.ndarray:
    """float16 [N, C, S, S] probabilities (softmax over K+1 channels, or sigmoid of 1 in binary mode)."""
    def probabilities(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        logits = net(x).float()
        probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        return [probs.half()]  # float16 per batch: a split's probabilities at half the memory

    return predict_in_batches(model, images, runtime, batch_size, probabilities)[0]


def predict_probs(model: nn.Module, crops: np.ndarray, runtime: Runtime, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities [N, K] for uint8 crops [N, C, C, 3], in batches."""
    probs = predict_in_batches(model, crops, runtime, batch_size,
                               lambda net, x: [torch.softmax(net(x).float(), dim=1)])
    k = model.head.out_features if hasattr(model, "head") else 0
    return probs[0] if probs else np.zeros((0, k), np.float32)
