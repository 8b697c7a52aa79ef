"""Metrics: every one against scikit-learn or hand values; threshold tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from judge_arrays import fixed_arrays
from sklearn import metrics as skm

from scalpnet.judge.metrics import (
    brier_score,
    compute_metrics,
    confusion_matrix_top1,
    expected_calibration_error,
    most_confused_pairs,
    tune_thresholds,
)
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES

# --------------------------------------------------------------------------- hand example
# Two images. Row 0: Alopecia Areata only; row 1: Contact Dermatitis + Folliculitis.
Y_HAND = np.zeros((2, NUM_CLASSES), dtype=int)
Y_HAND[0, 0] = 1
Y_HAND[1, [1, 2]] = 1
P_HAND = np.zeros((2, NUM_CLASSES))
P_HAND[0, :3] = [0.9, 0.6, 0.1]  # at 0.5 predicts {0, 1}: one wrong cell (col 1)
P_HAND[1, :3] = [0.2, 0.7, 0.4]  # at 0.5 predicts {1}: one wrong cell (col 2)


def test_hand_computed_metrics_at_half():
    m = compute_metrics(Y_HAND, P_HAND, 0.5)
    assert m["n_images"] == 2 and m["n_single_label"] == 1
    assert m["elementwise_accuracy"] == pytest.approx(18 / 20)
    assert m["all_negative_elementwise_accuracy"] == pytest.approx(17 / 20)
    assert m["exact_match_accuracy"] == 0.0
    assert m["hamming_loss"] == pytest.approx(2 / 20)
    assert m["top1_accuracy"] == 1.0  # only row 0 is single-label, and its argmax is right
    per = m["per_condition"]
    a, c, f, h = (per[k] for k in KEYS[:4])
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == (1.0, 1.0, 1.0, 1)
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    # Folliculitis: missed, nothing predicted -> precision undefined, recall 0, F1 0.
    assert f["precision"] is None and f["recall"] == 0.0 and f["f1"] == 0.0
    assert any("precision undefined" in n for n in f["notes"])
    # Head Lice: no positive image and nothing predicted: all undefined, with a note.
    assert h["support"] == 0
    assert h["precision"] is h["recall"] is h["f1"] is h["average_precision"] is h["roc_auc"]
    assert h["roc_auc"] is None
    assert any("no positive image" in n for n in h["notes"])
    for row in (a, c, f):
        assert row["average_precision"] == 1.0 and row["roc_auc"] == 1.0
    # Macro over the conditions where each value is defined.
    assert m["macro"]["precision"] == pytest.approx(0.75)
    assert m["macro"]["recall"] == pytest.approx(2 / 3)
    assert m["macro"]["f1"] == pytest.approx(5 / 9)
    assert m["macro"]["n_conditions"]["roc_auc"] == 3
    # Micro: tp 2, fp 1, fn 1.
    assert (m["micro"]["precision"], m["micro"]["recall"], m["micro"]["f1"]) == pytest.approx(
        (2 / 3, 2 / 3, 2 / 3)
    )
    json.dumps(m, allow_nan=False)  # JSON-ready: no NaN anywhere


def test_hand_computed_metrics_at_per_condition_thresholds():
    thresholds = np.full(NUM_CLASSES, 0.5)
    thresholds[1] = 0.65  # drops the false positive of row 0, keeps row 1's 0.7
    thresholds[2] = 0.3  # catches row 1's 0.4
    m = compute_metrics(Y_HAND, P_HAND, thresholds)
    assert m["elementwise_accuracy"] == 1.0
    assert m["exact_match_accuracy"] == 1.0
    assert m["hamming_loss"] == 0.0
    assert m["thresholds"]["contact_dermatitis"] == 0.65


def test_probability_equal_to_threshold_counts_as_positive():
    y = np.zeros((1, NUM_CLASSES), dtype=int)
    p = np.zeros((1, NUM_CLASSES))
    p[0, 0] = 0.5
    assert compute_metrics(y, p, 0.5)["per_condition"][KEYS[0]]["predicted_positive"] == 1


# --------------------------------------------------------------------------- vs scikit-learn
def test_metrics_equal_scikit_learn():
    y, p = fixed_arrays()
    assert (y.sum(axis=1) > 1).any() and (y.sum(axis=1) == 0).any() and y[:, 9].sum() == 0
    t = np.linspace(0.35, 0.65, NUM_CLASSES)
    m = compute_metrics(y, p, t)
    pred = (p >= t).astype(int)
    assert m["exact_match_accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert m["elementwise_accuracy"] == pytest.approx(1 - skm.hamming_loss(y, pred))
    assert m["all_negative_elementwise_accuracy"] == pytest.approx(
        skm.accuracy_score(y.ravel(), np.zeros(y.size))
    )
    single = y.sum(axis=1) == 1
    assert m["top1_accuracy"] == pytest.approx(
        skm.accuracy_score(y[single].argmax(1), p[single].argmax(1))
    )
    for k, key in enumerate(KEYS):
        row = m["per_condition"][key]
        assert row["name"] == ENGLISH_NAMES[k]
        assert row["support"] == y[:, k].sum()
        if y[:, k].sum() == 0:
            assert row["recall"] is row["average_precision"] is row["roc_auc"] is None
            continue
        assert row["precision"] == pytest.approx(
            skm.precision_score(y[:, k], pred[:, k], zero_division=np.nan), nan_ok=True
        )
        assert row["recall"] == pytest.approx(skm.recall_score(y[:, k], pred[:, k]))
        assert row["f1"] == pytest.approx(skm.f1_score(y[:, k], pred[:, k]))
        assert row["average_precision"] == pytest.approx(
            skm.average_precision_score(y[:, k], p[:, k])
        )
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(y[:, k], p[:, k]))
    defined = y.sum(axis=0) > 0
    assert m["macro"]["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y[:, defined], p[:, defined], average="macro")
    )
    assert m["macro"]["average_precision"] == pytest.approx(
        skm.average_precision_score(y[:, defined], p[:, defined], average="macro")
    )
    assert m["macro"]["f1"] == pytest.approx(
        skm.f1_score(y, pred, average="macro", zero_division=np.nan)
    )
    for name, fn in (
        ("precision", skm.precision_score),
        ("recall", skm.recall_score),
        ("f1", skm.f1_score),
    ):
        assert m["micro"][name] == pytest.approx(fn(y, pred, average="micro"))
    assert m["micro"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, average="micro"))
    assert m["micro"]["average_precision"] == pytest.approx(
        skm.average_precision_score(y, p, average="micro")
    )


def test_brier_equals_scikit_learn_and_ece_equals_hand_value():
    y, p = fixed_arrays()
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y.ravel(), p.ravel()))
    # Two bins: [0, .5) holds 0.2, 0.1 (mean .15, half positive: gap .35);
    # [.5, 1] holds 0.9, 0.9 (mean .9, half positive: gap .4). ECE = (.35 + .4) / 2.
    ece = expected_calibration_error(np.array([1, 0, 1, 0]), np.array([0.9, 0.9, 0.2, 0.1]), 2)
    assert ece == pytest.approx(0.375)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    assert expected_calibration_error(np.array([1, 0]), np.array([0.0, 1.0])) == 1.0


def test_all_negative_baseline_is_exactly_ninety_percent_on_balanced_single_label():
    y = np.repeat(np.eye(NUM_CLASSES, dtype=int), 12, axis=0)  # 120 images, 12 per class
    p = np.random.default_rng(0).uniform(size=y.shape)
    assert compute_metrics(y, p)["all_negative_elementwise_accuracy"] == 0.9
    # ...and a model that never predicts anything reaches it while finding nothing.
    m = compute_metrics(y, np.zeros(y.shape), 0.5)
    assert m["elementwise_accuracy"] == 0.9
    assert m["exact_match_accuracy"] == 0.0 and m["micro"]["recall"] == 0.0


def test_confusion_matrix_and_most_confused_pairs():
    y = np.zeros((5, NUM_CLASSES), dtype=int)
    y[[0, 1, 2, 3], [0, 0, 0, 1]] = 1
    y[4, [2, 3]] = 1  # multi-label: left out of the top-1 matrix
    p = np.zeros((5, NUM_CLASSES))
    p[0, 0] = p[1, 5] = p[2, 5] = p[3, 0] = p[4, 7] = 0.9
    cm = confusion_matrix_top1(y, p)
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    expected[0, 0], expected[0, 5], expected[1, 0] = 1, 2, 1
    np.testing.assert_array_equal(cm, expected)
    pairs = most_confused_pairs(cm)
    assert [(q["true"], q["predicted"], q["count"]) for q in pairs] == [
        (KEYS[0], KEYS[5], 2),
        (KEYS[1], KEYS[0], 1),
    ]
    assert pairs[0]["rate"] == pytest.approx(2 / 3) and pairs[1]["rate"] == 1.0
    assert pairs[0]["true_name"] == "Alopecia Areata"
    assert most_confused_pairs(np.eye(NUM_CLASSES, dtype=int)) == []
    assert len(most_confused_pairs(np.ones((NUM_CLASSES, NUM_CLASSES), dtype=int), k=3)) == 3


# --------------------------------------------------------------------------- thresholds
def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Hand F1 = 2 TP / (2 TP + FP + FN) (fast enough to try every candidate)."""
    tp = np.sum((y == 1) & pred)
    wrong = np.sum((y == 1) != pred)
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


