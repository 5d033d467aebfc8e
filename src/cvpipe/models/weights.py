"""Loading starting weights from a local file or a URL (where the user has internet).

Nothing is downloaded unless params name a URL; the default run starts from random init.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from cvpipe.errors import ConfigError

log = logging.getLogger(__name__)


def read_state_dict(source: str) -> dict[str, torch.Tensor]:
    """A state_dict from a path or http(s) URL; a checkpoint dict with a 'model' key is unwrapped."""
    if source.startswith(("http://", "https://")):
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"pretrained weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_pretrained(model: nn.Module, source: str) -> list[str]:
    """Copy every tensor whose name and shape match; returns the names left at their init (e.g. a new head)."""
    state = read_state_dict(source)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"pretrained weights {source}: no tensor matches the model by name and shape")
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    log.info("loaded %d tensors from %s; kept init for %d: %s", len(usable), source, len(skipped), skipped[:8])
    return skipped
