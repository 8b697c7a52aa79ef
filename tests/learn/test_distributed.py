"""tf.distribute training: strategies, BatchNorm parity, train.py under each strategy.

Every strategy test runs in subprocesses (see ``worker_cluster.py``); the custom loop's
own tests are in test_distributed_loop.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from worker_cluster import REPEATABLE, REPO, SCRIPTS, child_env, run_child

from scalpnet.errors import ConfigError
from scalpnet.files import FAULT_ENV
from scalpnet.learn import distributed

PARITY_TOLERANCE = 1e-5


# --------------------------------------------------------------------------- units
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("all", None),
        ("cpu:2", ("cpu", [0, 1])),
        ("gpu:3", ("gpu", [0, 1, 2])),
        ("1,0", ("gpu", [1, 0])),
    ],
)
def test_parse_devices(text, expected):
    assert distributed.parse_devices(text) == expected


@pytest.mark.parametrize("text", ["cpu:0", "gpu:x", "0,0", "-1", "tpu:2", "cpu"])
def test_parse_devices_rejects(text):
    with pytest.raises(ConfigError, match="--devices"):
        distributed.parse_devices(text)


def test_make_strategy_rejects_bad_settings(monkeypatch):
    assert distributed.make_strategy("none") is None
    with pytest.raises(ConfigError, match="strategy must be one of"):
        distributed.make_strategy("horovod")
    with pytest.raises(ConfigError, match="--devices needs"):
        distributed.make_strategy("none", "cpu:2")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs the TF_CONFIG"):
        distributed.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}')
    with pytest.raises(ConfigError, match="TF_CONFIG must be JSON"):
        distributed.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "not json")
    with pytest.raises(ConfigError, match="TF_CONFIG must be JSON"):
        distributed.make_strategy("multiworker")


def test_lr_factor():
    assert distributed.lr_factor("linear", 8) == 8.0
    assert distributed.lr_factor("sqrt", 4) == 2.0
    assert distributed.lr_factor("none", 8) == 1.0
    assert distributed.lr_factor("linear", 1) == 1.0
    with pytest.raises(ConfigError, match="lr scaling"):
        distributed.lr_factor("cubic", 2)


def test_xla_is_refused_with_several_replicas():
    distributed.check_jit(True, 1)
    distributed.check_jit(False, 8)
    with pytest.raises(ConfigError, match=r"--jit .* one device only; this run has 2 replicas"):
        distributed.check_jit(True, 2)


def test_single_process_is_chief_and_has_one_replica():
    assert distributed.is_chief(None)
    assert distributed.replicas(None) == 1
    assert distributed.task(None) == (None, 0)
    assert not distributed.is_multiworker(None)


def test_worker_run_dir_is_private_stable_and_outside_the_run(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    first = distributed.worker_run_dir("abc123", None)
    assert first == distributed.worker_run_dir("abc123", None)
    assert first.parent == tmp_path
    assert first != distributed.worker_run_dir("def456", None)


def test_synchronize_batchnorm_sets_every_resnet_batchnorm():
    import keras

    from scalpnet.learn.model import build_model

    model = build_model(32, weights=None)
    layers = [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    assert layers and not any(x.synchronized for x in layers)
    assert distributed.synchronize_batchnorm(model) == len(layers) == 53
    assert all(x.synchronized for x in layers)
    # Survives the config round trip that save_model makes.
    twin = keras.Model.from_config(model.get_config())
    assert all(
        x.synchronized for x in twin.layers if isinstance(x, keras.layers.BatchNormalization)
    )


# --------------------------------------------------------------------------- parity
@pytest.mark.slow
def test_mirrored_batchnorm_parity_after_reload(tmp_path):
    """Trained under MirroredStrategy over 2 logical CPUs, saved, reloaded in a fresh
    single-device process: the same predictions on both replicas' halves of a batch.

    The control (BatchNorm not synchronised) shows the check can fail: its second
    replica's moving statistics drift from the first's and the saved copy disagrees.
    """
    run_child([str(SCRIPTS), "parity-train", str(tmp_path)], timeout=600, **REPEATABLE)
    run_child([str(SCRIPTS), "predict", str(tmp_path)], timeout=600, **REPEATABLE)
    inside = np.load(tmp_path / "scalpnet-inside.npy")  # (8, 10), rows 4-7 from replica 1
    reloaded = np.load(tmp_path / "scalpnet-reloaded.npy")
    assert inside.shape == reloaded.shape == (8, 10)
    assert np.abs(inside[:4] - reloaded[:4]).max() <= PARITY_TOLERANCE
    assert np.abs(inside[4:] - reloaded[4:]).max() <= PARITY_TOLERANCE

    control_inside = np.load(tmp_path / "control-inside.npy")
    control_reloaded = np.load(tmp_path / "control-reloaded.npy")
    assert np.abs(control_inside[:4] - control_reloaded[:4]).max() <= PARITY_TOLERANCE
    assert np.abs(control_inside[4:] - control_reloaded[4:]).max() > 100 * PARITY_TOLERANCE


# --------------------------------------------------------------------------- train.py
SIZE = 32
PER_REPLICA = 8
# Deterministic and comparable: no augmentation, no dropout, learning rates not scaled.
COMMON = [
    "--image-size", str(SIZE), "--weights", "none", "--dropout", "0", "--no-augment",
    "--lr-scaling", "none", "--seed", "0", "--verbose", "2",
    "--no-export",  # the ONNX export is tested once, in tests/test_train.py
]  # fmt: skip
EPOCHS_2 = ["--epochs", "0", "2", "--batch-size", str(PER_REPLICA)]
GLOBAL_16 = ["--epochs", "0", "2", "--batch-size", str(2 * PER_REPLICA)]  # on one replica
# Training's files, and train.py's evaluation and OOD fit on the finished run.
RUN_FILES = {"model.keras", "model_card.json", "history.csv", "curves.png", "logs"}
RUN_FILES |= {"metrics.json", "report.md", "thresholds.json", "calibration.json", "ood.npz"}


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic Kaggle-layout images (6 train, 1 val, 1 test per condition) and a
    processed folder prepared once, so concurrent workers only re-check it."""
    from scalpnet.data import prepare, synthetic_dataset

    root = tmp_path_factory.mktemp("dist_data")
    synthetic_dataset.write_dataset(root / "raw", per_class=8, seed=0)
    prepare.prepare_dataset(
        prepare.PrepareConfig(data=root / "raw", out=root / "processed", image_size=SIZE),
        progress=False,
    )
    return root / "raw", root / "processed"


