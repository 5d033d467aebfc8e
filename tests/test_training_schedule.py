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
