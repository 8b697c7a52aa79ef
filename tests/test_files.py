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
