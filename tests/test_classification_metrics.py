import numpy as np

from cvpipe.metrics.classification import confusion_matrix, per_class_precision_recall, topk_accuracy
from cvpipe.tuning.reject_threshold import accepted_precision, choose_reject_threshold


def test_topk_hand_computed_and_clipped_to_class_count():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 0])
    assert topk_accuracy(probs, labels, 1) == 1 / 3
    assert topk_accuracy(probs, labels, 2) == 2 / 3
    assert topk_accuracy(probs, labels, 5) == 1.0  # k clipped to 3 classes


def test_confusion_and_per_class_precision_recall():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 1])
    cm = confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    precision, recall = per_class_precision_recall(cm)
    np.testing.assert_allclose(precision[:2], [1.0, 0.5])
    assert np.isnan(precision[2])  # class 2 is never predicted
    np.testing.assert_allclose(recall, [0.5, 1.0, 0.0])


def test_reject_threshold_equals_brute_force_over_all_candidate_thresholds():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n, k = int(rng.integers(5, 40)), int(rng.integers(2, 5))
        probs = rng.dirichlet(np.ones(k), size=n).round(2)  # rounding creates ties
        labels = np.where(rng.random(n) < 0.7, probs.argmax(1), rng.integers(0, k, n))
        target = float(rng.choice([0.6, 0.8, 0.95, 1.0]))
        point = choose_reject_threshold(probs, labels, target)
        candidates = sorted(set(probs.max(1)))
        feasible = [t for t in candidates if accepted_precision(probs, labels, t)[0] >= target]
        if feasible:
            assert point.target_met and point.threshold == min(feasible)
        else:
            best = max(accepted_precision(probs, labels, t)[0] for t in candidates)
            assert not point.target_met and point.precision == best
        precision, coverage = accepted_precision(probs, labels, point.threshold)
        assert (round(precision, 12), round(coverage, 12)) == (round(point.precision, 12), round(point.coverage, 12))
