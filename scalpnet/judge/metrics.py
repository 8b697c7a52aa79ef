"""Metrics over label arrays: the original's element-wise accuracy and the honest ones.

Every function takes ``y_true`` (N, 10) 0/1 and ``probs`` (N, 10) in [0, 1], in label
order (``labels.KEYS``), and needs no TensorFlow: element-wise, exact-match and top-1
accuracy, per-condition precision/recall/F1/AP/ROC AUC, threshold tuning, reliability
bins, ECE and the Brier score, the top-1 confusion matrix.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES

DEFAULT_THRESHOLD = 0.5
ECE_BINS = 15


def check_pair(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (N, 10) int labels and (N, 10) float64 probabilities."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != NUM_CLASSES or y.shape != p.shape:
        raise ValueError(
            f"expected labels and probabilities of shape (N, {NUM_CLASSES}), "
            f"got {y.shape} and {p.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y.astype(np.int64), p


def as_thresholds(thresholds) -> np.ndarray:
    """A scalar or (10,) thresholds -> (10,) float64."""
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (NUM_CLASSES,))
    return np.array(t)


def _num(x) -> float | None:
    """A finite float, or None for NaN/inf (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def predict_labels(probs: np.ndarray, thresholds) -> np.ndarray:
    """(N, 10) 0/1 decisions: probability >= the condition's threshold."""
    return (np.asarray(probs) >= as_thresholds(thresholds)).astype(np.int64)


def elementwise_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of the N x 10 label cells predicted right: the original project's metric."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def all_negative_accuracy(y_true: np.ndarray) -> float:
    """Element-wise accuracy of predicting "no condition" for every image and condition."""
    return float(np.mean(np.asarray(y_true) == 0))


def single_label_mask(y_true: np.ndarray) -> np.ndarray:
    """(N,) True for images carrying exactly one condition."""
    return np.asarray(y_true).sum(axis=1) == 1


def top1_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Share of single-label images whose most probable condition is the true one.

    Returns None when there is no single-label image.
    """
    y, p = check_pair(y_true, probs)
    mask = single_label_mask(y)
    if not mask.any():
        return None
    return float(np.mean(p[mask].argmax(axis=1) == y[mask].argmax(axis=1)))


def _check_cells(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of any equal shape -> two flat float64 arrays of cells."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(
            f"expected non-empty labels and probabilities of one shape, got {y.shape} and {p.shape}"
        )
    return y.ravel(), p.ravel()


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared error between probabilities and 0/1 labels over all cells, any shape."""
    y, p = _check_cells(y_true, probs)
    return float(np.mean((p - y) ** 2))


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Equal-width bins over [0, 1] of all label cells (arrays of any one shape).

    Returns:
        ``edges`` (n_bins+1,), ``count`` (n_bins,), ``confidence`` (mean probability) and
        ``frequency`` (fraction of positive labels) per bin (NaN where a bin is empty).
    """
    y, p = _check_cells(y_true, probs)
    index = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=p, minlength=n_bins) / count
        frequency = np.bincount(index, weights=y, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "confidence": confidence,
        "frequency": frequency,
    }


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE over all label cells: sum over bins of (cells in bin / all cells) x |freq - conf|.

    Each (image, condition) cell is one binary prediction; bins are equal-width,
    [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1].
    """
    bins = reliability_bins(y_true, probs, n_bins)
    used = bins["count"] > 0
    gap = np.abs(bins["frequency"][used] - bins["confidence"][used])
    return float(np.sum(bins["count"][used] * gap) / bins["count"].sum())


def confusion_matrix_top1(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(10, 10) counts over single-label images: rows the true condition, columns the argmax."""
    from sklearn import metrics as skm  # lazy: inference imports this module

    y, p = check_pair(y_true, probs)
    mask = single_label_mask(y)
    return skm.confusion_matrix(
        y[mask].argmax(axis=1), p[mask].argmax(axis=1), labels=list(range(NUM_CLASSES))
    )


def most_confused_pairs(cm: np.ndarray, k: int = 5) -> list[dict]:
    """The k largest off-diagonal cells of a confusion matrix, largest first (count > 0 only).

    Each item: ``true``/``predicted`` keys, their English names, ``count`` and ``rate``
    (the share of that true condition's images predicted as the other one).
    """
    cm = np.asarray(cm)
    rows = cm.sum(axis=1)
    pairs = [
        (int(cm[i, j]), i, j)
        for i in range(cm.shape[0])
        for j in range(cm.shape[1])
        if i != j and cm[i, j] > 0
    ]
    pairs.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [
        {
            "true": KEYS[i],
            "predicted": KEYS[j],
            "true_name": ENGLISH_NAMES[i],
            "predicted_name": ENGLISH_NAMES[j],
            "count": count,
            "rate": count / int(rows[i]),
        }
        for count, i, j in pairs[:k]
    ]


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The F1-maximising threshold of one condition; 0.5 when it has no positives.

    Candidates are the distinct scores (``p >= t`` then predicts a distinct set), so the
    maximum is at least the F1 at 0.5. Ties go to the candidate nearest 0.5; the threshold
    returned sits halfway down to the next lower score so small shifts do not flip decisions.
    """
    from sklearn import metrics as skm

    if y.sum() == 0:
        return DEFAULT_THRESHOLD
    precision, recall, cuts = skm.precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    i = best[np.argmin(np.abs(cuts[best] - DEFAULT_THRESHOLD))]
    if i == 0:
        return float(cuts[0])
    middle = (cuts[i] + cuts[i - 1]) / 2
    return float(middle if cuts[i - 1] < middle <= cuts[i] else cuts[i])


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(10,) per-condition thresholds maximising F1 on these labels and probabilities."""
    y, p = check_pair(y_true, probs)
    return np.array([_best_threshold(y[:, k], p[:, k]) for k in range(NUM_CLASSES)])


def _per_condition(y: np.ndarray, p: np.ndarray, pred: np.ndarray) -> dict[str, dict]:
    """Precision, recall, F1, AP, ROC AUC and support per condition; None where undefined."""
    from sklearn import metrics as skm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, f1, support = skm.precision_recall_fscore_support(
            y, pred, average=None, labels=list(range(NUM_CLASSES)), zero_division=np.nan
        )
    n = len(y)
    out = {}
    for k, key in enumerate(KEYS):
        pos, notes = int(support[k]), []
        if pos == 0:
            notes.append("no positive image: recall, average precision and ROC AUC undefined")
        if pred[:, k].sum() == 0:
            notes.append("nothing predicted positive: precision undefined")
        if pos == n and n > 0:
            notes.append("every image positive: ROC AUC undefined")
        ap = skm.average_precision_score(y[:, k], p[:, k]) if pos > 0 else None
        auc = skm.roc_auc_score(y[:, k], p[:, k]) if 0 < pos < n else None
        out[key] = {
            "name": ENGLISH_NAMES[k],
            "support": pos,
            "predicted_positive": int(pred[:, k].sum()),
            "precision": _num(prec[k]),
            "recall": _num(rec[k]),
            "f1": _num(f1[k]),
            "average_precision": _num(ap),
            "roc_auc": _num(auc),
            "notes": notes,
        }
    return out


def _macro(per: dict[str, dict]) -> dict:
    """Mean of each metric over the conditions where it is defined, and how many those are."""
    out, counted = {}, {}
    for name in ("precision", "recall", "f1", "average_precision", "roc_auc"):
        values = [row[name] for row in per.values() if row[name] is not None]
        out[name] = float(np.mean(values)) if values else None
        counted[name] = len(values)
    out["n_conditions"] = counted
    return out


def _micro(y: np.ndarray, p: np.ndarray, pred: np.ndarray) -> dict:
    """Metrics over all label cells pooled together; None where undefined."""
    from sklearn import metrics as skm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, f1, _ = skm.precision_recall_fscore_support(
            y, pred, average="micro", zero_division=np.nan
        )
    has_pos, has_neg = bool(y.any()), bool((y == 0).any())
    return {
        "precision": _num(prec),
        "recall": _num(rec),
        "f1": _num(f1),
        "average_precision": (
            _num(skm.average_precision_score(y, p, average="micro")) if has_pos else None
        ),
        "roc_auc": (
            _num(skm.roc_auc_score(y, p, average="micro")) if has_pos and has_neg else None
        ),
    }


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, thresholds=DEFAULT_THRESHOLD) -> dict:
    """Every metric of the report at the given thresholds, JSON-ready (None = undefined).

    Args:
        y_true: (N, 10) 0/1 labels; rows may carry several conditions, or none.
        probs: (N, 10) probabilities.
        thresholds: a scalar or (10,) per-condition thresholds; positive means p >= t.
    """
    from sklearn import metrics as skm

    y, p = check_pair(y_true, probs)
    t = as_thresholds(thresholds)
    pred = predict_labels(p, t)
    per = _per_condition(y, p, pred)
    notes = [f"{row['name']}: {note}" for row in per.values() for note in row["notes"]]
    return {
        "thresholds": dict(zip(KEYS, map(float, t), strict=True)),
        "n_images": len(y),
        "n_single_label": int(single_label_mask(y).sum()),
        "elementwise_accuracy": _num(elementwise_accuracy(y, pred)) if len(y) else None,
        "all_negative_elementwise_accuracy": _num(all_negative_accuracy(y)) if len(y) else None,
        "exact_match_accuracy": _num(skm.accuracy_score(y, pred)) if len(y) else None,
        "top1_accuracy": top1_accuracy(y, p),
        "hamming_loss": _num(skm.hamming_loss(y, pred)) if len(y) else None,
        "per_condition": per,
        "macro": _macro(per),
        "micro": _micro(y, p, pred),
        "notes": notes,
    }


def calibration_summary(
    y_true: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, n_bins: int = ECE_BINS
) -> dict:
    """ECE, Brier score and top-1 accuracy before and after calibration (overall, per condition)."""
    y, raw = check_pair(y_true, raw)
    _, calibrated = check_pair(y_true, calibrated)

    def side(p: np.ndarray) -> dict:
        return {
            "ece": expected_calibration_error(y, p, n_bins),
            "brier": brier_score(y, p),
            "top1_accuracy": top1_accuracy(y, p),
            "per_condition": {
                key: {
                    "ece": expected_calibration_error(y[:, k], p[:, k], n_bins),
                    "brier": brier_score(y[:, k], p[:, k]),
                }
                for k, key in enumerate(KEYS)
            },
        }

    return {"n_bins": n_bins, "before": side(raw), "after": side(calibrated)}


def pct(x) -> str:
    """A fraction as a percentage with two decimals; "n/a" for an undefined metric."""
    return "n/a" if x is None else f"{100 * x:.2f}%"


def f3(x) -> str:
    """A metric with three decimals; "n/a" when undefined."""
    return "n/a" if x is None else f"{x:.3f}"
