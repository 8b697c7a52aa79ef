"""Fit a ScalpNet model in phases, resumably, and write its run folder.

The phases are planned in :mod:`scalpnet.learn.config`. Each phase uses a fresh Adam
optimizer with a cosine learning-rate decay over the phase's planned steps; the decay
depends only on the optimizer's step counter, which the backups restore, so a resumed run
follows the same schedule.

Resume: everything needed to continue lives in ``<run>/.resume/`` (see
:mod:`scalpnet.learn.resume`). Running the same training again reads it: finished phases
are skipped, the unfinished one continues from its newest usable backup (a damaged one
is reported and the previous one used), and the early-stopping and best-checkpoint
bookkeeping is rebuilt from ``history.csv``. The folder is deleted once the run folder
is complete (see :mod:`scalpnet.learn.run_folder`).

Epochs are counted from 1 in ``history.csv``, ``best_epoch`` and the progress bars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from scalpnet import labels as labels_module
from scalpnet.data import dataset as data_module
from scalpnet.learn import checkpoints, distributed, distributed_loop, resume, run_folder
from scalpnet.learn.config import (
    SCRATCH_BN_MOMENTUM,
    Phase,
    TrainConfig,
    TrainResult,
    check_config,
    fingerprint,
    monitor_mode,
    plan_phases,
    pretrained,
)
from scalpnet.learn.epoch_progress import EpochProgress
from scalpnet.learn.model import backbone_layers, build_model
from scalpnet.learn.resume import RunState, read_history


# --------------------------------------------------------------------------- model setup
def make_metrics() -> list[keras.metrics.Metric]:
    """Element-wise binary accuracy (the original's "accuracy"), AUC, precision, recall, top-1."""
    return [
        keras.metrics.BinaryAccuracy(name=run_folder.ORIGINAL_METRIC),
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


# --------------------------------------------------------------------------- one phase
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


def make_callbacks(
    run_dir: Path,
    state: RunState,
    phase: Phase,
    start: int,
    config: TrainConfig,
    meta: dict,
    best: float | None,
) -> list[keras.callbacks.Callback]:
    """Callbacks for one phase, in the order their end-of-epoch work must happen.

    Best checkpoint, early stopping, TensorBoard and history.csv are written before the
    backup: a kill between them makes the resumed run repeat that epoch (its history
    row is then replaced), never skip one. ``meta``: what every checkpoint records
    (:func:`scalpnet.learn.checkpoints.identity` and the phase); ``best``: the best
    ``monitor`` value before this fit.
    """
    history = read_history(run_dir)
    _, phase_best, wait, best_epoch = resume.phase_progress(history, start, config)
    say = None if config.verbose == 0 else print
    return [
        _LearningRateLogger(),
        EpochProgress(phase.name, show=config.verbose == 2, say=say),
        resume.BestCheckpoint(state.bests, meta, config.monitor, best),
        ResumableEarlyStopping(
            monitor=config.monitor,
            mode=monitor_mode(config.monitor),
            patience=config.patience,
            restore_best_weights=True,
            resume_best=phase_best,
            resume_wait=wait,
            resume_best_epoch=best_epoch,
        ),
        *_tensorboard(run_dir / run_folder.LOGS),
        resume.HistoryLogger(run_dir, history),
        resume.Backup(state.backups(phase), meta),
    ]


def _tensorboard(log_dir: Path) -> list[keras.callbacks.Callback]:
    """The TensorBoard callback, or none (with a note) when the package is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        print("note: no TensorBoard logs ('pip install tensorboard' to get them in logs/)")
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False)]


def fit_phase(
    model: keras.Model,
    phase: Phase,
    start: int,
    first: int,
    train_data: tf.data.Dataset,
    steps: int,
    val_data: tf.data.Dataset,
    callbacks: list[keras.callbacks.Callback],
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
    phase_index: int = 0,
) -> None:
    """Run one phase's epochs ``first .. start + phase.epochs - 1`` with ``fit`` (``start``:
    the phase's first epoch; ``first``: where a resumed phase continues).

    ``train_data`` is the endless training stream of :func:`scalpnet.data.dataset.make_dataset`
    and ``steps`` its batches per epoch. This is the one place that iterates over
    batches; under MultiWorkerMirroredStrategy, where Keras's ``fit`` fails,
    :func:`scalpnet.learn.distributed_loop.custom_fit` runs the same epochs with the same callbacks.
    """
    model._initial_epoch = None  # the first epoch is ``start``, never Keras's own restore
    if distributed.is_multiworker(strategy):
        distributed_loop.custom_fit(
            model,
            train_data,
            steps_per_epoch=steps,
            strategy=strategy,
            make_metrics=make_metrics,
            validation_data=val_data,
            epochs=start + phase.epochs,
            initial_epoch=first,
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
        initial_epoch=first,
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
        DiskFullError: a save found the disk full (the last good checkpoint is kept).
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
    say = (lambda *a: None) if config.verbose == 0 else (lambda *a: print(*a, flush=True))
    state = RunState(run_dir)

    finished = run_folder.finished_result(run_dir, stamp)
    if finished is not None:
        return finished
    # Everything a user can get wrong (run folder, data, weights) is checked before the
    # run folder is created, so a failed start leaves nothing behind.
    resumed = run_folder.check_run_folder(run_dir, state, stamp, config, csv_path, say)
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
        say(f"resuming the unfinished run in {run_dir}")
    else:
        run_folder.start_run_folder(run_dir, state, stamp, config, csv_path)
    state.data["distribution"] = {
        "strategy": config.strategy,
        "replicas": n_replicas,
        "global_batch_size": config.batch_size * n_replicas,
        "lr_factor": distributed.lr_factor(config.lr_scaling, n_replicas),
        "synchronized_batchnorm": n_replicas > 1,
    }
    expected = checkpoints.identity(model, stamp, config.image_size)
    phases = plan_phases(config, state.data["distribution"]["lr_factor"])
    _forget_unusable_phases(state, phases, expected, say)
    start, epochs_run, previous = 0, 0, None
    for index, phase in enumerate(phases):
        done = state.data["phases"].get(phase.name)
        if done is not None:
            start, previous = done["end"], phase
            continue
        if previous is not None:
            model.load_weights(state.phase_weights(previous))
        with scope():
            compile_for_phase(model, phase, config, steps)
            first, best = resume.resume_phase(
                model, state, phase, start, expected, config, strategy, say
            )
        history = read_history(run_dir)
        if not resume.phase_finished(history, phase, start, config):
            meta = {**expected, "phase": phase.name}
            callbacks = make_callbacks(run_dir, state, phase, start, config, meta, best)
            before = len(history)
            fit_phase(
                model, phase, start, first, train_data, steps, val_data, callbacks, config,
                strategy, index,
            )  # fmt: skip
            epochs_run += len(read_history(run_dir)) - before
        end = start + len(resume.phase_rows(read_history(run_dir), start))
        _load_best(model, state, expected, say)
        checkpoints.save(
            model,
            state.phase_weights(phase),
            {**expected, "phase": phase.name, "phase_start": start, "phase_end": end,
             "epochs_done": end},
            kept=f"the backups of phase {phase.name} are kept",
        )  # fmt: skip
        state.data["phases"][phase.name] = {"start": start, "end": end}
        state.save()
        state.backups(phase).remove_after(-1)
        start, previous = end, phase

    result = _finish(
        model, config, csv_path, state, phases, val_data, resumed, epochs_run, strategy, expected
    )
    if run_dir != chief_dir:  # a non-chief worker: its copy of the run is not kept
        shutil.rmtree(run_dir, ignore_errors=True)
        result = dataclasses.replace(result, run_dir=chief_dir, chief=False)
    return result


def _forget_unusable_phases(state: RunState, phases: list[Phase], expected: dict, say) -> None:
    """A finished phase whose handed-on weights are unusable is run again (and the ones
    after it): reported in one line."""
    for phase in reversed(phases):
        done = state.data["phases"].get(phase.name)
        if done is None:
            continue
        _, why = checkpoints.read(state.phase_weights(phase), expected)
        if why is None:
            return
        say(
            f"the weights after phase {phase.name} are unusable ({why}): running phase "
            f"{phase.name} again ({done['end'] - done['start']} epoch(s))"
        )
        del state.data["phases"][phase.name]
        history = read_history(state.run_dir)
        resume.write_history(state.run_dir, history[history["epoch"] < done["start"]])
        state.bests.remove_after(done["start"])
        state.save()


def _load_best(model: keras.Model, state: RunState, expected: dict, say) -> int | None:
    """Load the newest usable best checkpoint (the next phase starts from it); its epochs
    done, or None (the monitored value was never finite: the current weights stay)."""
    best = state.bests.newest(expected, report=say)
    if best is None:
        return None
    model.load_weights(best.weights)  # the model's variables (the optimizer is the phase's)
    return best.epochs_done


def _finish(
    model: keras.Model,
    config: TrainConfig,
    csv_path: Path,
    state: RunState,
    phases: list[Phase],
    val_data: tf.data.Dataset,
    resumed: bool,
    epochs_run: int,
    strategy: tf.distribute.Strategy | None,
    expected: dict,
) -> TrainResult:
    """Evaluate the best weights, write the run folder, remove the resume state."""
    run_dir = Path(config.out_dir)
    best_epoch = _load_best(model, state, expected, print if config.verbose else lambda _: None)
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
    history = run_folder.final_history(history, phase_info)
    if best_epoch is None:  # never a finite value: the last weights were kept
        best_epoch = int(history["epoch"].iloc[-1])

    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    with scope():
        model.compile(loss=keras.losses.BinaryCrossentropy(), metrics=make_metrics())
    if distributed.is_multiworker(strategy):
        raw = distributed_loop.evaluate(
            model, val_data, strategy=strategy, make_metrics=make_metrics, final_check=10**9
        )
    else:
        raw = model.evaluate(val_data, verbose=0, return_dict=True)
    val_metrics = {k: float(v) for k, v in raw.items()}
    card = run_folder.model_card(config, csv_path, best_epoch, val_metrics, phase_info, state)
    run_folder.write_finished(run_dir, model, history, best_epoch, config.monitor, card)
    resume.clear(state)
    return TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        val_metrics=val_metrics,
        resumed=resumed,
        epochs_run=epochs_run,
        phases=phase_info,
    )
