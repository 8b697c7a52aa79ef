"""EpochProgress: each epoch's line with the time left, and the status the app reads."""

from __future__ import annotations

import keras
import numpy as np

from scalpnet import progress
from scalpnet.learn.epoch_progress import EpochProgress
from scalpnet.progress import read_status


def _fit(callback, epochs=3, initial_epoch=0):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((40, 4), "float32"), np.ones((40, 1), "float32")
    model.fit(
        x, y, batch_size=10, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
        callbacks=[callback],
    )  # fmt: skip


def test_one_line_per_epoch_and_a_status_counting_every_batch(tmp_path, monkeypatch):
    status_file = tmp_path / "progress.json"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(status_file))
    lines = []
    _fit(EpochProgress("scratch", say=lines.append), epochs=3)
    assert len(lines) == 3
    assert lines[0].startswith("scratch: epoch 1/3 done") and "of scratch left" in lines[0]
    assert (
        lines[-1].startswith("scratch: epoch 3/3 done") and "about 0 s of scratch left" in lines[-1]
    )
    status = read_status(status_file)
    assert status["step"] == "scratch: epoch 3/3"
    assert status["done"] == status["total"] == 3 * 4  # 4 batches an epoch
    assert status["left_s"] == 0


def test_a_resumed_fit_counts_only_the_epochs_it_runs(tmp_path, monkeypatch):
    status_file = tmp_path / "progress.json"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(status_file))
    lines = []
    _fit(EpochProgress(say=lines.append), epochs=5, initial_epoch=3)
    assert [line.split(" done")[0] for line in lines] == [
        "training: epoch 4/5",
        "training: epoch 5/5",
    ]
    assert read_status(status_file)["total"] == 2 * 4


def test_silent_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV, raising=False)
    _fit(EpochProgress(say=None), epochs=1)  # no output, no file, no error


def test_each_line_starts_on_a_line_of_its_own_after_keras_bar(capsys, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV, raising=False)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((20, 4), "float32"), np.ones((20, 1), "float32")
    model.fit(x, y, batch_size=10, epochs=2, verbose=1, callbacks=[EpochProgress()])
    out = capsys.readouterr().out
    for epoch in (1, 2):
        assert f"\ntraining: epoch {epoch}/2 done" in out, out
