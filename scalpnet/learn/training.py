"""Fit a ScalpNet model in phases, resumably, and write its run folder.

Phases (see :func:`plan_phases`):

* pretrained weights: ``head`` (backbone frozen, BatchNorm in inference mode) at
  ``head_lr``, then ``finetune`` (backbone unfrozen, BatchNorm kept frozen unless
  ``train_bn``) at the lower ``finetune_lr``;
* ``weights="none"``: one ``scratch`` phase training the whole network, BatchNorm
  included, at ``head_lr`` for ``head_epochs + finetune_epochs`` epochs (a frozen
  random backbone has nothing worth protecting and learns nothing on its own).

Each phase uses a fresh Adam optimizer with a cosine learning-rate decay over the
phase's planned steps. The decay depends only on the optimizer's step counter, which
``BackupAndRestore`` restores, so a resumed run follows the same schedule.

Resume: everything needed to continue lives in ``<run>/.resume/`` (``state.json``,
per-phase ``BackupAndRestore`` folders, the best checkpoint, the weights at the end
of each finished phase). Running the same training again reads it: finished phases
are skipped, the unfinished one continues from its last finished epoch, and the
early-stopping and best-checkpoint bookkeeping is rebuilt from ``history.csv``. The
folder is deleted once the run folder is complete.

Epochs are counted from 1 in ``history.csv``, ``best_epoch`` and the progress bars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scalpnet import labels as labels_module
from scalpnet.data import dataset as data_module
from scalpnet.errors import ConfigError, RunFolderError
from scalpnet.learn import distributed
from scalpnet.learn.epoch_progress import EpochProgress
from scalpnet.learn.model import backbone_layers, build_model, save_model

PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
SCRATCH_BN_MOMENTUM = 0.9
RESUME_DIR = ".resume"
HISTORY = "history.csv"
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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained (recorded in the model card).

    Attributes:
        out_dir: the run folder to write (and to resume from).
        image_size: side S of the processed images (the pipeline never resizes).
        batch_size: images per step on each replica (device); a step of a distributed run
            takes ``batch_size x replicas`` images (the global batch).
        head_epochs / finetune_epochs: epochs per phase (upper bounds: early stopping).
        head_lr / finetune_lr: peak learning rates (cosine decay within a phase).
        dropout: before the sigmoid head.
        weights: "imagenet", "none", or a local ResNet50 no-top weights file.
        precision: None, "mixed_float16" or "mixed_bfloat16" (GPUs); the head stays float32.
        jit: compile the train step with XLA.
        seed: Python, NumPy, TensorFlow, shuffle and augmentation seed.
        patience: early-stopping patience (epochs without improvement of ``monitor``).
        monitor: history column that picks the best epoch ("val_auc", "val_loss", ...).
        train_bn: also train BatchNorm layers when fine-tuning pretrained weights.
        augment: random flips/rotation/zoom/contrast/brightness on the training split.
        cache: keep decoded images in memory after the first epoch.
        deterministic: ``tf.config.experimental.enable_op_determinism()`` (slower).
        demo: the run is the synthetic demo; the card says so.
        verbose: Keras progress output (0 silent, 1 bars, 2 one line per epoch).
        strategy: "none", "mirrored" (local GPUs) or "multiworker" (machines named by
            ``TF_CONFIG``); see :mod:`scalpnet.learn.distributed`.
        devices: which devices "mirrored" uses ("gpu:N", "0,1", or "cpu:N" to split the
            CPU for tests); None for all local GPUs.
        lr_scaling: how learning rates grow with the replicas: "linear" (x replicas),
            "sqrt" or "none".
    """

    out_dir: Path = Path("runs/run")
    image_size: int = 256
    batch_size: int = 32
    head_epochs: int = 5
    finetune_epochs: int = 30
    head_lr: float = 1e-3
    finetune_lr: float = 1e-5
    dropout: float = 0.3
    weights: str = "imagenet"
    precision: str | None = None
    jit: bool = False
    seed: int = 42
    patience: int = 10
    monitor: str = "val_auc"
    train_bn: bool = False
    augment: bool = True
    cache: bool = False
    deterministic: bool = False
    demo: bool = False
    verbose: int | str = "auto"
    strategy: str = "none"
    devices: str | None = None
    lr_scaling: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
        }


