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

The metrics themselves (arrays in, numbers out, no TensorFlow) live in ``metrics.py``;
the plots and report.md in ``report.py``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scalpnet.errors import DatasetError, ModelNotFoundError
from scalpnet.files import AGAIN, disk_full_as_error, write_json_atomic
from scalpnet.judge.calibration import Calibration
from scalpnet.judge.metrics import (
    DEFAULT_THRESHOLD,
    ECE_BINS,
    as_thresholds,
    calibration_summary,
    check_pair,
    compute_metrics,
    confusion_matrix_top1,
    f3,
    most_confused_pairs,
    pct,
    tune_thresholds,
)
from scalpnet.labels import KEYS, NUM_CLASSES

ProbsFn = Callable[[np.ndarray], np.ndarray]  # (B, S, S, 3) pixels 0-255 -> (B, 10) probs

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
            ("element-wise accuracy (original metric)", "elementwise_accuracy", pct),
            ("  same, all-negative predictor", "all_negative_elementwise_accuracy", pct),
            ("exact-match accuracy", "exact_match_accuracy", pct),
            ("top-1 accuracy (single-label)", "top1_accuracy", pct),
            ("Hamming loss", "hamming_loss", f3),
        ]
        width = 42
        lines.append(f"{'metric':<{width}}{'at 0.5':>10}{'tuned':>10}")
        for label, key, fmt in rows:
            lines.append(f"{label:<{width}}{fmt(at5[key]):>10}{fmt(tuned[key]):>10}")
        for avg in ("macro", "micro"):
            lines.append(
                f"{avg + ' F1':<{width}}{f3(at5[avg]['f1']):>10}{f3(tuned[avg]['f1']):>10}"
            )
        lines.append(f"{'macro ROC AUC':<{width}}{f3(at5['macro']['roc_auc']):>10}")
        lines.append(f"{'metric':<{width}}{'before':>10}{'after':>10}")
        for label, key in (("ECE (calibration)", "ece"), ("Brier score", "brier")):
            lines.append(f"{label:<{width}}{f3(cal['before'][key]):>10}{f3(cal['after'][key]):>10}")
        if "report" in self.files:
            lines.append(f"report: {self.files['report']}")
        return "\n".join(lines)


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
    y, raw = check_pair(y_true, probs)
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
            "thresholds": dict(zip(KEYS, map(float, as_thresholds(thresholds)), strict=True)),
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


def read_card(run_dir: Path) -> dict:
    """The run folder's model_card.json, checked to name an image size and a dataset CSV."""
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


