"""The custom training loop: as ``fit`` on one replica, and two workers resuming a kill.

The multi-worker test runs two worker processes of ``tests/distributed_scripts.py`` (see
``worker_cluster.py``).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from worker_cluster import REPEATABLE, SCRIPTS, Cluster


# --------------------------------------------------------------------------- one device
def _bn_model(keras, strategy):
    """Conv + BatchNorm + sigmoid head on (8, 8, 3) pixels, compiled in ``strategy.scope()``."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3)(inputs)
        x = keras.layers.BatchNormalization(momentum=0.5)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(10, activation="sigmoid")(x))
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.BinaryAccuracy(name="binary_accuracy")],
        )
    return model


def test_custom_fit_and_evaluate_match_keras_on_one_replica():
    """The same seed, data and epochs: the loop's logs are ``fit``'s, its evaluation is
    ``evaluate``'s (the last batch is short: the loss is averaged over images)."""
    tf = pytest.importorskip("tensorflow")
    import keras

    from scalpnet.learn import distributed_loop

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (20, 8, 8, 3)).astype("float32")
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 20)]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # 8, 8, 4
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    metrics = lambda: [keras.metrics.BinaryAccuracy(name="binary_accuracy")]  # noqa: E731

    fitted = _bn_model(keras, strategy)
    expected = fitted.fit(data, validation_data=data, epochs=2, shuffle=False, verbose=0).history
    looped = _bn_model(keras, strategy)
    history = distributed_loop.custom_fit(
        looped,
        data,
        strategy=strategy,
        make_metrics=metrics,
        validation_data=data,
        epochs=2,
        verbose=0,
    ).history
    assert history.keys() == expected.keys()
    for key, values in expected.items():
        assert history[key] == pytest.approx(values, rel=1e-5), key
    result = distributed_loop.evaluate(looped, data, strategy=strategy, make_metrics=metrics)
    assert result == pytest.approx(looped.evaluate(data, verbose=0, return_dict=True), rel=1e-5)


def test_steps_needs_a_known_finite_length():
    tf = pytest.importorskip("tensorflow")
    from scalpnet.learn import distributed_loop

    data = tf.data.Dataset.range(10).batch(3)
    assert distributed_loop._steps(data) == 4
    with pytest.raises(ValueError, match="known, finite length"):
        distributed_loop._steps(data.repeat())
    with pytest.raises(ValueError, match="known, finite length"):
        distributed_loop._steps(data.filter(lambda x: tf.size(x) > 0))


# --------------------------------------------------------------------------- multi-worker
def _tiny(cluster: Cluster, out: Path, epochs: int, crash_after: int, tag: str) -> None:
    args = [str(SCRIPTS), "tiny-worker", str(out), str(epochs), str(crash_after)]
    cluster.start(args, tag, env={0: REPEATABLE, 1: REPEATABLE})


@pytest.mark.slow
def test_multiworker_custom_loop_resumes_after_a_kill(cluster, tmp_path):
    """Two workers train a tiny BatchNorm net with custom_fit; the chief is SIGKILLed right
    after its epoch-2 backup, both restart, resume at epoch 3 and end exactly where an
    uninterrupted run ends. Workers agree; the non-chief wrote only to its own TMPDIR.
    Workers whose checkpoints disagree fail fast with a clear error."""
    epochs = 4
    straight = tmp_path / "straight"
    _tiny(cluster, straight, epochs, -1, "straight")
    assert cluster.wait(600) == [0, 0], cluster.tail()

    resumed = tmp_path / "resumed"
    _tiny(cluster, resumed, epochs, 1, "crash")
    chief = cluster.procs[0]
    try:
        chief.wait(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the chief did not crash as planned:\n{cluster.tail()}")
    assert chief.returncode == -signal.SIGKILL
    cluster.stop()  # the other worker waits for its dead peer: kill it too
    history = (resumed / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]

    _tiny(cluster, resumed, epochs, -1, "restart")
    assert cluster.wait(600) == [0, 0], cluster.tail()
    restart_log = cluster.logs[0].read_text()
    rows = (resumed / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2", "3"], restart_log

    a = json.loads((straight / "summary-chief.json").read_text())
    b = json.loads((resumed / "summary-chief.json").read_text())
    w = json.loads((resumed / "summary-worker.json").read_text())
    # Both workers hold the same model (BatchNorm statistics included) and metrics.
    assert w["val"] == pytest.approx(b["val"], abs=1e-6)
    np.testing.assert_allclose(w["moving_mean"], b["moving_mean"], atol=1e-6)
    # Resuming from the backup reproduces the uninterrupted run.
    assert b["val"] == pytest.approx(a["val"], abs=1e-5)
    for x, y in zip(a["weights"], b["weights"], strict=True):
        np.testing.assert_allclose(np.array(x), np.array(y), atol=1e-5)
    # Workers that would resume from different epochs stop at once with a clear error
    # (instead of waiting for each other forever): the chief loses its backup.
    for leftover in (straight / "backup").iterdir():
        leftover.unlink()
    _tiny(cluster, straight, epochs + 1, -1, "disagree")
    assert 0 not in cluster.wait(600)
    for log in cluster.logs:
        assert "RunFolderError: the workers disagree on the phase and epoch" in log.read_text()

    # The non-chief's files are in its own TMPDIR, not next to the chief's.
    assert Path(w["run_dir"]).is_relative_to(cluster.worker_tmp(1))
    assert (Path(w["run_dir"]) / "history.csv").is_file()
    assert sorted(p.name for p in resumed.iterdir()) == [
        "backup",
        "history.csv",
        "summary-chief.json",
        "summary-worker.json",
    ]
