"""The one-cycle schedule of every training run, at the step counts small datasets give."""

import pytest
import torch

from cvpipe.training.loop import adamw_one_cycle


@pytest.mark.parametrize("total_steps, pct_start", [(10, 0.1), (5, 0.2), (4, 0.25), (2, 0.5), (1, 0.1), (3, 0.2)])
def test_a_warm_up_of_exactly_one_step_does_not_divide_by_zero(total_steps, pct_start):
    """OneCycleLR raised ZeroDivisionError when pct_start · total_steps = 1 (e.g. 84 images, batch 16, 2 epochs)."""
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = adamw_one_cycle(model, lr=0.1, weight_decay=0.0, total_steps=total_steps,
                                           pct_start=pct_start)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(0 < r <= 0.1 + 1e-12 for r in rates)


def test_the_schedule_is_unchanged_when_the_warm_up_is_long_enough():
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = adamw_one_cycle(model, lr=0.1, weight_decay=0.0, total_steps=100, pct_start=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(torch.optim.AdamW(model.parameters(), lr=0.1), max_lr=0.1,
                                                    total_steps=100, pct_start=0.1)
    for _ in range(100):
        assert optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        reference.optimizer.step()
        reference.step()


@pytest.mark.parametrize("every, validated", [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (3, [3, 5]), (9, [5])])
def test_validation_runs_every_n_epochs_and_after_the_last(tmp_path, every, validated):
    from cvpipe.device import resolve_runtime
    from cvpipe.training.loop import fit

    model = torch.nn.Linear(2, 1)
    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(2)]
    seen = []

    def evaluate(net):
        seen.append(len(seen))
        return {"score": float(len(seen))}

    optimizer, scheduler = adamw_one_cycle(model, lr=0.01, weight_decay=0.0, total_steps=10, pct_start=0.3)
    result = fit(model, runtime=resolve_runtime("cpu"), make_batches=lambda epoch: data,
                 loss_fn=lambda net, batch: {"loss": ((net(batch[0]) - batch[1]) ** 2).mean()}, evaluate=evaluate,
                 optimizer=optimizer, scheduler=scheduler, epochs=5, seed=0, checkpoint_path=tmp_path / "ckpt.pt",
                 fingerprint="x", validate_every=every)
    assert [int(r["epoch"]) for r in result.history if "val_score" in r] == validated
    assert len(seen) == len(validated) and "val_score" in result.history[-1]


# -- the schedule follows the data: train.min_steps ------------------------------------------------------------------

from cvpipe.training.schedule import Repeated, resolve_schedule, steps_per_epoch  # noqa: E402


@pytest.mark.parametrize("items, batch, epochs, min_steps, passes, steps", [
    (21, 8, 12, 2000, 64, 168),  # the 21 micrographs: 12 x 2 = 24 steps → 64 passes, 12 x 168 = 2016
    (1400, 8, 12, 2000, 1, 175),  # the embedded data's U-Net: 12 x 175 = 2100 ≥ 2000, unchanged
    (1400, 8, 12, None, 1, 175),  # no min_steps: as configured
    (5, 8, 2, 10, 8, 5),  # fewer items than a batch: one short batch per pass until R·N > 8
    (16, 8, 3, 6, 1, 2),  # exactly enough: 3 x 2 = 6
    (16, 8, 3, 7, 2, 4),  # one short → the next whole pass
])
def test_min_steps_raises_the_passes_per_epoch_by_hand(items, batch, epochs, min_steps, passes, steps):
    schedule = resolve_schedule(epochs=epochs, min_steps=min_steps, items=items, batch_size=batch)
    assert (schedule.epochs, schedule.passes, schedule.steps_per_epoch) == (epochs, passes, steps)
    assert schedule.total_steps == epochs * steps and (min_steps is None or schedule.total_steps >= min_steps)
    if passes > 1:  # the smallest number of passes that reaches min_steps
        assert epochs * steps_per_epoch((passes - 1) * items, batch) < min_steps
        assert "passes over the data per epoch" in schedule.reason


