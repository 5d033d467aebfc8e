"""Model scale presets: ``train.model.scale: n | s | m`` picks the size keys of an architecture, so a user chooses
by budget (README "Model scales": parameters, GFLOPs and CPU images/s per preset, from
``benchmarks/bench_scales.py``) instead of guessing widths.

A preset only fills the keys it names that ``train.model`` leaves out (or sets to null); a key given explicitly
wins, so ``{scale: s, depth: 2}`` is preset ``s`` with a deeper CSP. ``n`` is each architecture's default, the
configuration the default pipeline trains, so a model section without ``scale`` is unchanged.
"""

from __future__ import annotations

from typing import Any

from cvpipe.errors import ConfigError

SCALES: dict[str, dict[str, dict[str, Any]]] = {
    # YOLO-style detector and YOLACT on it: CSP backbone width (doubled per stage) and depth, head tower depth
    "yolo": {"n": {"width": 16, "depth": 1, "head_convs": 1},
             "s": {"width": 24, "depth": 1, "head_convs": 2},
             "m": {"width": 32, "depth": 2, "head_convs": 2}},
    # SSD: channels of the first level (doubled per level, capped)
    "ssd": {"n": {"width": 32}, "s": {"width": 48}, "m": {"width": 64}},
    # DETR: CNN width, transformer width / feed-forward / heads / layers
    "detr": {"n": {"width": 16, "d_model": 128, "dim_feedforward": 256, "num_heads": 4, "num_encoder_layers": 2,
                   "num_decoder_layers": 3},
             "s": {"width": 24, "d_model": 192, "dim_feedforward": 384, "num_heads": 6, "num_encoder_layers": 2,
                   "num_decoder_layers": 4},
             "m": {"width": 32, "d_model": 256, "dim_feedforward": 512, "num_heads": 8, "num_encoder_layers": 3,
                   "num_decoder_layers": 6}},
}


def scaled(family: str, scale: str | None, **given: Any) -> dict[str, Any]:
    """The size keys of ``family`` for ``scale`` (None: ``n``), each overridden by ``given`` where not None."""
    presets = SCALES[family]
    name = "n" if scale is None else scale
    if name not in presets:
        raise ConfigError(f"params.yaml: train.model.scale {scale!r} is unknown; choose one of {sorted(presets)}")
    return {key: given[key] if given.get(key) is not None else value for key, value in presets[name].items()}
