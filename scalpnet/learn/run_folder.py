"""The run folder: starting it, recognising it again, and its finished files.

A finished run folder holds ``model.keras``, ``model_card.json``, ``history.csv`` (epochs
counted from 1, with a ``phase`` column), ``curves.png`` and ``logs/`` (TensorBoard). Each
file is written atomically (TensorBoard's event files are append-only logs).
"""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scalpnet import labels as labels_module
from scalpnet.data import dataset as data_module
from scalpnet.errors import RunFolderError
from scalpnet.files import atomic_path, disk_full_as_error, write_text_atomic
from scalpnet.learn.checkpoints import sha256_of, variables_bytes
from scalpnet.learn.config import (
    SCRATCH_BN_MOMENTUM,
    TrainConfig,
    TrainResult,
    fingerprint,
    pretrained,
)
from scalpnet.learn.model import save_model
from scalpnet.learn.resume import KEPT, RESUME_DIR, RunState, write_history

CARD = "model_card.json"
MODEL = "model.keras"
CURVES = "curves.png"
LOGS = "logs"
ORIGINAL_METRIC = (
    "binary_accuracy"  # the original project's "accuracy": element-wise over 10 labels
)
PREPROCESSING = (
    "RGB image (EXIF orientation applied, alpha composited on white) resized to "
    "{s}x{s} (area interpolation when shrinking, bicubic when enlarging), then median "
    "blur with a 3x3 kernel (scalpnet.data.preprocess.preprocess_image). The model takes "
    "these uint8 pixels 0-255; ResNet50's caffe normalisation (RGB->BGR, ImageNet mean "
    "subtracted) is the model's first layer."
)
DEMO_NOTE = (
    "Demo model trained on synthetic images: it recognises drawn patterns, not real "
    "scalp conditions. Never use it for any decision about a person."
)


def finished_result(run_dir: Path, stamp: str) -> TrainResult | None:
    """The result of an already complete run folder for the same training, else None."""
    card_path = run_dir / CARD
    if not (card_path.is_file() and (run_dir / MODEL).is_file()):
        return None
    card = json.loads(card_path.read_text())
    if card.get("training", {}).get("fingerprint") != stamp:
        raise RunFolderError(
            f"'{run_dir}' already holds a finished run with other settings or data; "
            "choose another --out"
        )
    return TrainResult(
        run_dir=run_dir,
        best_epoch=int(card["best_epoch"]),
        val_metrics=card["val_metrics"],
        already_complete=True,
        phases=card["training"].get("phases", []),
    )


def check_run_folder(
    run_dir: Path, state: RunState, stamp: str, config: TrainConfig, csv_path: Path, say
) -> bool:
    """True when ``run_dir`` holds an unfinished run of the same training (loads its state;
    a lost or unreadable ``state.json`` is rebuilt from the checkpoints' records).

    Raises:
        RunFolderError: it holds another run, or other files.
    """
    if state.exists():
        try:
            data = state.load()
        except (OSError, ValueError):
            data = None
        if data is not None:
            if data.get("fingerprint") != stamp:
                raise RunFolderError(
                    f"'{run_dir}' holds an unfinished run with other settings or data; resume "
                    "it with its original command, or choose another --out"
                )
            return True
    if state.dir.is_dir():
        state.rebuild(stamp, new_state(stamp, config, csv_path), say)
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunFolderError(
            f"'{run_dir}' exists and is not a ScalpNet run in progress; choose another --out"
        )
    return False


def new_state(stamp: str, config: TrainConfig, csv_path: Path) -> dict:
    """The content of a new ``state.json``: no phase finished yet."""
    return {
        "fingerprint": stamp,
        "csv": str(csv_path),
        "config": config.to_dict(),
        "created": _now(),
        "phases": {},
    }