def test_two_ranks_count_their_shards():
    """torchrun, 2 ranks of per-rank batch 4: 21 items → 11 per rank → 2 steps; min_steps 30 over 3 epochs → 4
    passes (42 per rank → 10 steps)."""
    schedule = resolve_schedule(epochs=3, min_steps=30, items=21, batch_size=4, ranks=2)
    assert (schedule.passes, schedule.steps_per_epoch, schedule.batch_size) == (4, 10, 8)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_planned_steps_are_the_loaders_steps(ranks):
    """steps_per_epoch is what the engine's DataLoader makes over Repeated(dataset, R) (shuffled, or a
    DistributedSampler shard per rank), for sizes around the batch."""
    from torch.utils.data import DataLoader, DistributedSampler

    for items in (1, 3, 7, 8, 9, 16, 21, 50):
        for passes in (1, 2, 5):
            data = Repeated(list(range(items)), passes)
            for batch in (1, 4, 8):
                shard = DistributedSampler(data, num_replicas=ranks, rank=ranks - 1, shuffle=True,
                                           drop_last=False) if ranks > 1 else None
                loader = DataLoader(data, batch_size=batch, shuffle=shard is None, sampler=shard,
                                    drop_last=len(shard or data) > batch)
                assert len(loader) == steps_per_epoch(items * passes, batch, ranks), (items, passes, batch)


def test_repeated_passes_draw_every_item_equally_often():
    from torch.utils.data import DataLoader

    data = Repeated(list(range(7)), 3)
    seen = torch.cat(list(DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert torch.bincount(seen).tolist() == [3] * 7


def test_default_params_keep_their_epochs_on_the_embedded_data():
    """Every model of params.yaml resolves to exactly its configured epochs, one pass each, on the embedded data:
    its train split's image count, and for the classifier's crops at least ``min_objects`` per image (fewer items
    than it has, so a lower bound of its steps)."""
    from repo_support import REPO

    from cvpipe.config import load_params

    params = load_params(REPO / "params.yaml")
    shapes = params["data"]["shapes"]
    train_images = int(round(params["prepare"]["train_fraction"] * shapes["num_images"]))
    for name, section in params["models"].items():
        train = section["train"]
        items = train_images * (shapes["min_objects"] if section["task"] == "classification" else 1)
        schedule = resolve_schedule(epochs=train["epochs"], min_steps=train.get("min_steps"), items=items,
                                    batch_size=train["batch_size"])
        assert schedule.passes == 1 and schedule.epochs == train["epochs"], (name, schedule.reason)


class Stopped(Exception):
    """Stands for a crash between two epochs."""


def test_a_resumed_run_keeps_the_raised_schedule(tiny_prepared, tmp_path):
    """min_steps on the tiny split (24 images, batch 8: 3 steps a pass): 2 epochs of 4 passes. A training stopped
    after epoch 1 resumes with the same schedule (same fingerprint, steps and losses as an uninterrupted run),
    and the schedule is reported."""
    from cvpipe import engine
    from cvpipe.device import resolve_runtime
    from tests.conftest import model_config

    config = model_config({"task": "segmentation", "train": {
        "arch": "unet", "epochs": 2, "batch_size": 8, "min_steps": 24, "augment": "batched", "binary": True,
        "elastic": {"std": 0.03}, "model": {"base_channels": 4, "depth": 2}}}, "unet")

    def run(folder: str, stop_after: int | None = None) -> tuple[list[dict], object]:
        rows: list[dict] = []

        def on_epoch_end(epoch: int, row: dict) -> None:
            rows.append(row)
            if epoch == stop_after:
                raise Stopped  # a crash after the epoch's checkpoint

        outcome = None
        try:
            outcome = engine.train(config, prepared=tiny_prepared, model_dir=tmp_path / folder,
                                   report_dir=tmp_path / f"r{folder}", runtime=resolve_runtime("cpu"), seed=0,
                                   on_epoch_end=on_epoch_end, run_id="run-1")
        except Stopped:
            pass
        return rows, outcome

    whole, outcome = run("a")
    assert [r["steps"] for r in whole] == [12.0, 24.0]  # 4 passes x 3 steps per epoch
    assert outcome.metrics["schedule_passes"] == 4 and outcome.metrics["schedule_total_steps"] == 24
    assert "4 passes over the data per epoch" in outcome.tags["schedule"]
    assert torch.load(tmp_path / "a/model.pt", weights_only=True)["schedule"]["passes"] == 4

    first, _ = run("b", stop_after=1)
    assert engine.resumable_run_id(config, prepared=tiny_prepared, model_dir=tmp_path / "b", seed=0) == "run-1"
    rest, resumed = run("b")
    assert resumed.metrics["resumed_from_epoch"] == 1
    assert [r["steps"] for r in first + rest] == [12.0, 24.0]
    assert [r["train_loss"] for r in first + rest] == [r["train_loss"] for r in whole]
