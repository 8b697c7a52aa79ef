"""Subprocess entry points for tests/learn/test_distributed*.py (device set-up precedes TF start).

    python tests/distributed_scripts.py parity-train OUT_DIR
    python tests/distributed_scripts.py predict OUT_DIR
    python tests/distributed_scripts.py evaluate-run RUN_DIR
    python tests/distributed_scripts.py tiny-worker OUT_DIR EPOCHS CRASH_AFTER_EPOCH

parity-train: splits the CPU into two logical devices, trains the ScalpNet model (BatchNorm
synchronised) and a tiny unsynchronised control for a few steps under MirroredStrategy,
predicts a batch inside the strategy (each replica gets half of it), saves models, batch
and predictions. predict: a fresh single-device process reloads them and predicts.
evaluate-run: a fresh single-device process evaluates a run folder's model.keras on the
validation split of its labels.csv (RUN_DIR-reloaded.json beside the run folder).
tiny-worker: one MultiWorkerMirroredStrategy worker (TF_CONFIG from the environment)
training a tiny BatchNorm network with distributed_loop.custom_fit and the resume callbacks;
the chief kills itself with SIGKILL right after saving the backup of CRASH_AFTER_EPOCH
(-1: never).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARITY_SIZE = 32
PARITY_BATCH = 8  # global; 4 images per replica
PARITY_STEPS = 3


def _tiny_model(keras, size: int):
    """Conv + BatchNorm + pooling + sigmoid head on pixels 0-255: a net whose BatchNorm trains."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3)(inputs)
    # Fast-moving statistics: a few steps show any disagreement between replicas.
    x = keras.layers.BatchNormalization(momentum=0.5)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def parity_train(out: Path) -> None:
    """Train the ScalpNet model (BatchNorm synchronised, as training does) and, as the
    control, a tiny BatchNorm net left unsynchronised, under MirroredStrategy; save both."""
    from scalpnet.learn import distributed

    strategy = distributed.make_strategy("mirrored", "cpu:2")
    import keras
    import numpy as np
    import tensorflow as tf

    from scalpnet.learn import config as config_module
    from scalpnet.learn import model as model_module
    from scalpnet.learn import training

    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = PARITY_BATCH * PARITY_STEPS
    images = rng.integers(0, 256, (n, PARITY_SIZE, PARITY_SIZE, 3), dtype=np.uint8)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(PARITY_BATCH)
    probe = rng.integers(0, 256, (PARITY_BATCH, PARITY_SIZE, PARITY_SIZE, 3), dtype=np.uint8)
    np.save(out / "probe.npy", probe)

    config = config_module.TrainConfig(image_size=PARITY_SIZE, weights="none", verbose=0)
    phase = config_module.plan_phases(config)[0]  # the whole network, BatchNorm training
    with strategy.scope():
        scalpnet_model = model_module.build_model(PARITY_SIZE, weights=None, dropout=0.0)
        control = _tiny_model(keras, PARITY_SIZE)
    distributed.synchronize_batchnorm(scalpnet_model)
    for name, model in (("scalpnet", scalpnet_model), ("control", control)):
        with strategy.scope():
            training.compile_for_phase(model, phase, config, PARITY_STEPS)
        model.fit(data, epochs=1, verbose=0)
        # predict splits the batch: images 0-3 on replica 0, 4-7 on replica 1.
        inside = model.predict(probe, batch_size=PARITY_BATCH, verbose=0)
        model_module.save_model(model, out / f"{name}.keras")
        np.save(out / f"{name}-inside.npy", inside)


def predict(out: Path) -> None:
    """A fresh single-device process: reload both models, predict the probe batch."""
    import numpy as np

    from scalpnet.learn import model as model_module

    probe = np.load(out / "probe.npy")
    for name in ("scalpnet", "control"):
        model = model_module.load_model(out / f"{name}.keras")
        np.save(
            out / f"{name}-reloaded.npy", model.predict(probe, batch_size=len(probe), verbose=0)
        )


def evaluate_run(run: Path) -> None:
    """A fresh single-device process: the saved model's loss on its validation split."""
    import keras

    from scalpnet.data import dataset
    from scalpnet.learn import model as model_module

    card = json.loads((run / "model_card.json").read_text())
    model = model_module.load_model(run / "model.keras")
    model.compile(loss=keras.losses.BinaryCrossentropy())
    data = dataset.make_dataset(card["dataset"]["csv"], "val", image_size=card["image_size"])
    result = model.evaluate(data, verbose=0, return_dict=True)
    (run.parent / f"{run.name}-reloaded.json").write_text(json.dumps(result))


def tiny_worker(out: Path, epochs: int, crash_after: int) -> None:
    from scalpnet.learn import distributed, distributed_loop

    strategy = distributed.make_strategy("multiworker")
    import keras
    import numpy as np
    import tensorflow as tf

    chief = distributed.is_chief(strategy)
    run_dir = out if chief else distributed.worker_run_dir(out.name, strategy)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (60, 16, 16, 3)).astype("float32")
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 60)]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # last batch: 4
    with strategy.scope():
        model = _tiny_model(keras, 16)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy())
    distributed.synchronize_batchnorm(model)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if chief and epoch == crash_after:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), delete_checkpoint=False),
        Crash(),  # after the backup: the state of that epoch is saved
    ]
    metrics = lambda: [keras.metrics.BinaryAccuracy(name="binary_accuracy")]  # noqa: E731
    distributed_loop.custom_fit(
        model,
        data,
        strategy=strategy,
        make_metrics=metrics,
        validation_data=data,
        epochs=epochs,
        callbacks=callbacks,
        verbose=0,
    )
    result = distributed_loop.evaluate(model, data, strategy=strategy, make_metrics=metrics)
    batchnorm = next(x for x in model.layers if isinstance(x, keras.layers.BatchNormalization))
    summary = {
        "chief": chief,
        "run_dir": str(run_dir),
        "val": result,
        "moving_mean": [float(v) for v in batchnorm.moving_mean.numpy()],
        "weights": [w.tolist() for w in model.get_weights()],
    }
    (out / f"summary-{'chief' if chief else 'worker'}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    verb, folder, *rest = sys.argv[1:]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if verb == "parity-train":
        parity_train(folder)
    elif verb == "predict":
        predict(folder)
    elif verb == "evaluate-run":
        evaluate_run(folder)
    elif verb == "tiny-worker":
        tiny_worker(folder, int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"unknown verb {verb!r}")
