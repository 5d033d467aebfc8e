"""Epoch checkpoints that an interrupted run resumes from.

A checkpoint carries a ``fingerprint`` of everything that defines the run (params, data hash, the hash of the
code the model's stages run); a checkpoint with another fingerprint belongs to another run and is never
resumed from. It also carries the MLflow run id, so a resumed training continues the same run.

A checkpoint that cannot be read (truncated by a full disk, a half-copied file, another format) is moved
aside to ``<name>.unreadable-<time>`` with a warning, and training starts from scratch: a broken file never
blocks the pipeline for good, and nothing is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A stable short hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically: temp file, fsync, rename, fsync the folder. A crash or power loss mid-write leaves
    the previous checkpoint or the new one, never a torn file under the checkpoint's name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint's contents; None when there is none or it is unreadable (then it is moved aside)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds RNG/optimizer state
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise ValueError("not a cvpipe checkpoint (no fingerprint)")
    except Exception as error:  # noqa: BLE001 - any unreadable file: torch raises RuntimeError, EOFError, pickle, zip errors
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        log.warning("checkpoint %s is unreadable (%s: %s); moved it to %s and training starts from scratch",
                    path, type(error).__name__, str(error).splitlines()[0] if str(error) else "", aside)
        return None
    return state


def load_checkpoint(path: str | Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, is readable and belongs to this run, else None."""
    state = read_checkpoint(path)
    if state is None:
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.info("ignoring %s: it belongs to another configuration", path)
        return None
    return state
