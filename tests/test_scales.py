"""Model scale presets (train.model.scale): n is today's default, explicit keys win, unknown names are named."""

from __future__ import annotations

import pytest

from cvpipe.errors import ConfigError
from cvpipe.models.detr import build_detr
from cvpipe.models.scales import SCALES, scaled
from cvpipe.models.ssd import build_ssd
from cvpipe.models.yolact import build_yolact
from cvpipe.models.yolo import build_yolo

MEAN = STD = [0.5, 0.5, 0.5]
BUILDERS = {"yolo": build_yolo, "ssd": build_ssd, "detr": build_detr, "yolact": build_yolact}


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_presets_grow_and_n_is_the_default_model(arch):
    build = BUILDERS[arch]
    sizes = [_params(build(2, MEAN, STD, scale=s)) for s in ("n", "s", "m")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    default = build(2, MEAN, STD)
    assert _params(default) == sizes[0]


def test_an_explicit_key_wins_over_the_preset():
    assert scaled("yolo", "s", depth=2) == {**SCALES["yolo"]["s"], "depth": 2}
    assert scaled("yolo", None) == SCALES["yolo"]["n"]
    model = build_yolo(2, MEAN, STD, scale="m", width=8)
    assert model.stem.out_channels == 8 and len(model.cls_tower) == SCALES["yolo"]["m"]["head_convs"]


def test_an_unknown_scale_names_the_choices():
    with pytest.raises(ConfigError, match=r"scale 'xl' is unknown; choose one of \['m', 'n', 's'\]"):
        build_ssd(2, MEAN, STD, scale="xl")