def start_run_folder(
    run_dir: Path, state: RunState, stamp: str, config: TrainConfig, csv_path: Path
) -> None:
    """Create the run folder and its resume state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state.data = new_state(stamp, config, csv_path)
    state.save()


def find_unfinished_run(
    runs_root: str | Path, config: TrainConfig, csv_path: str | Path
) -> Path | None:
    """The most recent run folder under ``runs_root`` holding an unfinished run of the same
    training (same settings and CSV), or None. Lets ``python train.py ...`` resume a killed
    run without being told its folder (found by ``state.json``, else by a checkpoint's
    record)."""
    stamp = fingerprint(config, csv_path)
    candidates = []
    for resume_dir in Path(runs_root).glob(f"*/{RESUME_DIR}"):
        state = RunState(resume_dir.parent)
        try:
            ours = state.load().get("fingerprint") == stamp
        except (OSError, ValueError):
            ours = any(r.get("fingerprint") == stamp for r in state.records())
        if ours:
            candidates.append((resume_dir.stat().st_mtime, resume_dir.parent))
    return max(candidates)[1] if candidates else None


def final_history(history: pd.DataFrame, phase_info: list[dict]) -> pd.DataFrame:
    """Epochs counted from 1 and a ``phase`` column; columns in a stable order."""
    history = history.copy()
    history["epoch"] = history["epoch"] + 1
    history.insert(1, "phase", "")
    for info in phase_info:
        inside = history["epoch"].between(info["first_epoch"], info["last_epoch"])
        history.loc[inside, "phase"] = info["name"]
    return history.reset_index(drop=True)


def write_finished(
    run_dir: Path,
    model: keras.Model,
    history: pd.DataFrame,
    best_epoch: int,
    monitor: str,
    card: dict[str, Any],
) -> None:
    """Write the finished run folder's files, each atomically; the card last (its presence
    marks the folder complete, with ``model.keras``)."""
    with disk_full_as_error(run_dir, variables_bytes(model), KEPT):
        save_model(model, run_dir / MODEL)
        write_history(run_dir, history)
        plot_curves(history, run_dir / CURVES, best_epoch, monitor)
        write_text_atomic(run_dir / CARD, json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _split_scheme(csv_path: Path) -> str:
    """From prepare's ``prepare_report.json`` beside the CSV; else guessed from the columns."""
    report = csv_path.parent / "prepare_report.json"
    try:
        return str(json.loads(report.read_text())["split_scheme"])
    except (OSError, ValueError, KeyError):
        columns = pd.read_csv(csv_path, nrows=0).columns
        return "grouped" if "group" in columns else "unknown"


def model_card(
    config: TrainConfig,
    csv_path: Path,
    best_epoch: int,
    val_metrics: dict[str, float],
    phase_info: list[dict],
    state: RunState,
) -> dict[str, Any]:
    """The ``model_card.json`` content (keys fixed by the run-folder contract)."""
    splits = pd.read_csv(csv_path, usecols=["split"])["split"].value_counts()
    training = config.to_dict()
    training.update(
        fingerprint=state.data["fingerprint"],
        phases=phase_info,
        optimizer="Adam, cosine decay per phase (alpha 0.01)",
        loss="binary_crossentropy",
        metrics_note=(
            f"'{ORIGINAL_METRIC}' is element-wise accuracy over the 10 label cells of each "
            "image: the original project's 'accuracy' (all-negative predictions score 0.9). "
            "'top1_accuracy': argmax of the prediction equals the true class."
        ),
        initialisation=(
            "head: zero kernel, bias log(0.1/0.9)"
            + (
                ""
                if pretrained(config)
                else "; residual-branch BatchNorm gamma 0, BN momentum "
                f"{SCRATCH_BN_MOMENTUM} (from scratch)"
            )
        ),
        epochs_counted_from=1,
        distribution=state.data.get("distribution"),
        started=state.data.get("created"),
    )
    card = {
        "name": Path(config.out_dir).name,
        "created": _now(),
        "demo": bool(config.demo),
        "image_size": config.image_size,
        "labels": [
            {"key": c.key, "english": c.english, "korean": c.korean}
            for c in labels_module.CONDITIONS
        ],
        "preprocessing": PREPROCESSING.format(s=config.image_size),
        "weights": str(config.weights) if pretrained(config) else "none",
        "training": training,
        "dataset": {
            "csv": str(csv_path),
            "csv_sha256": sha256_of(csv_path),
            "split_scheme": _split_scheme(csv_path),
            "counts": {s: int(splits.get(s, 0)) for s in data_module.SPLITS},
        },
        "best_epoch": best_epoch,
        "val_metrics": val_metrics,
        "versions": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
        "git_commit": _git_commit(),
    }
    if config.demo:
        card["note"] = DEMO_NOTE
    return card


def plot_curves(history: pd.DataFrame, path: Path, best_epoch: int, monitor: str) -> Path:
    """Loss and AUC per epoch, train vs validation, phase boundaries and the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    epochs = history["epoch"].to_numpy()
    for ax, metric, title in (
        (axes[0], "loss", "Binary cross-entropy"),
        (axes[1], "auc", "AUC (macro over conditions)"),
    ):
        for column, label, style in (
            (metric, "train", "-o"),
            (f"val_{metric}", "validation", "-s"),
        ):
            if column in history:
                ax.plot(epochs, history[column].to_numpy(), style, markersize=3, label=label)
        starts = history.groupby("phase", sort=False)["epoch"].min()
        for name, first in starts.items():
            if first > epochs.min():
                ax.axvline(first - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                name,
                (first, 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=8,
                color="grey",
            )
        ax.axvline(
            best_epoch,
            color="green",
            linestyle=":",
            linewidth=1,
            label=f"best epoch ({best_epoch})",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Training curves (best epoch chosen by {monitor})")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def summary(result: TrainResult) -> str:
    """The closing lines ``train.py`` prints."""
    state = (
        "already complete; nothing trained"
        if result.already_complete
        else ("resumed and finished" if result.resumed else "finished")
    )
    if not result.chief:
        state += "; written by the chief worker"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.val_metrics.items()))
    return "\n".join(
        [
            f"run folder: {result.run_dir} ({state})",
            f"best epoch: {result.best_epoch}",
            f"validation: {metrics}",
        ]
    )
