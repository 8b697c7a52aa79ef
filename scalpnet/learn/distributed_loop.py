"""The custom training loop for strategies Keras's ``model.fit`` cannot run under.

Keras 3's ``fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras issue
20585). :func:`custom_fit` runs the same epochs as ``fit``: per-replica train steps under
``strategy.run``, the loss of each slice summed and divided by the global batch (so the
all-reduced gradients are those of the mean loss, as on one device), and the same Keras
callbacks with the same logs. :func:`evaluate` is ``model.evaluate`` under a strategy.
Strategies, sharding and the agreement checks between workers are
:mod:`scalpnet.learn.distributed`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import tensorflow as tf

from scalpnet.learn.distributed import check_agreement, shard_by_data


class _Steps:
    """Per-replica train/test steps and their metrics, built in ``strategy.scope()``."""

    def __init__(
        self,
        model: keras.Model,
        strategy: tf.distribute.Strategy,
        make_metrics: Callable[[], list[keras.metrics.Metric]],
        jit: bool,
    ):
        self.model = model
        self.strategy = strategy
        loss = model.loss
        # The compiled loss, per example: summed here and divided by the global count.
        self.per_example = type(loss).from_config({**loss.get_config(), "reduction": None})
        with strategy.scope():
            self.metrics = [keras.metrics.Mean(name="loss"), *make_metrics()]
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
        # As in Keras's fit: the per-replica step (XLA-compiled with --jit) is called from
        # a graph that also takes the next batch from the iterator, so batches are split
        # and placed on the replicas inside TensorFlow, not from Python.
        train_step = tf.function(self._train, jit_compile=jit, reduce_retracing=True)
        test_step = tf.function(self._test, jit_compile=jit, reduce_retracing=True)
        self.train_fn = tf.function(lambda iterator: train_step(next(iterator)))
        self.test_fn = tf.function(lambda iterator: test_step(next(iterator)))
        # Reading a metric reduces its per-replica state: a collective under multiworker,
        # far cheaper inside a graph than eagerly.
        self._results = tf.function(lambda: {m.name: m.result() for m in self.metrics})
        self._loss = tf.function(lambda: self.metrics[0].result())

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset_state()

    def results(self) -> dict[str, float]:
        """Metric values reduced over all replicas (a collective under multiworker)."""
        return {k: float(v) for k, v in self._results().items()}

    def loss(self) -> float:
        """The running mean loss, reduced over all replicas."""
        return float(self._loss())

    def _update(self, labels, probs, per_example, count) -> None:
        self.metrics[0].update_state(tf.reduce_mean(per_example), sample_weight=count)
        for metric in self.metrics[1:]:
            metric.update_state(labels, probs)

    def _replica_train(self, images, labels):
        # images (b, S, S, 3) uint8, labels (b, 10): this replica's slice of the batch.
        model, optimizer = self.model, self.model.optimizer
        count = tf.cast(tf.shape(images)[0], tf.float32)
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = self.per_example(labels, probs)  # (b,)
            # Sum over the slice / global batch: the all-reduced (summed) gradients are
            # then the gradient of the mean loss over the global batch, as on one device.
            loss = tf.reduce_sum(per_example) / tf.maximum(total, 1.0)
            if model.losses:
                loss += tf.add_n(model.losses) / float(self.strategy.num_replicas_in_sync)
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        # Keras all-reduces (sums) the gradients over the replicas.
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        self._update(labels, probs, per_example, count)

    def _replica_test(self, images, labels):
        count = tf.cast(tf.shape(images)[0], tf.float32)
        probs = self.model(images, training=False)
        self._update(labels, probs, self.per_example(labels, probs), count)

    def _train(self, batch):
        self.strategy.run(self._replica_train, args=batch)

    def _test(self, batch):
        self.strategy.run(self._replica_test, args=batch)

    def evaluate(self, batches, steps: int) -> dict[str, float]:
        """Metrics over the next ``steps`` batches of an iterator of a distributed dataset."""
        self.reset()
        for _ in range(steps):
            self.test_fn(batches)
        return self.results()


def _iterator(strategy: tf.distribute.Strategy, data: tf.data.Dataset):
    """An iterator over ``data``, sharded by data and distributed over the replicas."""
    return iter(strategy.experimental_distribute_dataset(shard_by_data(data)))


def _steps(data: tf.data.Dataset) -> int:
    """Batches per epoch; our datasets (lists of files) always know it."""
    steps = int(data.cardinality())
    if steps < 0:
        raise ValueError("the custom training loop needs a dataset of known, finite length")
    return steps


def _verbosity(verbose: int | str) -> int:
    return 1 if verbose == "auto" else int(verbose)


def custom_fit(
    model: keras.Model,
    train_data: tf.data.Dataset,
    *,
    strategy: tf.distribute.Strategy,
    make_metrics: Callable[[], list[keras.metrics.Metric]],
    steps_per_epoch: int | None = None,
    validation_data: tf.data.Dataset | None = None,
    epochs: int = 1,
    initial_epoch: int = 0,
    callbacks: Iterable[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    jit: bool = False,
    phase_index: int = 0,
) -> keras.callbacks.History:
    """``model.fit`` for strategies it cannot run under: a loop of ``strategy.run`` steps.

    ``train_data``: an endless dataset with ``steps_per_epoch`` batches per epoch (as
    ``scalpnet.data.dataset.make_dataset`` makes for training), or a finite one (one pass per
    epoch, ``steps_per_epoch`` None). One iterator per split serves every epoch (see
    ``scalpnet.data.dataset._epochs`` for why).

    The model must be compiled (its optimizer and loss are used). Epochs are absolute as
    in ``fit`` (``initial_epoch .. epochs - 1``); the callbacks get the same calls and
    logs (``loss``, the metrics of ``make_metrics()``, their ``val_`` twins), so
    checkpointing, early stopping, CSV/TensorBoard logging and ``BackupAndRestore``
    (which may move the first epoch forward) behave as under ``fit``.

    Every worker must call it with the same arguments; ``phase_index`` and the restored
    first epoch are checked to agree across workers before any step.
    """
    verbose = _verbosity(verbose)
    if steps_per_epoch is None:
        train_data, steps = train_data.repeat(), _steps(train_data)
    else:
        steps = steps_per_epoch
    train_batches = _iterator(strategy, train_data)
    val_steps = _steps(validation_data) if validation_data is not None else 0
    val_batches = _iterator(strategy, validation_data.repeat()) if val_steps else None
    run = _Steps(model, strategy, make_metrics, jit)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    first = model._initial_epoch or initial_epoch
    check_agreement(strategy, "the phase and epoch to resume at", phase_index * 100_000 + first)
    logs: dict[str, float] = {}
    for epoch in range(first, epochs):
        run.reset()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            run.train_fn(train_batches)
            # The progress bar shows the running loss; one small collective per step.
            batch_logs = {"loss": run.loss()} if verbose == 1 else {}
            callback_list.on_train_batch_end(step, batch_logs)
        logs = run.results()
        if val_batches is not None:
            logs.update({f"val_{k}": v for k, v in run.evaluate(val_batches, val_steps).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history


def evaluate(
    model: keras.Model,
    data: tf.data.Dataset,
    *,
    strategy: tf.distribute.Strategy,
    make_metrics: Callable[[], list[keras.metrics.Metric]],
    final_check: int | None = None,
) -> dict[str, float]:
    """``model.evaluate(data, return_dict=True)`` under a strategy (loss from ``model.loss``).

    ``final_check``: a value checked to agree across workers first (see
    :func:`check_agreement`), e.g. a marker that every worker is at the final evaluation.
    """
    if final_check is not None:
        check_agreement(strategy, "the phase and epoch to resume at", final_check)
    run = _Steps(model, strategy, make_metrics, jit=False)
    return run.evaluate(_iterator(strategy, data), _steps(data))
