"""scalpnet.progress: the time left, and the status file another process reads."""

from __future__ import annotations

import json
import time

import pytest

from scalpnet import progress
from scalpnet.progress import PROGRESS_FILE_ENV, Progress, format_seconds, read_status, time_left


def test_time_left_is_the_mean_pace_so_far():
    assert time_left(25, 100, 10.0) == pytest.approx(30.0)
    assert time_left(100, 100, 10.0) == 0.0
    assert time_left(0, 100, 10.0) is None  # no pace yet
    assert time_left(5, 0, 1.0) is None


@pytest.mark.parametrize(
    ("seconds", "words"), [(None, "?"), (4.4, "4 s"), (59.6, "1 min 00 s"), (135, "2 min 15 s")]
)
def test_format_seconds(seconds, words):
    assert format_seconds(seconds) == words


def test_progress_writes_its_status_where_the_environment_says(tmp_path, monkeypatch):
    status_file = tmp_path / "status" / "progress.json"
    status_file.parent.mkdir()
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(status_file))
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0.0)
    with Progress("prepare", total=4, unit="img", show=False) as bar:
        assert read_status(status_file)["done"] == 0  # written at once
        bar.update()
        bar.update(2)
        status = read_status(status_file)
        assert (status["step"], status["done"], status["total"]) == ("prepare", 3, 4)
        assert status["left_s"] is not None and status["left_s"] >= 0
    assert read_status(status_file)["done"] == 3  # close writes the last state


def test_writes_are_throttled_but_close_always_writes(tmp_path, monkeypatch):
    writes = []
    real = progress.write_text_atomic
    monkeypatch.setattr(
        progress, "write_text_atomic", lambda *a, **k: writes.append(1) or real(*a, **k)
    )
    status_file = tmp_path / "p.json"
    start = time.monotonic()
    bar = Progress("train", total=1000, show=False, status_file=status_file)
    for _ in range(1000):
        bar.update()
    elapsed = time.monotonic() - start
    # one at the start, then at most one per MIN_INTERVAL_S
    assert len(writes) <= 2 + elapsed / progress.MIN_INTERVAL_S
    bar.close()
    assert json.loads(status_file.read_text())["done"] == 1000


def test_time_left_leaves_out_the_slow_first_unit(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = Progress("training", total=11, show=False, status_file=tmp_path / "p.json")
    clock[0] += 60.0  # the first batch: tracing, the cache filling
    bar.update()
    assert bar.status()["left_s"] is None  # no pace yet
    for _ in range(5):
        clock[0] += 1.0
        bar.update()
    status = bar.status()
    assert status["left_s"] == pytest.approx(5.0)  # 5 left at 1 s each, not at 11 s each
    assert status["elapsed_s"] == pytest.approx(65.0)
    for _ in range(5):
        bar.update()
    assert bar.status()["left_s"] == 0.0
    bar.close()


def test_no_status_file_without_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with Progress("x", total=2, show=False) as bar:
        bar.update(2)
    assert list(tmp_path.iterdir()) == []


def test_read_status_of_nothing_or_garbage_is_none(tmp_path):
    assert read_status(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{half")
    assert read_status(tmp_path / "bad.json") is None


def test_an_unwritable_status_file_never_fails_the_work(tmp_path):
    with Progress(
        "x", total=2, show=False, status_file=tmp_path / "no" / "such" / "dir.json"
    ) as bar:
        bar.update(2)
    assert bar.done == 2
