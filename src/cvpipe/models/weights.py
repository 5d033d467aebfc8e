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


def load_exact(module: nn.Module, source: str, *, ignore: tuple[str, ...] = (), what: str = "weights") -> None:
    """Load ``source`` into ``module`` strictly: every key of ``module`` present with its shape, no other key,
    except keys starting with a prefix in ``ignore`` (on either side, e.g. a classification head). A mismatch
    is a ConfigError naming the file and the first missing, unexpected and mis-shaped keys."""
    state = {k: v for k, v in read_state_dict(source).items() if not k.startswith(ignore)}
    own = {k: v for k, v in module.state_dict().items() if not k.startswith(ignore)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} {tuple(state[k].shape)} ≠ {tuple(v.shape)}" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshaped:
        problems = [f"{label} ({len(keys)}): {keys[:4]}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshaped))
                    if keys]
        raise ConfigError(f"{what} {source}: the file does not match the expected layout; " + "; ".join(problems))
    module.load_state_dict(state, strict=False)
    log.info("loaded %s from %s (%d tensors)", what, source, len(state))
