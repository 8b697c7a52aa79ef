"""Training on several devices or machines with ``tf.distribute``.

Three strategies (``TrainConfig.strategy``, ``train.py --strategy``):

* ``none``: the default single-device path.
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over the local GPUs (or the devices
  given); Keras ``model.fit`` works under it, so training uses the ordinary fit path
  inside ``strategy.scope()``.
* ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across machines, each
  process configured by its ``TF_CONFIG``. Keras 3's ``model.fit`` fails under it
  (keras-team/keras issue 20585), so :func:`scalpnet.learn.distributed_loop.custom_fit`
  runs the same epochs with ``strategy.run`` on per-replica steps and drives the same
  Keras callbacks.

Batch size: ``batch_size`` is per replica; a step consumes a global batch of
``batch_size x replicas`` images, split evenly across the replicas. Learning rates are
scaled by :func:`lr_factor` (linear by default: ``lr x replicas``).

BatchNorm: under a strategy each replica keeps its own copy of the moving mean and
variance, updated from its own slice of the batch; the copies drift apart and the
saved model (one copy) predicts differently from the trained replicas.
:func:`synchronize_batchnorm` makes every BatchNorm layer compute its batch statistics
over the global batch (an all-reduce), so all copies receive the same updates.

Only the chief (task type ``chief``, or ``worker`` 0 when the cluster has no chief)
writes the run folder; the other workers run the same code into a private temporary
folder (:func:`worker_run_dir`) that keeps their resume state and is deleted at the end.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from scalpnet.errors import ConfigError, RunFolderError

STRATEGIES = ("none", "mirrored", "multiworker")
LR_SCALINGS = ("linear", "sqrt", "none")
WORKER_DIR_PREFIX = "scalpnet-worker"


# --------------------------------------------------------------------------- strategies
def parse_devices(devices: str | None) -> tuple[str, list[int]] | None:
    """``--devices`` text -> (kind, indices), or None for "all local GPUs".

    Accepted: ``"cpu:N"`` (split the CPU into N logical devices, for tests),
    ``"gpu:N"`` (the first N GPUs), or a comma list of GPU indices ``"0,2"``.
    """
    if devices is None or str(devices).strip() in ("", "all"):
        return None
    text = str(devices).strip().lower()
    try:
        if text.startswith(("cpu:", "gpu:")):
            kind, count = text.split(":", 1)
            n = int(count)
            if n < 1:
                raise ValueError
            return kind, list(range(n))
        indices = [int(part) for part in text.split(",")]
        if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
            raise ValueError
        return "gpu", indices
    except ValueError:
        raise ConfigError(
            f"--devices must be 'cpu:N', 'gpu:N' or GPU indices like '0,1'; got {devices!r}"
        ) from None


def _split_cpu(n: int) -> list[str]:
    """Split the physical CPU into ``n`` logical devices; must run before TF starts."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        existing = tf.config.get_logical_device_configuration(cpu) or [None]
        if len(existing) != n:
            raise ConfigError(
                f"--devices cpu:{n}: TensorFlow was already started with {len(existing)} CPU "
                "device(s); the split must happen before any TensorFlow work"
            ) from None
    return [f"/cpu:{i}" for i in range(n)]


def _select_gpus(indices: list[int]) -> list[str]:
    """Make only the chosen GPUs visible; their names as TensorFlow will number them."""
    gpus = tf.config.list_physical_devices("GPU")
    missing = [i for i in indices if i >= len(gpus)]
    if missing:
        raise ConfigError(f"--devices asks for GPU(s) {missing} but {len(gpus)} GPU(s) are visible")
    try:
        tf.config.set_visible_devices([gpus[i] for i in indices], "GPU")
    except RuntimeError:
        raise ConfigError(
            "--devices: TensorFlow was already started; GPUs must be chosen before any "
            "TensorFlow work"
        ) from None
    return [f"/gpu:{i}" for i in range(len(indices))]


def make_strategy(name: str = "none", devices: str | None = None) -> tf.distribute.Strategy | None:
    """The ``tf.distribute`` strategy for ``name``; None for "none" (Keras's default).

    Call it before any other TensorFlow work: splitting the CPU, choosing GPUs and
    MultiWorkerMirroredStrategy's collective ops all configure TensorFlow's start-up.

    Args:
        name: "none", "mirrored" or "multiworker".
        devices: see :func:`parse_devices`; None uses every local GPU (or the CPU).

    Raises:
        ConfigError: unknown name, bad devices, or multiworker without a usable TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    chosen = parse_devices(devices)
    if name == "none":
        if chosen is not None:
            raise ConfigError("--devices needs --strategy mirrored or multiworker")
        return None
    if name == "mirrored":
        if chosen is None:
            return tf.distribute.MirroredStrategy()
        kind, indices = chosen
        names = _split_cpu(len(indices)) if kind == "cpu" else _select_gpus(indices)
        return tf.distribute.MirroredStrategy(names)
    cluster_from_env()  # a clear error before TensorFlow's own
    if chosen is not None:
        kind, indices = chosen
        if kind == "cpu":
            raise ConfigError(
                "--devices cpu:N is for --strategy mirrored; a multiworker process uses its "
                "machine's GPUs (or one CPU)"
            )
        _select_gpus(indices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def cluster_from_env() -> dict:
    """The parsed ``TF_CONFIG`` of this process (checked, for a clear error)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "--strategy multiworker needs the TF_CONFIG environment variable on every "
            'machine, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        members = cluster[task["type"]]
        index = int(task["index"])
        if not 0 <= index < len(members):
            raise IndexError
    except (ValueError, KeyError, TypeError, IndexError):
        raise ConfigError(
            "TF_CONFIG must be JSON with 'cluster' (task type -> list of 'host:port') and "
            f"'task' ({{'type': ..., 'index': ...}} naming a cluster member); got {raw!r}"
        ) from None
    return config