def predict_split(
    probs_fns: Mapping[str, ProbsFn],
    csv: Path,
    split: str,
    image_size: int,
    batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels (N, 10) and each runtime's raw probabilities (N, 10) of one split, in CSV order.

    Args:
        probs_fns: runtime name -> function from (B, S, S, 3) float32 pixels 0-255 to
            (B, 10) raw probabilities; every runtime sees the same batches.

    Raises:
        DatasetError: from ``dataset.make_dataset`` (missing CSV or images, empty split).
    """
    from scalpnet.data import dataset
    from scalpnet.progress import Progress

    ds = dataset.make_dataset(
        csv, split, image_size=image_size, batch_size=batch_size, training=False
    )
    steps = int(ds.cardinality())
    labels, probs = [], {name: [] for name in probs_fns}
    with Progress(f"evaluate: predict {split}", max(steps, 0), unit="batch", show=progress) as bar:
        for x, y in ds:
            pixels = np.asarray(x, dtype=np.float32)  # (B, S, S, 3)
            for name, fn in probs_fns.items():
                probs[name].append(np.asarray(fn(pixels), dtype=np.float32))  # (B, 10)
            labels.append(np.asarray(y, dtype=np.float32))  # (B, 10)
            bar.update()
    return np.concatenate(labels), {name: np.concatenate(p) for name, p in probs.items()}


def compare_runtimes(
    y: np.ndarray, by_runtime: Mapping[str, np.ndarray], calibration, thresholds
) -> dict:
    """Headline metrics of each runtime's (N, 10) raw probabilities under the same
    calibration and thresholds, and its largest difference from the first runtime."""
    names = list(by_runtime)
    reference = calibration.apply(by_runtime[names[0]])
    out = {}
    for name in names:
        calibrated = calibration.apply(by_runtime[name])
        tuned = compute_metrics(y, calibrated, thresholds)
        at5 = compute_metrics(y, calibrated, DEFAULT_THRESHOLD)
        out[name] = {
            "top1_accuracy": tuned["top1_accuracy"],
            "macro_f1_at_tuned": tuned["macro"]["f1"],
            "macro_roc_auc": at5["macro"]["roc_auc"],
            f"max_prob_diff_vs_{names[0]}": float(np.max(np.abs(calibrated - reference))),
        }
    return out


def runtime_note(name: str, row: dict) -> str:
    """One runtime's row of :func:`compare_runtimes` as a line of the report's notes
    ("n/a" for a metric the split leaves undefined, e.g. ROC AUC with one condition)."""
    return (
        f"runtime {name}: top-1 {pct(row['top1_accuracy'])}, macro F1 at tuned "
        f"{f3(row['macro_f1_at_tuned'])}, macro ROC AUC {f3(row['macro_roc_auc'])}, "
        f"max |p - keras| {row['max_prob_diff_vs_keras']:.2e}"
    )


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
    runtimes: Mapping[str, ProbsFn] | None = None,
) -> EvaluationResult:
    """Evaluate a run folder and write its thresholds, calibration, metrics, report and plots.

    Writes into ``run_dir``: thresholds.json, calibration.json, metrics.json (merged: keys
    of other writers such as "ood" are kept), report.md and the PNGs of ``PLOT_FILES``.

    Args:
        run_dir: a folder with model.keras and model_card.json.
        config: the split to score (val is always the one fitted on), batch size, ECE bins,
            progress bar.
        command: the command line to record in the report (default: the equivalent CLI line).
        runtimes: other runtimes of the same model (name -> (B, S, S, 3) float32 pixels ->
            (B, 10) raw probabilities, e.g. ONNX Runtime ones composed by the CLI), scored
            on the split with the calibration and thresholds fitted on Keras's val outputs;
            metrics.json["runtimes"] puts them beside Keras.

    Raises:
        ModelNotFoundError: no model or usable model card in ``run_dir``.
        DatasetError: the card's labels.csv or its images are missing, or a split is empty.
        DiskFullError: the disk filled up while writing (no file is left half-written).
    """
    run_dir = Path(run_dir)
    split, batch_size, progress = config.split, config.batch_size, config.progress
    card = read_card(run_dir)
    from scalpnet.learn.model import load_model  # TensorFlow: only once the card is known good

    model = load_model(run_dir / "model.keras")
    fns = {"keras": model.predict_on_batch, **(runtimes or {})}
    csv, size = Path(card["dataset"]["csv"]), int(card["image_size"])
    y, by_runtime = predict_split(fns, csv, split, size, batch_size, progress)
    probs = by_runtime["keras"]
    if split == "val":
        val_y, val_probs = y, probs
    else:
        keras_only = {"keras": fns["keras"]}
        val_y, val = predict_split(keras_only, csv, "val", size, batch_size, progress)
        val_probs = val["keras"]

    sections, calibration, thresholds = evaluate_predictions(
        val_y, val_probs, y, probs, config.n_bins
    )
    if split != "test":
        fitted = "the model was trained on" if split == "train" else "thresholds were fitted on"
        sections["notes"].append(f"evaluated on the {split} split {fitted}: optimistic")
    if len(by_runtime) > 1:
        sections["runtimes"] = compare_runtimes(y, by_runtime, calibration, thresholds)
        sections["notes"] += [runtime_note(k, row) for k, row in sections["runtimes"].items()]
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

    kept = "the model and every file are whole (each written whole or not at all)"
    with disk_full_as_error(run_dir, None, kept, AGAIN):
        files = write_results(run_dir, metrics, thresholds, calibration, y, probs)
    return EvaluationResult(run_dir=run_dir, split=split, metrics=metrics, files=files)


def write_results(
    run_dir: Path,
    metrics: dict,
    thresholds: np.ndarray,
    calibration: Calibration,
    y: np.ndarray,
    probs: np.ndarray,
) -> dict[str, Path]:
    """thresholds.json, calibration.json, the plots, metrics.json (merged) and report.md.

    Args:
        thresholds: (10,) tuned on val; calibration: the temperatures fitted on val.
        y: (N, 10) 0/1 labels of the split scored; probs: (N, 10) its raw probabilities.

    Returns:
        name -> path of every file written.
    """
    from scalpnet.judge import report as evaluation_report

    files = {
        "thresholds": save_thresholds(run_dir / THRESHOLDS_FILE, thresholds),
        "calibration": calibration.save(run_dir / "calibration.json"),
    }
    files.update(
        evaluation_report.write_plots(run_dir, y, probs, calibration.apply(probs), metrics)
    )
    merge_json(run_dir / METRICS_FILE, metrics)
    files["metrics"] = run_dir / METRICS_FILE
    files["report"] = evaluation_report.write_report(run_dir / REPORT_FILE, metrics, files)
    return files


def _versions() -> dict:
    import sklearn

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
    }
