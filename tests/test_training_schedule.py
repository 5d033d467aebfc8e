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