# Fields that do not change what is trained: a run may be resumed with other values.
_NOT_FINGERPRINTED = ("out_dir", "verbose")


@dataclass(frozen=True)
class Phase:
    """One ``fit`` of the plan: which layers train, for how long, at what rate."""

    name: str  # "head" | "finetune" | "scratch"
    epochs: int
    lr: float
    train_backbone: bool
    train_bn: bool


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` leaves behind."""

    run_dir: Path
    best_epoch: int  # counted from 1
    val_metrics: dict[str, float]  # the saved model on the validation split
    resumed: bool = False  # continued a killed run
    already_complete: bool = False  # the run folder was already finished; nothing trained
    epochs_run: int = 0
    phases: list[dict] = field(default_factory=list)
    # False on a non-chief worker of a multi-worker run: the chief wrote run_dir.
    chief: bool = True


# --------------------------------------------------------------------------- plan
def check_config(config: TrainConfig) -> None:
    """Raise ConfigError for settings that cannot work."""
    if config.precision not in PRECISIONS:
        raise ConfigError(
            "precision must be one of none, mixed_float16, mixed_bfloat16; "
            f"got {config.precision!r}"
        )
    if config.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {config.batch_size}")
    if config.head_epochs < 0 or config.finetune_epochs < 0:
        raise ConfigError(
            f"epochs must be >= 0, got head {config.head_epochs}, finetune {config.finetune_epochs}"
        )
    if config.head_epochs + config.finetune_epochs < 1:
        raise ConfigError("at least one epoch of training is needed")
    if config.patience < 1:
        raise ConfigError(f"patience must be at least 1, got {config.patience}")
    if config.strategy not in distributed.STRATEGIES:
        raise ConfigError(
            f"strategy must be one of {', '.join(distributed.STRATEGIES)}; got {config.strategy!r}"
        )
    distributed.lr_factor(config.lr_scaling, 1)  # raises ConfigError for an unknown rule
    if not config.monitor.startswith("val_"):
        raise ConfigError(
            f"monitor must be a validation metric such as val_auc, got {config.monitor!r}"
        )


def pretrained(config: TrainConfig) -> bool:
    """True when the backbone starts from ImageNet or a weights file, not from random."""
    return str(config.weights).lower() != "none"


def plan_phases(config: TrainConfig, lr_factor: float = 1.0) -> list[Phase]:
    """The phases to run, in order (see the module docstring).

    ``lr_factor`` multiplies the learning rates (see :func:`scalpnet.learn.distributed.lr_factor`).
    """
    head_lr, finetune_lr = config.head_lr * lr_factor, config.finetune_lr * lr_factor
    if not pretrained(config):
        epochs = config.head_epochs + config.finetune_epochs
        return [Phase("scratch", epochs, head_lr, train_backbone=True, train_bn=True)]
    phases = []
    if config.head_epochs:
        phases.append(Phase("head", config.head_epochs, head_lr, False, False))
    if config.finetune_epochs:
        phases.append(Phase("finetune", config.finetune_epochs, finetune_lr, True, config.train_bn))
    return phases


def monitor_mode(monitor: str) -> str:
    """ "min" for losses, "max" for the other metrics."""
    return "min" if monitor.endswith("loss") else "max"


def fingerprint(config: TrainConfig, csv_path: str | Path) -> str:
    """A hash of what is trained on what: equal for the same command, whatever the run folder."""
    fields = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    fields["csv"] = str(Path(csv_path).resolve())
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- model setup
def make_metrics() -> list[keras.metrics.Metric]:
    """Element-wise binary accuracy (the original's "accuracy"), AUC, precision, recall, top-1."""
    return [
        keras.metrics.BinaryAccuracy(name=ORIGINAL_METRIC),
        keras.metrics.AUC(multi_label=True, num_labels=labels_module.NUM_CLASSES, name="auc"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        # argmax(true) == argmax(predicted): top-1 accuracy for single-label images.
        keras.metrics.CategoricalAccuracy(name="top1_accuracy"),
    ]


def set_trainable(model: keras.Model, phase: Phase) -> None:
    """Freeze or unfreeze the backbone for ``phase``.

    A layer with ``trainable=False`` in Keras 3 also runs in inference mode, so a frozen
    BatchNorm uses its moving statistics. Keeping BatchNorm frozen while fine-tuning
    pretrained weights is the default: batch statistics from small batches (16-32
    images, all of one dataset) would overwrite the ImageNet statistics with noisy ones.
    """
    for layer in backbone_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = phase.train_backbone and phase.train_bn
        else:
            layer.trainable = phase.train_backbone


def initialise_for_training(model: keras.Model, config: TrainConfig) -> None:
    """Initialisations that make a fresh model learn faster (called before the first epoch).

    * Head: zero kernel and bias log(p / (1 - p)) with p = 1/10, the label prior: every
      output starts at 0.1, so the first steps do not spend themselves unlearning large
      random logits.
    * From scratch only: zero gamma in the last BatchNorm of every residual block
      (Goyal et al. 2017), so each block starts as its shortcut and the deep network
      trains like a shallow one at first; BatchNorm momentum 0.9 instead of 0.99, so the
      moving statistics used at validation keep up with a short run.
      Measured here (64 px synthetic set, 1,600 images, Adam 1e-3): validation top-1
      after 8 epochs 0.49 with these, 0.23 without (both before the training rows were
      mixed ahead of the cache in dataset.py, so both figures are low; the gap is what
      this measures).
    """
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    prior = 1.0 / labels_module.NUM_CLASSES
    head.set_weights([np.zeros_like(kernel), np.full_like(bias, np.log(prior / (1 - prior)))])
    if pretrained(config):
        return
    for layer in backbone_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BN_MOMENTUM
            if layer.name.endswith("_3_bn"):  # convN_blockM_3_bn: the end of a residual branch
                gamma, *rest = layer.get_weights()
                layer.set_weights([np.zeros_like(gamma), *rest])


def compile_for_phase(
    model: keras.Model, phase: Phase, config: TrainConfig, steps_per_epoch: int
) -> None:
    """Set trainable layers, then compile with a fresh Adam and a cosine decay over the phase."""
    set_trainable(model, phase)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=phase.lr,
        decay_steps=max(1, phase.epochs * steps_per_epoch),
        alpha=0.01,
    )
    # mixed_float16: compile wraps the optimizer in a LossScaleOptimizer by itself.
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=make_metrics(),
        jit_compile=bool(config.jit),
    )


# --------------------------------------------------------------------------- resume state
class _RunState:
    """``<run>/.resume/state.json``: the fingerprint and the finished phases."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir / RESUME_DIR
        self.path = self.dir / "state.json"
        self.data: dict[str, Any] = {}

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, Any]:
        self.data = json.loads(self.path.read_text())
        return self.data

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)

    def backup_dir(self, phase: Phase) -> Path:
        return self.dir / f"backup_{phase.name}"

    def phase_weights(self, phase: Phase) -> Path:
        return self.dir / f"after_{phase.name}.weights.h5"

    @property
    def best_weights(self) -> Path:
        return self.dir / "best.weights.h5"


def read_history(run_dir: Path) -> pd.DataFrame:
    """``history.csv`` as written so far; one row per epoch (a re-run epoch keeps its last row).

    The ``epoch`` column is Keras's 0-based epoch index while training; :func:`train`
    rewrites the file counted from 1, with a ``phase`` column, when the run finishes (such
    a file is read back 0-based, so finishing again is harmless).
    """
    path = run_dir / HISTORY
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    history = pd.read_csv(path, on_bad_lines="skip")
    if history.empty or "epoch" not in history:
        return pd.DataFrame()
    history = history.dropna(subset=["epoch"])
    history["epoch"] = history["epoch"].astype(int)
    if "phase" in history:  # already rewritten by a finish that was then interrupted
        history = history.drop(columns="phase").assign(epoch=history["epoch"] - 1)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from the best value and wait count of an interrupted fit."""

    def __init__(self, *, resume_best=None, resume_wait=0, resume_best_epoch=0, **kwargs):
        super().__init__(**kwargs)
        self._resume = (resume_best, resume_wait, resume_best_epoch)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        best, wait, best_epoch = self._resume
        if best is not None:
            self.best, self.wait, self.best_epoch = best, wait, best_epoch


class _LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (history.csv, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            optimizer = self.model.optimizer
            lr = optimizer.learning_rate
            value = lr(optimizer.iterations) if callable(lr) else lr
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(value))


def _phase_progress(
    history: pd.DataFrame, start: int, config: TrainConfig
) -> tuple[int, float | None, int, int]:
    """(epochs done in this phase, best monitor value there, wait since it, best epoch idx)."""
    rows = history[history["epoch"] >= start] if not history.empty else history
    if rows.empty or config.monitor not in rows:
        return len(rows), None, 0, 0
    values = rows[config.monitor].to_numpy(dtype=float)
    pick = np.nanargmin if monitor_mode(config.monitor) == "min" else np.nanargmax
    best_at = int(pick(values))
    return (
        len(rows),
        float(values[best_at]),
        len(rows) - 1 - best_at,
        int(rows["epoch"].iloc[best_at]),
    )


def _best_so_far(history: pd.DataFrame, monitor: str) -> float | None:
    if history.empty or monitor not in history:
        return None
    values = history[monitor].to_numpy(dtype=float)
    return float(np.nanmin(values) if monitor_mode(monitor) == "min" else np.nanmax(values))


# --------------------------------------------------------------------------- one phase
def make_callbacks(
    run_dir: Path, state: _RunState, phase: Phase, start: int, config: TrainConfig
) -> list[keras.callbacks.Callback]:
    """Callbacks for one phase, in the order their end-of-epoch work must happen.

    Best checkpoint, early stopping, TensorBoard and history.csv are written before the
    backup: a kill between them makes the resumed run repeat that epoch (its history
    row is then replaced), never skip one.
    """
    history = read_history(run_dir)
    _, phase_best, wait, best_epoch = _phase_progress(history, start, config)
    mode = monitor_mode(config.monitor)
    say = None if config.verbose == 0 else print
    return [
        _LearningRateLogger(),
        EpochProgress(phase.name, show=config.verbose == 2, say=say),
        keras.callbacks.ModelCheckpoint(
            state.best_weights,
            monitor=config.monitor,
            mode=mode,
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=_best_so_far(history, config.monitor),
        ),
        ResumableEarlyStopping(
            monitor=config.monitor,
            mode=mode,
            patience=config.patience,
            restore_best_weights=True,
            resume_best=phase_best,
            resume_wait=wait,
            resume_best_epoch=best_epoch,
        ),
        *_tensorboard(run_dir / LOGS),
        keras.callbacks.CSVLogger(str(run_dir / HISTORY), append=True),
        keras.callbacks.BackupAndRestore(str(state.backup_dir(phase)), delete_checkpoint=False),
    ]


def _tensorboard(log_dir: Path) -> list[keras.callbacks.Callback]:
    """The TensorBoard callback, or none (with a note) when the package is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        print("note: no TensorBoard logs ('pip install tensorboard' to get them in logs/)")
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False)]


def phase_finished(history: pd.DataFrame, phase: Phase, start: int, config: TrainConfig) -> bool:
    """True when history.csv shows the phase ran all its epochs or early stopping fired."""
    done, best, wait, _ = _phase_progress(history, start, config)
    return done >= phase.epochs or (best is not None and wait >= config.patience)


def fit_phase(
    model: keras.Model,
    phase: Phase,
    start: int,
    train_data: tf.data.Dataset,
    steps: int,
    val_data: tf.data.Dataset,
    callbacks: list[keras.callbacks.Callback],
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
    phase_index: int = 0,
) -> None:
    """Run (or continue) one phase's epochs ``start .. start + phase.epochs - 1`` with ``fit``.

    ``train_data`` is the endless training stream of :func:`scalpnet.data.dataset.make_dataset`
    and ``steps`` its batches per epoch. This is the one place that iterates over
    batches; under MultiWorkerMirroredStrategy, where Keras's ``fit`` fails,
    :func:`scalpnet.learn.distributed.custom_fit` runs the same epochs with the same callbacks.
    """
    # BackupAndRestore sets model._initial_epoch when it restores, and Keras never
    # resets it: clear it so a later phase starts at its own first epoch.
    model._initial_epoch = None
    if distributed.is_multiworker(strategy):
        distributed.custom_fit(
            model,
            train_data,
            steps_per_epoch=steps,
            strategy=strategy,
            make_metrics=make_metrics,
            validation_data=val_data,
            epochs=start + phase.epochs,
            initial_epoch=start,
            callbacks=callbacks,
            verbose=config.verbose,
            jit=config.jit,
            phase_index=phase_index,
        )
        return
    model.fit(
        train_data,  # endless: one iterator for the whole phase (see dataset._epochs)
        steps_per_epoch=steps,
        validation_data=val_data,
        epochs=start + phase.epochs,
        initial_epoch=start,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself (seeded), every epoch
        verbose=config.verbose,
    )


# --------------------------------------------------------------------------- the whole run
def train(
    config: TrainConfig,
    csv_path: str | Path,
    *,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainResult:
    """Train on ``labels.csv`` and write the run folder ``config.out_dir``.

    Running it again with the same config and CSV continues a killed run, or returns the
    finished one untouched.

    Returns:
        TrainResult with the run folder, the best epoch and the saved model's
        validation metrics.

    Raises:
        ConfigError: impossible settings.
        RunFolderError: ``out_dir`` holds something else (another run, other files).
        DatasetError: see :func:`scalpnet.data.dataset.make_dataset`.
        WeightsUnavailableError: the requested weights cannot be loaded.

    ``strategy`` (default: made from ``config.strategy``, first, before any TensorFlow
    work): model and optimizer are built in its scope; a non-chief worker of a multi-worker
    run writes into a temporary folder of its own, deleted at the end (see
    :mod:`scalpnet.learn.distributed`).
    """
    check_config(config)
    if strategy is None:
        strategy = distributed.make_strategy(config.strategy, config.devices)
    n_replicas = distributed.replicas(strategy)
    distributed.check_jit(config.jit, n_replicas)
    csv_path = Path(csv_path).resolve()
    stamp = fingerprint(config, csv_path)
    chief_dir = Path(config.out_dir)
    if not distributed.is_chief(strategy):
        config = dataclasses.replace(config, out_dir=distributed.worker_run_dir(stamp, strategy))
    run_dir = Path(config.out_dir)
    print_ = (lambda *a: None) if config.verbose == 0 else print
    state = _RunState(run_dir)

    finished = _finished_result(run_dir, stamp)
    if finished is not None:
        return finished
    # Everything a user can get wrong (run folder, data, weights) is checked before the
    # run folder is created, so a failed start leaves nothing behind.
    resumed = _check_run_folder(run_dir, state, stamp)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    make = dict(
        image_size=config.image_size, batch_size=config.batch_size * n_replicas, seed=config.seed
    )
    train_data = data_module.make_dataset(
        csv_path,
        "train",
        training=True,
        cache=config.cache,
        augment=data_module.AugmentConfig() if config.augment else None,
        **make,
    )
    val_data = data_module.make_dataset(csv_path, "val", cache=config.cache, **make)
    steps = data_module.steps_per_epoch(csv_path, "train", make["batch_size"])

    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    with scope():
        model = build_model(
            config.image_size,
            weights=config.weights,
            dropout=config.dropout,
            dtype_policy=config.precision,
        )
        # Weights of an interrupted run come back from its checkpoints; a fresh start or a
        # restart before the first backup begins from the same seeded initialisation.
        initialise_for_training(model, config)
    if n_replicas > 1:
        distributed.synchronize_batchnorm(model)  # replicas' moving statistics stay equal
    if resumed:
        print_(f"resuming the unfinished run in {run_dir}")
    else:
        _start_run_folder(run_dir, state, stamp, config, csv_path)
    state.data["distribution"] = {
        "strategy": config.strategy,
        "replicas": n_replicas,
        "global_batch_size": config.batch_size * n_replicas,
        "lr_factor": distributed.lr_factor(config.lr_scaling, n_replicas),
        "synchronized_batchnorm": n_replicas > 1,
    }
    phases = plan_phases(config, state.data["distribution"]["lr_factor"])
    start, epochs_run, previous = 0, 0, None
    for index, phase in enumerate(phases):
        done = state.data["phases"].get(phase.name)
        if done is not None:
            start, previous = done["end"], phase
            continue
        if previous is not None:
            model.load_weights(state.phase_weights(previous))
        history = read_history(run_dir)
        if not phase_finished(history, phase, start, config):
            with scope():
                compile_for_phase(model, phase, config, steps)
            callbacks = make_callbacks(run_dir, state, phase, start, config)
            before = len(history)
            fit_phase(
                model, phase, start, train_data, steps, val_data, callbacks, config, strategy, index
            )
            epochs_run += len(read_history(run_dir)) - before
        end = start + len(_phase_rows(read_history(run_dir), start))
        _load_best(model, state)
        model.save_weights(state.phase_weights(phase))
        state.data["phases"][phase.name] = {"start": start, "end": end}
        state.save()
        shutil.rmtree(state.backup_dir(phase), ignore_errors=True)
        start, previous = end, phase

    result = _finish(
        model, config, csv_path, state, phases, val_data, resumed, epochs_run, strategy
    )
    if run_dir != chief_dir:  # a non-chief worker: its copy of the run is not kept
        shutil.rmtree(run_dir, ignore_errors=True)
        result = dataclasses.replace(result, run_dir=chief_dir, chief=False)
    return result


def _phase_rows(history: pd.DataFrame, start: int) -> pd.DataFrame:
    return history[history["epoch"] >= start] if not history.empty else history


def _load_best(model: keras.Model, state: _RunState, fallback: Path | None = None) -> None:
    """Load the best checkpoint so far (the next phase starts from it).

    Without one (the monitored value was never finite), or if it cannot be read (a kill
    mid-write), ``fallback`` weights are loaded when given, else the current ones kept.
    """
    for path in (state.best_weights, fallback):
        if path is not None and path.is_file():
            try:
                model.load_weights(path)
                return
            except (OSError, ValueError) as exc:
                print(f"warning: could not read '{path}' ({exc})")


def _finished_result(run_dir: Path, stamp: str) -> TrainResult | None:
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


def _check_run_folder(run_dir: Path, state: _RunState, stamp: str) -> bool:
    """True when ``run_dir`` holds an unfinished run of the same training (loads its state).

    Raises:
        RunFolderError: it holds another run, or other files.
    """
    if state.exists():
        if state.load().get("fingerprint") != stamp:
            raise RunFolderError(
                f"'{run_dir}' holds an unfinished run with other settings or data; resume it "
                "with its original command, or choose another --out"
            )
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunFolderError(
            f"'{run_dir}' exists and is not a ScalpNet run in progress; choose another --out"
        )
    return False


def _start_run_folder(
    run_dir: Path, state: _RunState, stamp: str, config: TrainConfig, csv_path: Path
) -> None:
    """Create the run folder and its resume state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state.data = {
        "fingerprint": stamp,
        "csv": str(csv_path),
        "config": config.to_dict(),
        "created": _now(),
        "phases": {},
    }
    state.save()


def find_unfinished_run(
    runs_root: str | Path, config: TrainConfig, csv_path: str | Path
) -> Path | None:
    """The most recent run folder under ``runs_root`` holding an unfinished run of the same
    training (same settings and CSV), or None. Lets ``python train.py ...`` resume a killed
    run without being told its folder."""
    stamp = fingerprint(config, csv_path)
    candidates = []
    for state_path in Path(runs_root).glob(f"*/{RESUME_DIR}/state.json"):
        try:
            data = json.loads(state_path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("fingerprint") == stamp:
            candidates.append((state_path.stat().st_mtime, state_path.parent.parent))
    return max(candidates)[1] if candidates else None


# --------------------------------------------------------------------------- run folder
def _finish(
    model: keras.Model,
    config: TrainConfig,
    csv_path: Path,
    state: _RunState,
    phases: list[Phase],
    val_data: tf.data.Dataset,
    resumed: bool,
    epochs_run: int,
    strategy: tf.distribute.Strategy | None,
) -> TrainResult:
    """Save the best model, rewrite history.csv, draw curves, write the card, clean up."""
    run_dir = Path(config.out_dir)
    _load_best(model, state, fallback=state.phase_weights(phases[-1]))
    history = read_history(run_dir)
    phase_info = []
    for phase in phases:
        span = state.data["phases"][phase.name]
        phase_info.append(
            {
                **dataclasses.asdict(phase),
                "first_epoch": span["start"] + 1,
                "last_epoch": span["end"],
                "epochs_run": span["end"] - span["start"],
            }
        )
    history = _final_history(history, phase_info)
    best_row = history.iloc[
        int(
            history[config.monitor].idxmin()
            if monitor_mode(config.monitor) == "min"
            else history[config.monitor].idxmax()
        )
    ]
    best_epoch = int(best_row["epoch"])

    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    with scope():
        model.compile(loss=keras.losses.BinaryCrossentropy(), metrics=make_metrics())
    if distributed.is_multiworker(strategy):
        raw = distributed.evaluate(
            model, val_data, strategy=strategy, make_metrics=make_metrics, final_check=10**9
        )
    else:
        raw = model.evaluate(val_data, verbose=0, return_dict=True)
    val_metrics = {k: float(v) for k, v in raw.items()}

    save_model(model, run_dir / MODEL)
    _write_atomic(run_dir / HISTORY, history.to_csv(index=False))
    plot_curves(history, run_dir / CURVES, best_epoch, config.monitor)
    card = model_card(config, csv_path, best_epoch, val_metrics, phase_info, state)
    _write_atomic(run_dir / CARD, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    shutil.rmtree(state.dir, ignore_errors=True)
    return TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        val_metrics=val_metrics,
        resumed=resumed,
        epochs_run=epochs_run,
        phases=phase_info,
    )


def _final_history(history: pd.DataFrame, phase_info: list[dict]) -> pd.DataFrame:
    """Epochs counted from 1 and a ``phase`` column; columns in a stable order."""
    history = history.copy()
    history["epoch"] = history["epoch"] + 1
    history.insert(1, "phase", "")
    for info in phase_info:
        inside = history["epoch"].between(info["first_epoch"], info["last_epoch"])
        history.loc[inside, "phase"] = info["name"]
    return history.reset_index(drop=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    state: _RunState,
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
            "csv_sha256": _sha256(csv_path),
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
    fig.savefig(path, dpi=110)
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
