"""The U-Net stages end to end on the tiny prepared set (binary and multi-class), outside DVC."""

import pytest

from tests.conftest import model_config, run_model_stages


@pytest.mark.parametrize("binary", [False, True])
def test_train_evaluate_tune_export(tiny_prepared, tmp_path, binary):
    section = {"task": "segmentation", "train": {"arch": "unet", "epochs": 1, "batch_size": 8, "binary": binary,
                                                 "model": {"base_channels": 8, "depth": 2}},
               "tune": {"min_areas": [0, 8], "thresholds": [0.4, 0.6]}}
    run = run_model_stages(model_config(section, "unet"), tiny_prepared, tmp_path)
    assert len(run.epochs) == 1 and "val_miou" in run.epochs[0]
    assert 0.0 <= run.evaluated.metrics["test_pixel_accuracy"] <= 1.0
    assert run.tuned["min_area"] in (0, 8)
    assert run.tuned["mask_threshold"] in ((0.4, 0.6) if binary else (None,))
    grid = (run.report_dir / "tune" / "tune_grid.csv").read_text().splitlines()
    assert len(grid) == 1 + 2 * (2 if binary else 1)
    assert run.exported.metrics["export_mask_iou"] >= 0.99


def test_a_binary_unet_starts_at_the_training_masks_background_share(tiny_prepared):
    import math

    import numpy as np

    from cvpipe import engine
    from cvpipe.data.arrays import load_array
    from cvpipe.data.prepare import load_meta
    from cvpipe.registry import get_task

    task = get_task("segmentation")
    masks = np.asarray(load_array(tiny_prepared, "train", "semantic"))
    share = np.count_nonzero(masks == 0) / np.count_nonzero(masks != 255)
    binary = model_config({"task": "segmentation", "train": {"arch": "unet", "binary": True,
                                                             "model": {"base_channels": 8}}}, "unet")
    init = task.init_arguments(binary, tiny_prepared)
    assert init == {"background_prior": pytest.approx(share)}
    model = engine.build(task, binary, load_meta(tiny_prepared), init=init)
    assert model.head.bias.item() == pytest.approx(math.log((1 - share) / share), rel=1e-5)
    multi = model_config({"task": "segmentation", "train": {"arch": "unet", "model": {"base_channels": 8}}}, "unet")
    assert task.init_arguments(multi, tiny_prepared) == {}  # the default prior: the default pipeline unchanged
    assert engine.build(task, multi, load_meta(tiny_prepared)).head.bias[0].item() == pytest.approx(math.log(0.9))