def replicas(strategy: tf.distribute.Strategy | None) -> int:
    """Replicas that share each step (all devices of all workers); 1 without a strategy."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def is_multiworker(strategy: tf.distribute.Strategy | None) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def task(strategy: tf.distribute.Strategy | None) -> tuple[str | None, int]:
    """(task type, index) of this process; (None, 0) outside a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None) if is_multiworker(strategy) else None
    if resolver is None or not resolver.task_type:
        return None, 0
    return str(resolver.task_type), int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """True for the process that writes the run folder (the only one outside a cluster)."""
    task_type, index = task(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker" or index != 0:
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in spec


def worker_run_dir(stamp: str, strategy: tf.distribute.Strategy | None) -> Path:
    """Where a non-chief worker keeps its copy of the run (and its resume state).

    ``$TMPDIR/scalpnet-worker-<type><index>-<stamp>``: outside the run folder, private to
    the task, and the same after a restart (so a restarted worker finds its checkpoints).
    ``stamp`` is the training fingerprint.
    """
    task_type, index = task(strategy)
    return Path(tempfile.gettempdir()) / f"{WORKER_DIR_PREFIX}-{task_type}{index}-{stamp}"


def lr_factor(rule: str, n_replicas: int) -> float:
    """Learning-rate multiplier for ``n_replicas`` (global batch = per-replica batch x n).

    "linear": ``n`` (Goyal et al. 2017, the usual rule for SGD-like training);
    "sqrt": ``sqrt(n)`` (often preferred with Adam); "none": 1.
    """
    if rule not in LR_SCALINGS:
        raise ConfigError(f"lr scaling must be one of {', '.join(LR_SCALINGS)}; got {rule!r}")
    if rule == "linear":
        return float(n_replicas)
    if rule == "sqrt":
        return math.sqrt(n_replicas)
    return 1.0


def check_jit(jit: bool, n_replicas: int) -> None:
    """Raise ConfigError for XLA (``--jit``) with more than one replica.

    Keras 3 compiles the whole distributed step, ``strategy.run`` included, and XLA then
    fails ("Trying to access resource ... located in device ... from device ...", and
    "Collectives are not yet implemented for CPU devices when compiling with XLA");
    compiling only the per-replica step is impossible with synchronised BatchNorm, whose
    statistics are all-reduced inside the forward pass.
    """
    if jit and n_replicas > 1:
        raise ConfigError(
            f"--jit (XLA) works on one device only; this run has {n_replicas} replicas. "
            "Drop --jit (mixed precision still works) or train on one device"
        )


def synchronize_batchnorm(model: keras.Model) -> int:
    """Make every BatchNorm layer compute batch statistics over the global batch.

    Without it each replica normalises with, and updates its moving mean/variance from,
    its own slice of the batch; the replicas' copies drift apart and the saved model
    differs from the trained one. ``synchronized`` is read when the layer is called, so
    setting it on a built model takes effect at the next trace. Returns the layer count.
    """
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Auto-shard by DATA: every worker reads the same batches and keeps its own part.

    (Sharding by FILE needs several input files; ours is one list of PNG paths.)
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# --------------------------------------------------------------------------- agreement
def _worker_position(strategy: tf.distribute.Strategy | None) -> tuple[int, int]:
    """(this worker's position, number of workers): the chief first, then the workers."""
    task_type, index = task(strategy)
    if task_type is None:
        return 0, 1
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    n_workers = chiefs + len(spec.get("worker", []))
    return (0 if task_type == "chief" else chiefs + index), n_workers


def gather(strategy: tf.distribute.Strategy | None, value: int) -> list[int]:
    """Every worker's ``value``, in worker order (chief first); ``[value]`` in one process.

    A collective: every worker must call it at the same point.
    """
    if not is_multiworker(strategy):
        return [int(value)]
    position, n_workers = _worker_position(strategy)
    local = tf.one_hot(position, n_workers, dtype=tf.float64) * float(value)
    # Each of this worker's replicas adds its share; the sum over all replicas puts
    # every worker's value at its own position.
    share = local * (n_workers / strategy.num_replicas_in_sync)

    @tf.function
    def collect():
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(share)), axis=None
        )

    return [round(float(v)) for v in collect().numpy()]


def check_agreement(strategy: tf.distribute.Strategy, what: str, value: int) -> None:
    """Raise RunFolderError on every worker unless all workers hold the same ``value``.

    A collective (see :func:`gather`). Used where workers that resumed from different
    checkpoints would otherwise wait for each other forever.
    """
    values = gather(strategy, value)
    if len(set(values)) > 1:
        raise RunFolderError(
            f"the workers disagree on {what} (values by worker: {values}): they resumed "
            "from different checkpoints (a kill between two workers' saves). Restart all "
            "workers with a new --out to start over"
        )