def _train_args(raw_data, out: Path, *extra: str) -> list[str]:
    raw, processed = raw_data
    where = ["--data", str(raw), "--processed", str(processed), "--out", str(out)]
    return ["train.py", *where, *COMMON, *extra]


def _history(run: Path) -> list[dict[str, float]]:
    import pandas as pd

    return pd.read_csv(run / "history.csv").to_dict("records")


def _assert_parity(run: Path) -> None:
    """The card's validation loss (computed by the trained model inside the strategy,
    every batch split across the replicas) equals the reloaded model's, in a fresh
    single-device process."""
    run_child([str(SCRIPTS), "evaluate-run", str(run)], timeout=600, **REPEATABLE)
    reloaded = json.loads((run.parent / f"{run.name}-reloaded.json").read_text())
    card = json.loads((run / "model_card.json").read_text())
    assert abs(reloaded["loss"] - card["val_metrics"]["loss"]) <= PARITY_TOLERANCE, (
        reloaded,
        card["val_metrics"],
    )


def _run_at_once(commands: dict[str, list[str]], logs: Path, timeout: float, **env: str) -> None:
    """Run several commands side by side, each one's output in ``logs/<name>.log`` (each
    REPEATABLE: one thread per op, so their numbers do not depend on what else runs);
    fail with the output of any that fails."""
    procs = {}
    for name, args in commands.items():
        with (logs / f"{name}.log").open("w") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=child_env(**env), stdout=log, stderr=log
            )
    try:
        for name, proc in procs.items():
            proc.wait(timeout=timeout)
            output = (logs / f"{name}.log").read_text()
            assert proc.returncode == 0, f"{name}:\n{output[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def parity_runs(raw_data, tmp_path_factory) -> dict[str, Path]:
    """Three train.py runs of 2 epochs, started at once (they share the CPU, not their
    numbers):

    - ``mirrored``: --strategy mirrored over 2 logical CPUs, global batch 16 (2 x 8);
    - ``single``: the same over 1 logical CPU, global batch 16 (1 x 16);
    - ``control``: 1 logical CPU, batches of 8 (the same images in other batches).
    """
    root = tmp_path_factory.mktemp("parity")
    mirrored = ["--strategy", "mirrored", "--devices", "cpu:2", *EPOCHS_2]
    single = ["--strategy", "mirrored", "--devices", "cpu:1", *GLOBAL_16]
    control = ["--strategy", "mirrored", "--devices", "cpu:1", *EPOCHS_2]
    runs = {"mirrored": mirrored, "single": single, "control": control}
    commands = {name: _train_args(raw_data, root / name, *args) for name, args in runs.items()}
    _run_at_once(commands, root, timeout=1200, **REPEATABLE)
    return {name: root / name for name in runs}


