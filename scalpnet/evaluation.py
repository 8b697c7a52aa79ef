"""Honest evaluation of a run: metrics, per-condition thresholds, calibration, plots, report.

The original project reported element-wise binary accuracy over the N x 10 label cells;
with one label per image, predicting "no disease" everywhere already scores 90% on it.
We report that number beside the all-negative baseline, and the numbers that tell the
truth: exact-match and top-1 accuracy, per-condition precision/recall/F1/AP/ROC AUC.

Order of work in :func:`evaluate_run` (everything fitted on the validation split only):
    1. predict val and the evaluated split (raw sigmoid outputs);
    2. fit one temperature per condition on val (``calibration.py``);
    3. tune one threshold per condition on the CALIBRATED val probabilities (max F1),
       because inference compares calibrated probabilities with these thresholds;
    4. score the split at 0.5 and at the tuned thresholds; ECE/Brier before and after.

The array functions here take ``y_true`` (N, 10) 0/1 and ``probs`` (N, 10) in [0, 1],
in label order (``labels.KEYS``), and need no TensorFlow.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scalpnet.calibration import Calibration, write_json_atomic
from scalpnet.errors import DatasetError, ModelNotFoundError
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES

DEFAULT_THRESHOLD = 0.5
ECE_BINS = 15
SPLITS = ("train", "val", "test")
THRESHOLDS_FILE = "thresholds.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
# The top-level metrics.json keys this module writes; any other key (e.g. "ood",
# written by the out-of-distribution fit) is preserved when the file is rewritten.
OWNED_KEYS = (
    "schema",
    "run",
    "demo",
    "split",
    "split_scheme",
    "dataset_csv",
    "n_images",
    "conditions",
    "thresholds",
    "temperature",
    "at_0.5",
    "at_tuned",
    "calibration",
    "confusion_matrix",
    "most_confused",
    "notes",
    "commands",
    "evaluated",
    "versions",
)
SPLIT_SCHEMES = {
    "shipped": "the dataset's own train/val/test folders. On the Kaggle Hair Diseases set "
    "these hold copies of the same photo in train and test, so the numbers are inflated",
    "random": "a stratified random 8:1:1 re-split. Near-duplicate photos can still sit in "
    "train and test, so these numbers may be inflated",
    "grouped": "a leak-free 8:1:1 split: near-duplicate photos are kept within one split",
}


# --------------------------------------------------------------------------- arrays
def _check_pair(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
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


def _thresholds(thresholds) -> np.ndarray:
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
    return (np.asarray(probs) >= _thresholds(thresholds)).astype(np.int64)


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
    y, p = _check_pair(y_true, probs)
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

    y, p = _check_pair(y_true, probs)
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
    y, p = _check_pair(y_true, probs)
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

    y, p = _check_pair(y_true, probs)
    t = _thresholds(thresholds)
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
    y, raw = _check_pair(y_true, raw)
    _, calibrated = _check_pair(y_true, calibrated)

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


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate a run folder."""

    split: str = "test"
    batch_size: int = 32
    n_bins: int = ECE_BINS
    progress: bool = True

    def __post_init__(self):
        if self.split not in SPLITS:
            raise DatasetError(f"unknown split {self.split!r}; expected one of {', '.join(SPLITS)}")
        if self.batch_size < 1 or self.n_bins < 1:
            raise ValueError(
                f"batch_size and n_bins must be >= 1, got {self.batch_size} and {self.n_bins}"
            )


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_run` wrote, and the metrics it wrote into metrics.json."""

    run_dir: Path
    split: str
    metrics: dict
    files: dict[str, Path] = field(default_factory=dict)

    def summary_table(self) -> str:
        """A plain-text table for the terminal."""
        m = self.metrics
        at5, tuned = m["at_0.5"], m["at_tuned"]
        cal = m["calibration"]
        lines = []
        if m.get("demo"):
            lines.append(
                "DEMO MODEL ON SYNTHETIC DATA: these numbers say nothing about real scalps."
            )
        lines.append(
            f"{self.run_dir.name}: split '{m['split']}' ({m['n_images'][m['split']]} images), "
            f"split scheme '{m['split_scheme']}'"
        )
        rows = [
            ("element-wise accuracy (original metric)", "elementwise_accuracy", _pct),
            ("  same, all-negative predictor", "all_negative_elementwise_accuracy", _pct),
            ("exact-match accuracy", "exact_match_accuracy", _pct),
            ("top-1 accuracy (single-label)", "top1_accuracy", _pct),
            ("Hamming loss", "hamming_loss", _f3),
        ]
        width = 42
        lines.append(f"{'metric':<{width}}{'at 0.5':>10}{'tuned':>10}")
        for label, key, fmt in rows:
            lines.append(f"{label:<{width}}{fmt(at5[key]):>10}{fmt(tuned[key]):>10}")
        for avg in ("macro", "micro"):
            lines.append(
                f"{avg + ' F1':<{width}}{_f3(at5[avg]['f1']):>10}{_f3(tuned[avg]['f1']):>10}"
            )
        lines.append(f"{'macro ROC AUC':<{width}}{_f3(at5['macro']['roc_auc']):>10}")
        lines.append(f"{'metric':<{width}}{'before':>10}{'after':>10}")
        for label, key in (("ECE (calibration)", "ece"), ("Brier score", "brier")):
            lines.append(
                f"{label:<{width}}{_f3(cal['before'][key]):>10}{_f3(cal['after'][key]):>10}"
            )
        if "report" in self.files:
            lines.append(f"report: {self.files['report']}")
        return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _f3(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def evaluate_predictions(
    val_true: np.ndarray,
    val_probs: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    n_bins: int = ECE_BINS,
) -> tuple[dict, Calibration, np.ndarray]:
    """Fit calibration and thresholds on val, score the other split. No files, no model.

    Args:
        val_true, val_probs: (M, 10) validation labels and raw probabilities (M may be 0).
        y_true, probs: (N, 10) labels and raw probabilities of the evaluated split.

    Returns:
        (metrics sections, the fitted Calibration, (10,) tuned thresholds). The thresholds
        apply to calibrated probabilities, like everything inference shows.
    """
    y, raw = _check_pair(y_true, probs)
    notes = []
    if len(val_true):
        calibration = Calibration.fit(val_true, val_probs)
        thresholds = tune_thresholds(val_true, calibration.apply(val_probs))
    else:
        calibration, thresholds = Calibration.identity(), np.full(NUM_CLASSES, DEFAULT_THRESHOLD)
        notes.append("the validation split is empty: thresholds 0.5 and no calibration")
    calibrated = calibration.apply(raw)
    cm = confusion_matrix_top1(y, calibrated)
    sections = {
        "thresholds": dict(zip(KEYS, map(float, thresholds), strict=True)),
        "temperature": calibration.to_dict()["temperature"],
        "at_0.5": compute_metrics(y, calibrated, DEFAULT_THRESHOLD),
        "at_tuned": compute_metrics(y, calibrated, thresholds),
        "calibration": calibration_summary(y, raw, calibrated, n_bins),
        "confusion_matrix": {"labels": list(KEYS), "matrix": cm.tolist()},
        "most_confused": most_confused_pairs(cm),
        "notes": notes,
    }
    return sections, calibration, thresholds


# --------------------------------------------------------------------------- files
def save_thresholds(path: str | os.PathLike, thresholds: np.ndarray) -> Path:
    """Write thresholds.json (a run folder or a file path)."""
    path = Path(path)
    path = path / THRESHOLDS_FILE if path.is_dir() else path
    write_json_atomic(
        path,
        {
            "method": "max_f1",
            "fitted_on": "val",
            "applies_to": "calibrated probabilities (calibration.json)",
            "thresholds": dict(zip(KEYS, map(float, _thresholds(thresholds)), strict=True)),
        },
    )
    return path


def load_thresholds(path: str | os.PathLike) -> np.ndarray:
    """(10,) thresholds in label order from thresholds.json (a run folder or a file path).

    Raises:
        ModelNotFoundError: the file is missing, not JSON, or lacks a condition.
    """
    path = Path(path)
    path = path / THRESHOLDS_FILE if path.is_dir() else path
    if not path.is_file():
        raise ModelNotFoundError(
            f"no thresholds file at '{path}' (run 'python -m scalpnet evaluate' first)"
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
        return np.array([float(values[k]) for k in KEYS])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(
            f"'{path}' is not a thresholds file with a number for every condition: {exc!r}"
        ) from None


def merge_json(path: str | os.PathLike, updates: dict) -> dict:
    """Read a JSON object (if any), overwrite the keys in ``updates``, write it atomically.

    Keys owned by other writers (e.g. the "ood" section of metrics.json) survive.
    An unreadable existing file is replaced rather than crashing the evaluation.
    """
    path = Path(path)
    data: dict = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            data = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = {}
    data.update(updates)
    write_json_atomic(path, data)
    return data


def _read_card(run_dir: Path) -> dict:
    path = run_dir / "model_card.json"
    if not path.is_file():
        raise ModelNotFoundError(
            f"no model_card.json in '{run_dir}' (is it a training run folder?)"
        )
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        int(card["image_size"])
        str(card["dataset"]["csv"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(
            f"'{path}' is not a usable model card (needs image_size and dataset.csv): {exc!r}"
        ) from None
    return card


def predict_split(model, csv: Path, split: str, image_size: int, batch_size: int, progress: bool):
    """Labels (N, 10) and raw probabilities (N, 10) of one split, in CSV order.

    Raises:
        DatasetError: from ``dataset.make_dataset`` (missing CSV or images, empty split).
    """
    from tqdm import tqdm

    from scalpnet import dataset

    ds = dataset.make_dataset(
        csv, split, image_size=image_size, batch_size=batch_size, training=False
    )
    steps = int(ds.cardinality())
    labels, probs = [], []
    bar = tqdm(
        ds,
        total=steps if steps >= 0 else None,
        desc=f"predict {split}",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    for x, y in bar:
        probs.append(np.asarray(model.predict_on_batch(x), dtype=np.float32))  # (B, 10)
        labels.append(np.asarray(y, dtype=np.float32))  # (B, 10)
    return np.concatenate(labels), np.concatenate(probs)


def default_command(run_dir: Path, split: str, batch_size: int) -> str:
    """The CLI line that reproduces an evaluation."""
    parts = ["python", "-m", "scalpnet", "evaluate", "--run", str(run_dir), "--split", split]
    if batch_size != EvaluationConfig.batch_size:
        parts += ["--batch-size", str(batch_size)]
    return shlex.join(parts)


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    batch_size: int = 32,
    progress: bool = True,
    *,
    n_bins: int = ECE_BINS,
    command: str | None = None,
) -> EvaluationResult:
    """Evaluate a run folder; see :func:`evaluate` (this is its keyword-argument form)."""
    config = EvaluationConfig(split=split, batch_size=batch_size, n_bins=n_bins, progress=progress)
    return evaluate(run_dir, config, command=command)


def evaluate(
    run_dir: str | os.PathLike,
    config: EvaluationConfig = EvaluationConfig(),
    command: str | None = None,
) -> EvaluationResult:
    """Evaluate a run folder and write its thresholds, calibration, metrics, report and plots.

    Writes into ``run_dir``: thresholds.json, calibration.json, metrics.json (merged: keys
    of other writers such as "ood" are kept), report.md and the PNGs of ``PLOT_FILES``.

    Args:
        run_dir: a folder with model.keras and model_card.json.
        config: the split to score (val is always the one fitted on), batch size, ECE bins,
            progress bar.
        command: the command line to record in the report (default: the equivalent CLI line).

    Raises:
        ModelNotFoundError: no model or usable model card in ``run_dir``.
        DatasetError: the card's labels.csv or its images are missing, or a split is empty.
    """
    run_dir = Path(run_dir)
    split, batch_size, progress = config.split, config.batch_size, config.progress
    card = _read_card(run_dir)
    from scalpnet.model import load_model  # TensorFlow: only once the card is known good

    model = load_model(run_dir / "model.keras")
    csv, size = Path(card["dataset"]["csv"]), int(card["image_size"])
    y, probs = predict_split(model, csv, split, size, batch_size, progress)
    if split == "val":
        val_y, val_probs = y, probs
    else:
        val_y, val_probs = predict_split(model, csv, "val", size, batch_size, progress)

    sections, calibration, thresholds = evaluate_predictions(
        val_y, val_probs, y, probs, config.n_bins
    )
    if split != "test":
        fitted = "the model was trained on" if split == "train" else "thresholds were fitted on"
        sections["notes"].append(f"evaluated on the {split} split {fitted}: optimistic")
    training_command = card.get("command") or (card.get("training") or {}).get("command")
    metrics = {
        "schema": 1,
        "run": card.get("name", run_dir.name),
        "demo": bool(card.get("demo", False)),
        "split": split,
        "split_scheme": (card.get("dataset") or {}).get("split_scheme", "unknown"),
        "dataset_csv": str(csv),
        "n_images": {split: len(y), "val": len(val_y)},
        "conditions": list(KEYS),
        **sections,
        "commands": {
            "evaluate": command or default_command(run_dir, split, batch_size),
            "train": training_command,
        },
        "evaluated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }

    files = {
        "thresholds": save_thresholds(run_dir / THRESHOLDS_FILE, thresholds),
        "calibration": calibration.save(run_dir / "calibration.json"),
    }
    from scalpnet import evaluation_report

    files.update(
        evaluation_report.write_plots(run_dir, y, probs, calibration.apply(probs), metrics)
    )
    merge_json(run_dir / METRICS_FILE, metrics)
    files["metrics"] = run_dir / METRICS_FILE
    files["report"] = evaluation_report.write_report(run_dir / REPORT_FILE, metrics, files)
    return EvaluationResult(run_dir=run_dir, split=split, metrics=metrics, files=files)


def _versions() -> dict:
    import sklearn

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
    }
