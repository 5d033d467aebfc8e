"""Weight EMA (train.ema_decay): the update against a hand-computed case, and a training that validates and saves
the average and resumes it exactly."""

from __future__ import annotations

import pytest
import torch

from cvpipe.device import resolve_runtime
from cvpipe.training.ema import WeightEMA
from cvpipe.training.loop import adamw_one_cycle, fit


def test_the_average_follows_the_warmed_up_decay_by_hand():
    model = torch.nn.BatchNorm1d(1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)  # t = 1: d = min(0.5, 2/11) = 2/11 → 2/11 · 1 + 9/11 · 3
    assert ema.module.weight.item() == pytest.approx(2 / 11 + 27 / 11)
    assert ema.module.num_batches_tracked.item() == 7  # integer buffers are copied
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model)  # t = 2: d = min(0.5, 3/12) = 0.25
    assert ema.module.weight.item() == pytest.approx(0.25 * 29 / 11)
    assert ema.factor() == pytest.approx(4 / 13)  # t = 3: 4/13 < 0.5: still warming up
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(model, decay=1.0)


def test_fit_validates_and_keeps_the_average_and_a_resume_continues_it(tmp_path):
    data = [(torch.randn(4, 2, generator=torch.Generator().manual_seed(i)),
             torch.randn(4, 1, generator=torch.Generator().manual_seed(10 + i))) for i in range(3)]

    def run(folder: str, epochs: int) -> tuple[torch.nn.Module, list[dict]]:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 1)
        optimizer, scheduler = adamw_one_cycle(model, lr=0.05, weight_decay=0.0, total_steps=12, pct_start=0.3)
        result = fit(model, runtime=resolve_runtime("cpu"), make_batches=lambda epoch: data,
                     loss_fn=lambda net, batch: {"loss": ((net(batch[0]) - batch[1]) ** 2).mean()},
                     evaluate=lambda net: {"bias": float(net.bias)}, optimizer=optimizer, scheduler=scheduler,
                     epochs=epochs, seed=0, checkpoint_path=tmp_path / folder / "last.pt", fingerprint="x",
                     ema_decay=0.9)
        return model, result.history

    whole, history = run("a", 4)
    assert history[-1]["val_bias"] == pytest.approx(float(whole.bias))  # validated = saved = the average
    torch.manual_seed(0)
    assert float(whole.bias) != pytest.approx(float(torch.nn.Linear(2, 1).bias))  # it trained
    run("b", 2)  # stopped after 2 of 4 epochs (the checkpoint holds raw weights and the average)
    resumed, resumed_history = run("b", 4)
    assert [r["train_loss"] for r in resumed_history] == [r["train_loss"] for r in history]
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
