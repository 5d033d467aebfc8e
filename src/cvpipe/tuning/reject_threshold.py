"""A confidence threshold for the classifier: below it a prediction is reported as "uncertain".

Chosen on validation as the smallest threshold t such that the precision of the accepted predictions
(max softmax probability ≥ t) is at least ``target_precision``; the smallest such t keeps the most
predictions (coverage). If no threshold reaches the target, the one with the highest precision is taken
and flagged. A split with no labelled crops (no objects) has no threshold: :class:`DataValidationError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvpipe.tuning.empty_split import require_objects


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    precision: float  # accuracy of the accepted predictions
    coverage: float  # fraction of predictions accepted
    target_met: bool

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}threshold": self.threshold, f"{prefix}precision": self.precision,
                f"{prefix}coverage": self.coverage}


def accepted_precision(probs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(precision, coverage) of the predictions with max probability ≥ threshold."""
    confidence = probs.max(axis=1)
    keep = confidence >= threshold
    coverage = float(keep.mean()) if len(keep) else 0.0
    if not keep.any():
        return 1.0, 0.0
    return float((probs[keep].argmax(axis=1) == labels[keep]).mean()), coverage


def choose_reject_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float, *,
                            split: str = "val") -> OperatingPoint:
    """Smallest threshold whose accepted precision on (probs [N, K], labels [N]) reaches the target;
    :class:`cvpipe.errors.DataValidationError` when N is 0 (``split`` names the split in the message)."""
    require_objects(len(labels), split=split, images=None, chooses="reject threshold")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, correct_sorted = confidence[order], correct[order]
    # Accepting the top-n most confident predictions: precision of that prefix for every n.
    precision_at = np.cumsum(correct_sorted) / np.arange(1, len(order) + 1)
    # Only prefixes that end where the confidence changes are reachable by a threshold.
    ends = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True])
    meets = ends[precision_at[ends] >= target_precision]
    if len(meets):
        n = int(meets.max())
        return OperatingPoint(float(conf_sorted[n]), float(precision_at[n]), (n + 1) / len(order), True)
    n = int(ends[np.argmax(precision_at[ends])])
    return OperatingPoint(float(conf_sorted[n]), float(precision_at[n]), (n + 1) / len(order), False)
