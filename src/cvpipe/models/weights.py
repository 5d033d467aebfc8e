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

BN_COUNTER = "num_batches_tracked"  # BatchNorm's step counter: bookkeeping, not a weight


def read_state_dict(source: str) -> dict[str, torch.Tensor]:
    """A state_dict from a path or http(s) URL. Wrapped layouts are unwrapped: a checkpoint dict with a 'model'
    key (torchvision's reference scripts, DETR) and cvpipe's own ``models/<name>/model.pt`` ('state_dict' beside
    'config' and 'meta'), so a model trained by one pipeline starts another (``train.pretrained``)."""
    if source.startswith(("http://", "https://")):
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"pretrained weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights {source}: not a state dict (name → tensor), nor a checkpoint wrapping one "
                          "under 'model' or 'state_dict'")
    return state


def load_pretrained(model: nn.Module, source: str) -> list[str]:
    """Copy every tensor whose name and shape match; returns the names left at their init (e.g. a new head).

    This is how fine-tuning replaces a head: a model trained on K' classes starts one for K ≠ K' classes with
    every tensor but the class predictor's (whose shape depends on K). The input normalisation buffers
    (``normalize.mean/std``) come from the file too: the features were learned on that normalisation."""
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
    is a ConfigError naming the file and the first missing, unexpected and mis-shaped keys.

    BatchNorm's ``num_batches_tracked`` (a step counter, not a weight; absent from files saved with
    FrozenBatchNorm2d, as torchvision's pretrained detectors are) is loaded where the file has it and never
    required."""
    state = {k: v for k, v in read_state_dict(source).items() if not k.startswith(ignore)}
    own = {k: v for k, v in module.state_dict().items()
           if not k.startswith(ignore) and not (k.endswith(BN_COUNTER) and k not in state)}
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