@pytest.mark.parametrize("seed", range(5))
def test_tuned_thresholds_never_lose_f1_on_the_data_they_were_tuned_on(seed):
    y, p = fixed_arrays(n=80, seed=seed)
    t = tune_thresholds(y, p)
    for k in range(NUM_CLASSES):
        if y[:, k].sum() == 0:
            assert t[k] == 0.5
            continue
        tuned = skm.f1_score(y[:, k], p[:, k] >= t[k])
        half = skm.f1_score(y[:, k], p[:, k] >= 0.5)
        assert tuned >= half - 1e-12
        # nothing better exists among all thresholds
        assert tuned == pytest.approx(max(_f1(y[:, k], p[:, k] >= c) for c in np.unique(p[:, k])))


def test_tuned_threshold_separates_a_separable_condition():
    y = np.zeros((6, NUM_CLASSES), dtype=int)
    y[:3, 0] = 1
    p = np.full(y.shape, 0.1)
    p[:, 0] = [0.30, 0.25, 0.20, 0.10, 0.05, 0.02]  # all below 0.5, perfectly ranked
    t = tune_thresholds(y, p)
    assert 0.10 < t[0] <= 0.20  # halfway between the last positive and the first negative
    assert skm.f1_score(y[:, 0], p[:, 0] >= t[0]) == 1.0