@pytest.fixture(scope="module")
def mirrored_run(parity_runs) -> Path:
    """train.py --strategy mirrored over 2 logical CPUs, 2 epochs, global batch 16."""
    return parity_runs["mirrored"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # pays for parity_runs: three trainings side by side
def test_train_py_mirrored_writes_a_complete_run_that_reloads_identically(mirrored_run):
    assert {p.name for p in mirrored_run.iterdir()} >= RUN_FILES
    assert not (mirrored_run / ".resume").exists()
    card = json.loads((mirrored_run / "model_card.json").read_text())
    assert card["training"]["strategy"] == "mirrored"
    assert card["training"]["devices"] == "cpu:2"
    assert card["training"]["distribution"] == {
        "strategy": "mirrored",
        "replicas": 2,
        "global_batch_size": 2 * PER_REPLICA,
        "lr_factor": 1.0,
        "synchronized_batchnorm": True,
    }
    assert [row["epoch"] for row in _history(mirrored_run)] == [1, 2]
    _assert_parity(mirrored_run)


def _relative_gaps(one: list[dict], two: list[dict]) -> list[float]:
    """|a - b| / |a| for loss and val_loss of every epoch."""
    return [
        abs(b[key] - a[key]) / abs(a[key])
        for a, b in zip(one, two, strict=True)
        for key in ("loss", "val_loss")
    ]


@pytest.mark.slow
def test_two_replicas_and_one_replica_reach_the_same_losses(parity_runs):
    """Same seed, data and global batch (16): 2 replicas x 8 images vs 1 replica x 16.

    The 1-replica run is MirroredStrategy over one device, so both runs go through the
    same distributed code. Keras's ``fit`` under any strategy makes an extra iterator
    before the first epoch (its symbolic build) whose prefetching runs ahead; the epoch
    orders must not depend on it (they depend only on seed and epoch; a repeated dataset
    whose reshuffles drew seeds from a shared generator failed this test). Same order,
    same initial weights: with synchronised BatchNorm both compute the same function of
    the same batches and differ only in float rounding (all-reduce order; BatchNorm's
    one-pass variance E[x^2] - E[x]^2 against the two-pass one), which Adam's normalised
    steps can amplify.

    Both run with :data:`REPEATABLE` settings, so the gap is a fixed number for this
    configuration, not the machine's load (with oneDNN's threads, a busy machine alone
    moved val_loss by 1.1e-3 relative and failed this test). Tolerance 1e-3 relative
    after 4 and 8 steps; the control is the next test.
    """
    card = json.loads((parity_runs["single"] / "model_card.json").read_text())
    assert card["training"]["distribution"]["replicas"] == 1
    one, two = _history(parity_runs["single"]), _history(parity_runs["mirrored"])
    gaps = _relative_gaps(one, two)
    print(f"1 vs 2 replicas, relative gaps in loss/val_loss by epoch: {gaps}")
    assert max(gaps) <= 1e-3, (one, two)


@pytest.mark.slow
def test_the_parity_check_catches_another_batch_composition(parity_runs):
    """The control of the test above: one replica fed 8-image batches (the same images in
    other batches, twice the steps) against the 2-replica run's global batches of 16."""
    gaps = _relative_gaps(_history(parity_runs["mirrored"]), _history(parity_runs["control"]))
    print(f"global batch 16 vs 8 (the control), relative gaps: {gaps}")
    assert max(gaps) > 1e-2, gaps  # 10x the tolerance


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two starts of two workers; bounded per wait below
def test_train_py_multiworker_killed_during_a_backup_write_resumes_together(
    raw_data, cluster, tmp_path
):
    """Two train.py workers on 127.0.0.1; the chief is paused inside the write of its
    backup after epoch 2 (the worker finished its own) and both are SIGKILLed there.
    Restarted with the same command, the chief has epoch 1 and the worker epoch 2: both
    continue from epoch 1, and finish. The chief's run folder is complete and reloads
    identically; the worker wrote only to its own TMPDIR, which is gone at the end."""
    out = tmp_path / "run"
    args = _train_args(
        raw_data, out, "--strategy", "multiworker", "--epochs", "0", "3", "--batch-size", "8"
    )

    def worker_backup_2() -> list[Path]:
        pattern = "scalpnet-worker-*/.resume/backup_scratch/epoch-0002.json"
        return list(cluster.worker_tmp(1).glob(pattern))

    cluster.start(args, "first", env={0: {FAULT_ENV: "pause:epoch-0002:1"}})
    deadline = time.monotonic() + 900
    while not ("fault: paused" in cluster.logs[0].read_text() and worker_backup_2()):
        if time.monotonic() > deadline or any(p.poll() is not None for p in cluster.procs):
            pytest.fail(f"the chief never paused in its second backup:\n{cluster.tail()}")
        time.sleep(0.2)
    cluster.stop()
    chief_backups = out / ".resume" / "backup_scratch"
    assert (chief_backups / "epoch-0001.json").is_file()
    assert not (chief_backups / "epoch-0002.weights.h5").exists()
    assert not (out / "model.keras").exists()
    worker_dir = worker_backup_2()[0].parents[2]
    assert worker_dir.name.startswith("scalpnet-worker-worker1-")

    cluster.start(args, "restart")
    assert cluster.wait(900) == [0, 0], cluster.tail()
    logs = [log.read_text() for log in cluster.logs]
    assert all("resuming the unfinished run" in log for log in logs), cluster.tail()
    assert "continuing phase scratch after epoch 1 (from its backup)" in logs[0]
    # The worker had epoch 2, but every worker continues from the same state.
    assert "falling back to the backup after epoch 1: 1 epoch(s) to run again" in logs[1]

    names = {p.name for p in out.iterdir()}
    assert names >= RUN_FILES and ".resume" not in names
    assert not any("worker" in name for name in names)
    # One history row per epoch: a worker appending to the chief's CSV would double them.
    assert [row["epoch"] for row in _history(out)] == [1, 2, 3]  # each epoch once
    card = json.loads((out / "model_card.json").read_text())
    assert card["name"] == "run"
    assert card["training"]["distribution"]["replicas"] == 2
    assert card["training"]["distribution"]["global_batch_size"] == 2 * PER_REPLICA
    assert not worker_dir.exists()  # the non-chief's copy is cleaned up
    # Both workers computed the same final validation metrics (one line each).
    finals = [[line for line in log.splitlines() if line.startswith("validation:")] for log in logs]
    assert finals[0] == finals[1] and len(finals[0]) == 1
    # Only the chief evaluated (and wrote metrics.json, report.md, ood.npz).
    assert "written by the chief worker" in logs[1]
    assert "out-of-distribution check" not in logs[1]
    assert "out-of-distribution check" in logs[0]
    _assert_parity(out)
