"""Loss of the U-Net (:mod:`cvpipe.models.unet`): pixel-wise cross-entropy + λ · soft Dice.

Notation: logits z [B, C, H, W], target t [B, H, W] (0 = background, k = class k in 1..K, ``ignore_index`` =
not labelled), V = the set of pixels i with t_i ≠ ignore_index, |V| its size (clamped to ≥ 1 so an all-ignored
batch gives 0, not NaN). Sums Σ_i run over V only, over all images of the batch.

Multi-class (C = K + 1), p_ic = softmax_c(z_i), g_ic = [t_i = c]:

    L_ce   = (1/|V|) Σ_i −log p_{i, t_i}
    D_c    = (2 Σ_i p_ic g_ic + ε) / (Σ_i p_ic + Σ_i g_ic + ε)                    (soft Dice, Milletari et al. 2016)
    L_dice = 1 − (1/K) Σ_{c=1..K} D_c                                            (foreground classes only)

Binary (C = 1, any t_i in 1..K counts as foreground), p_i = σ(z_i), g_i = [t_i ≠ 0]:

    L_ce   = (1/|V|) Σ_i BCE(z_i, g_i)
    L_dice = 1 − (2 Σ_i p_i g_i + ε) / (Σ_i p_i + Σ_i g_i + ε)

    L = L_ce + λ · L_dice,   λ = ``dice_weight``, ε = ``smooth``.

Background is deliberately left out of the Dice mean: it covers ~85 % of the pixels, so D_0 is close to 1
from the first steps and would only dilute the mean (and its gradient) that the foreground classes need; the
metric we select on (mean IoU / Dice over foreground classes) ignores it too. Background is still trained: by
L_ce, and because softmax probabilities sum to 1, pushing Σ p_ic down on background pixels for every
foreground c (the denominators of D_c) raises p_i0 there.

Sums run over the whole batch ("batch Dice"), not per image: a class absent from one image would otherwise
give D_c = ε / (Σ p_ic + ε), a term set by the smoothing constant; the batch sums make D_c the soft version of
the split-level Dice that :mod:`cvpipe.metrics.segmentation` accumulates. A class absent from the whole batch
still gets D_c = ε / (Σ p_ic + ε): a (weak) push of its probabilities towards 0, and D_c = 1 when they are 0.

Ignored pixels contribute to neither term (their logits get zero gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationLoss(nn.Module):
    """logits [B, C, H, W] (from ``UNet.forward``) + target int [B, H, W] → {"loss_ce", "loss_dice", "loss"},
    scalar tensors; see the module docstring for the formulas."""

    def __init__(self, *, num_classes: int, dice_weight: float = 1.0, smooth: float = 1.0, ignore_index: int = 255,
                 binary: bool = False) -> None:
        super().__init__()
        if smooth <= 0:
            raise ValueError(f"smooth must be > 0, got {smooth}")
        self.num_classes, self.binary = num_classes, binary
        self.smooth, self.ignore_index = smooth, ignore_index
        self.weights = {"loss_ce": 1.0, "loss_dice": dice_weight}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        channels = 1 if self.binary else self.num_classes + 1
        if logits.dim() != 4 or logits.shape[1] != channels:
            raise ValueError(f"logits must be [B, {channels}, H, W], got {tuple(logits.shape)}")
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        logits = logits.float()
        target = target.long()
        valid = target != self.ignore_index  # [B, H, W]
        labels = torch.where(valid, target, torch.zeros_like(target))
        bad = (labels < 0) | (labels > self.num_classes)
        if bad.any():
            raise ValueError(f"target value {labels[bad][0].item()} outside 0..{self.num_classes} "
                             f"and not ignore_index={self.ignore_index}")
        num_valid = valid.sum().clamp(min=1)
        keep = valid.unsqueeze(1)  # [B, 1, H, W]
        if self.binary:
            onehot = (labels != 0).unsqueeze(1).float()  # [B, 1, H, W]
            pixel_ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
            probs = torch.sigmoid(logits)
        else:
            onehot = F.one_hot(labels, channels).permute(0, 3, 1, 2).float()  # [B, C, H, W]
            pixel_ce = F.cross_entropy(logits, labels, reduction="none").unsqueeze(1)  # [B, 1, H, W]
            probs = torch.softmax(logits, dim=1)
        zero = logits.new_zeros(())
        # ignored pixels contribute 0 to every sum, whatever the model outputs there
        loss_ce = torch.where(keep, pixel_ce, zero).sum() / num_valid
        probs, onehot = torch.where(keep, probs, zero), torch.where(keep, onehot, zero)
        inter = (probs * onehot).sum(dim=(0, 2, 3))  # [C]
        dice = (2 * inter + self.smooth) / (probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) + self.smooth)
        foreground = dice if self.binary else dice[1:]  # background excluded, see the module docstring
        losses = {"loss_ce": loss_ce, "loss_dice": 1.0 - foreground.mean()}
        losses["loss"] = sum(self.weights[name] * value for name, value in losses.items())
        return losses
