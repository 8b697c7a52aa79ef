"""Checkpoints with records: damaged, cut-short and foreign ones are recognised before loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tiny_keras import rewrite, tiny_model  # noqa: E402

from scalpnet.errors import DiskFullError  # noqa: E402
from scalpnet.files import FAULT_ENV  # noqa: E402
from scalpnet.learn import checkpoints  # noqa: E402
from scalpnet.learn.checkpoints import CheckpointSet  # noqa: E402


def expected_for(model, size: int = 32) -> dict:
    return checkpoints.identity(model, "abc", size)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    expected = expected_for(model)
    series = CheckpointSet(tmp_path / "backup", "epoch")
    for epoch in (1, 2):
        model.layers[1].kernel.assign(np.full((3, 5), float(epoch), dtype="float32"))
        model.optimizer.iterations.assign(10 * epoch)
        series.save(model, epoch, {**expected, "phase": "scratch"})
    return model, expected, series


def test_a_saved_checkpoint_is_usable_and_loads_model_and_optimizer(saved):
    _model, expected, series = saved
    assert series.numbers() == [2, 1]
    found = series.newest(expected)
    assert found.epochs_done == 2 and checkpoints.problem(found.weights, expected) is None
    assert found.meta["bytes"] == found.weights.stat().st_size and len(found.meta["sha256"]) == 64
    other = tiny_model(seed=1)
    checkpoints.load(other, found)
    assert np.all(other.layers[1].kernel.numpy() == 2.0)
    assert int(other.optimizer.iterations.numpy()) == 20  # the optimizer's state came back


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        ("truncate", "truncated"),
        ("empty", "empty"),
        ("flip", "SHA-256"),
        ("no_record", "cut short"),
        ("bad_record", "not valid JSON"),
        ("other_size", "another image size"),
        ("other_training", "another training"),
    ],
)
def test_damaged_checkpoints_are_reported_and_the_previous_one_used(saved, damage, phrase):
    _model, expected, series = saved
    path = series.path(2)
    record = checkpoints.record_path(path)
    data = path.read_bytes()
    if damage == "truncate":
        rewrite(path, data[: len(data) // 2])
    elif damage == "empty":
        rewrite(path, b"")
    elif damage == "flip":
        rewrite(path, data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    elif damage == "no_record":
        record.unlink()
    elif damage == "bad_record":
        rewrite(record, b'{"epochs_done": 2, "byt')
    else:
        meta = json.loads(record.read_text())
        meta.update(image_size=64) if damage == "other_size" else meta.update(fingerprint="zzz")
        rewrite(record, json.dumps(meta).encode())
    lines = []
    found = series.newest(expected, report=lines.append)
    assert found.epochs_done == 1
    assert len(lines) == 1 and phrase in lines[0] and "epoch 2" in lines[0], lines


def test_another_models_weights_are_refused(saved, tmp_path):
    _, expected, series = saved
    bigger = tiny_model(units=6)
    # Same variable count, other shapes: the checksum catches a file swapped under a record.
    path = series.path(2)
    foreign = tmp_path / "foreign.weights.h5"
    bigger.save_weights(foreign)
    rewrite(path, foreign.read_bytes())
    assert "truncated or changed" in checkpoints.problem(path, expected) or "SHA-256" in (
        checkpoints.problem(path, expected)
    )
    wider = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert "another model" in checkpoints.problem(
        series.path(1), checkpoints.identity(wider, "abc", 32)
    )


def test_only_the_newest_two_are_kept(saved):
    model, expected, series = saved
    series.save(model, 3, expected)
    assert series.numbers() == [3, 2]
    assert not checkpoints.record_path(series.path(1)).exists()
    series.remove_after(2)
    assert series.numbers() == [2]


def test_a_full_disk_names_the_folder_and_the_space_and_keeps_the_last_checkpoint(
    saved, monkeypatch
):
    model, expected, series = saved
    monkeypatch.setenv(FAULT_ENV, "enospc:epoch-0003:1")
    monkeypatch.setattr("scalpnet.files._fault_counts", {})
    with pytest.raises(DiskFullError) as caught:
        series.save(model, 3, expected)
    message = str(caught.value)
    assert "\n" not in message
    assert str(series.folder) in message and "needs about" in message and " kB" in message
    assert "checkpoint after epoch 2" in message and "run the same command again" in message
    assert series.numbers() == [2, 1]  # nothing of epoch 3 left, not even a temporary file
    assert sorted(p.name for p in series.folder.iterdir()) == [
        "epoch-0001.json", "epoch-0001.weights.h5", "epoch-0002.json", "epoch-0002.weights.h5",
    ]  # fmt: skip
    assert series.newest(expected).epochs_done == 2


def test_snapshot_puts_weights_and_optimizer_back(saved):
    model, expected, series = saved
    restore = checkpoints.snapshot(model)
    before = [v.numpy().copy() for v in model.weights]
    checkpoints.load(model, series.newest(expected, at_most=1))
    assert np.all(model.layers[1].kernel.numpy() == 1.0)
    restore()
    for variable, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_variables_bytes_is_about_the_file_size(saved):
    model, _expected, series = saved
    size = series.path(2).stat().st_size
    estimate = checkpoints.variables_bytes(model)
    assert 0 < estimate <= size  # the file adds HDF5 headers
