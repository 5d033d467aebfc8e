"""The U-Net stages end to end on the tiny prepared set (binary and multi-class), outside DVC."""

import json

import pytest

from cvpipe.config import ExportConfig, SegmenterConfig
from cvpipe.device import resolve_runtime
from cvpipe.runners import segmentation as runner


@pytest.mark.parametrize("binary", [False, True])
def test_train_evaluate_tune_export(tiny_prepared, tmp_path, binary):
    params = {"models": {"unet": {"task": "segmentation", "train": {"epochs": 1, "batch_size": 8, "binary": binary,
                                                                    "model": {"base_channels": 8, "depth": 2}},
                                  "tune": {"min_areas": [0, 8], "thresholds": [0.4, 0.6]}}}}
    config = SegmenterConfig.from_params(params, "unet")
    runtime = resolve_runtime("cpu")
    model_dir, report_dir = tmp_path / "m", tmp_path / "r"
    model_dir.mkdir()
    epochs = []
    runner.train(config, prepared=tiny_prepared, model_dir=model_dir, report_dir=report_dir, runtime=runtime, seed=0,
                 on_epoch_end=lambda epoch, row: epochs.append(row))
    assert len(epochs) == 1 and "val_miou" in epochs[0]
    evaluated = runner.evaluate(config, prepared=tiny_prepared, model_dir=model_dir, report_dir=report_dir,
                                runtime=runtime, latency_runs=2)
    assert 0.0 <= evaluated.metrics["test_pixel_accuracy"] <= 1.0
    tuned = json.loads(runner.tune(config, prepared=tiny_prepared, model_dir=model_dir, report_dir=report_dir,
                                   runtime=runtime).artifacts[1].read_text())
    assert tuned["min_area"] in (0, 8)
    assert tuned["mask_threshold"] in ((0.4, 0.6) if binary else (None,))
    grid = (report_dir / "tune" / "tune_grid.csv").read_text().splitlines()
    assert len(grid) == 1 + 2 * (2 if binary else 1)
    exported = runner.export(config, ExportConfig(latency_runs=2, parity_images=4), prepared=tiny_prepared,
                             model_dir=model_dir, report_dir=report_dir)
    assert exported.metrics["export_mask_iou"] >= 0.99
