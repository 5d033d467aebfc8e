"""ONNX export (dynamic batch axis) with metadata; sessions, runs and latency: :mod:`cvpipe.onnx_inference`.

The exported graph takes the same input as the PyTorch model (float32 [B, 3, H, W] pixels in 0..255,
see :mod:`cvpipe.models.preprocess`), so one preprocessing function serves both paths. Metadata
(class names, tuned thresholds) is stored in the ONNX file's ``metadata_props``; readers may override
thresholds at run time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int,
                input_name: str = "images", output_names: Sequence[str] = ("logits",),
                metadata: dict[str, Any] | None = None) -> Path:
    """Export ``model`` (CPU, eval) with a dynamic batch axis; metadata values are stored as JSON strings."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example.cpu(),), dynamo=True, opset_version=opset,
                                input_names=[input_name], output_names=list(output_names),
                                dynamic_shapes=({0: batch},), optimize=True, verbose=False)
    program.save(str(path))
    return save_onnx(onnx.load(str(path)), path, metadata or {})


def save_onnx(proto: Any, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Check and save an ONNX ModelProto with ``metadata`` in its ``metadata_props`` (values as JSON strings, as
    :func:`onnx_metadata` reads them)."""
    import onnx

    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return Path(path)
