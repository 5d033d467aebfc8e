"""onnxruntime sessions over exported models: open, read the metadata, run in batches, time. No torch here:
the served model and ``cvpipe predict`` load through this module without importing it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def onnx_session(path: str | Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_metadata(session: Any) -> dict[str, Any]:
    """Metadata written by :func:`export_onnx`, decoded from JSON."""
    return {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}


def run_onnx(session: Any, inputs: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """Run the session over ``inputs`` in batches; returns each output concatenated over the batch axis."""
    name = session.get_inputs()[0].name
    chunks = [session.run(None, {name: inputs[s:s + batch_size]}) for s in range(0, len(inputs), batch_size)]
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def onnx_latency_ms(session: Any, example: np.ndarray, runs: int) -> dict[str, float]:
    """p50/p95 wall time in ms of one session run on ``example`` (after warm-up)."""
    name = session.get_inputs()[0].name
    times = []
    for i in range(runs + 3):
        started = time.perf_counter()
        session.run(None, {name: example})
        if i >= 3:
            times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}
