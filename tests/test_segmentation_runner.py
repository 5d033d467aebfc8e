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
