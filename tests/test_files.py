"""Atomic writes: the previous file stays whole until the new one is complete."""

from __future__ import annotations

import errno

import pytest

from scalpnet import files
from scalpnet.errors import DiskFullError


def test_atomic_path_replaces_only_when_the_writer_finished(tmp_path):
    target = tmp_path / "latest.weights.h5"
    target.write_bytes(b"old")
    with files.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".weights.h5")
        assert files.TEMP_PATTERN.fullmatch(tmp.name)
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not yet
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["latest.weights.h5"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_the_fault_hook_fails_the_nth_write_of_a_name_as_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(files.FAULT_ENV, "enospc:history:2")
    monkeypatch.setattr(files, "_fault_counts", {})
    files.write_text_atomic(tmp_path / "history.csv", "one")
    files.write_text_atomic(tmp_path / "other.csv", "not counted")
    with pytest.raises(OSError) as caught:
        files.write_text_atomic(tmp_path / "history.csv", "two")
    assert caught.value.errno == errno.ENOSPC and files.disk_full(caught.value)
    assert (tmp_path / "history.csv").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "other.csv"]


def test_disk_full_recognises_h5py_errors_and_the_message_is_one_line(tmp_path):
    h5py_style = OSError("Can't write data (file write failed: errno = 28, error message = ...)")
    assert files.disk_full(h5py_style)
    assert not files.disk_full(OSError(errno.EACCES, "Permission denied"))
    error = files.disk_full_error(tmp_path, 283_000_000, "the checkpoint after epoch 2 is kept")
    assert isinstance(error, DiskFullError)
    text = str(error)
    assert "\n" not in text and f"'{tmp_path}'" in text and "283 MB" in text and "free" in text


def test_the_message_says_what_it_knows_and_what_to_do(tmp_path):
    text = str(files.disk_full_error(tmp_path, None, "nothing is lost", "run it again"))
    assert text.startswith(f"the disk is full: saving in '{tmp_path}' failed (")
    assert text.endswith("; nothing is lost. Free some space and run it again")
    assert str(files.disk_full_error(None, None, "x", "y")) == (
        "the disk is full; x. Free some space and y"
    )


def test_an_os_error_at_the_top_is_one_line_naming_the_file_not_its_temporary(tmp_path):
    target = tmp_path / "cam.png"
    temporary = files.temp_path(target, keep_suffix=True)
    full = OSError(errno.ENOSPC, "No space left on device", str(temporary))
    line = files.os_error_line(full)
    assert line.startswith(f"the disk is full: saving in '{tmp_path}'") and "\n" not in line
    missing = OSError(errno.ENOENT, "No such file or directory", str(temporary))
    assert files.os_error_line(missing) == f"cannot use '{target}': No such file or directory"
    assert files.os_error_line(OSError(errno.EIO, "Input/output error")) == "Input/output error"


def test_only_temps_of_ended_writers_are_leftovers(tmp_path):
    """A temp of a live writer (another prepare of the same folder, a second worker) is a
    write in flight, not a leftover: deleting it made that writer's rename fail."""
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(ended.stdout)
    live = files.temp_path(tmp_path / "labels.csv")  # this process's
    dead = tmp_path / f"labels.csv.{dead_pid}-1.tmp"
    for path in (live, dead):
        path.write_bytes(b"half")
    assert files.TEMP_PATTERN.fullmatch(dead.name)
    assert not files.is_leftover_temp(live)
    assert files.is_leftover_temp(dead)
    assert not files.is_leftover_temp(tmp_path / "labels.csv")


def test_prepare_keeps_another_writers_temp(tmp_path):
    from scalpnet.data import prepare, synthetic_dataset

    synthetic_dataset.write_dataset(tmp_path / "raw", per_class=2, seed=0, sides=(64, 96))
    config = prepare.PrepareConfig(data=tmp_path / "raw", out=tmp_path / "out", image_size=32)
    prepare.prepare_dataset(config, progress=False)
    # As a live writer names it (this process, another thread: temp_path of this thread
    # is the name prepare itself writes labels.csv through).
    in_flight = tmp_path / "out" / f"labels.csv.{__import__('os').getpid()}-1.tmp"
    in_flight.write_bytes(b"half")
    prepare.prepare_dataset(config, progress=False)
    assert in_flight.exists()
