"""Progress of a long step, with the time left: a tqdm bar, and the same news in a file.

Every long step (drawing synthetic images, preparing, each training epoch, evaluation,
the OOD fit, the export) counts its work through one :class:`Progress`::

    with Progress("prepare", total=len(jobs), unit="img", show=progress) as bar:
        for job in jobs:
            ...
            bar.update()

When the environment variable ``SCALPNET_PROGRESS_FILE`` names a file, every bar also
writes its state there as JSON (atomically, at most a few times a second), so another
process, the app building the demo model, can draw its own bar: see :func:`read_status`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from scalpnet.files import write_text_atomic

PROGRESS_FILE_ENV = "SCALPNET_PROGRESS_FILE"
MIN_INTERVAL_S = 0.25  # between two writes of the progress file


def time_left(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the mean rate so far; None before there is a rate (or no total)."""
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - done) * elapsed / done)


def format_seconds(seconds: float | None) -> str:
    """``75.2 -> '1 min 15 s'``; ``None -> '?'``."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class Progress:
    """One step's progress bar (tqdm, on stderr when ``show``) and status file.

    Args:
        step: what is being done, shown to the user ("prepare", "training epoch 2/5").
        total: units of work in the step (images, batches).
        unit: the unit's name for the bar.
        show: draw the tqdm bar (only when stderr is a terminal).
        status_file: where to write the JSON state; default ``$SCALPNET_PROGRESS_FILE``.
    """

    def __init__(
        self,
        step: str,
        total: int,
        *,
        unit: str = "it",
        show: bool = True,
        status_file: str | os.PathLike | None = None,
    ):
        from tqdm import tqdm

        self.step, self.total, self.done = step, int(total), 0
        self.start = time.monotonic()
        # (time, units done) at the first update: the pace is measured from there, so a
        # slow first unit (TensorFlow tracing, a cache filling) does not inflate the estimate.
        self._first: tuple[float, int] | None = None
        self._last_write = float("-inf")
        name = status_file if status_file is not None else os.environ.get(PROGRESS_FILE_ENV)
        self.status_file = Path(name) if name else None
        self._bar = tqdm(
            total=self.total,
            desc=step,
            unit=unit,
            disable=None if show else True,  # None: off when stderr is not a terminal
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        self._write(force=True)

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        if self._first is None:
            self._first = (time.monotonic(), self.done)
        self._bar.update(n)
        self._write()

    def status(self) -> dict[str, Any]:
        """The JSON state: step, done, total, elapsed_s, left_s (None until known), time."""
        now = time.monotonic()
        elapsed, left = now - self.start, None
        if self.done >= self.total > 0:
            left = 0.0
        elif self._first is not None:
            since, done_then = self._first
            left = time_left(self.done - done_then, self.total - done_then, now - since)
        return {
            "step": self.step,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 2),
            "left_s": _rounded(left),
            "time": time.time(),
        }

    def close(self) -> None:
        self._write(force=True)
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, force: bool = False) -> None:
        if self.status_file is None:
            return
        now = time.monotonic()
        if not force and now - self._last_write < MIN_INTERVAL_S:
            return
        self._last_write = now
        with contextlib.suppress(OSError):  # a watcher's file never fails the work
            write_text_atomic(self.status_file, json.dumps(self.status()) + "\n", durable=False)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def read_status(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last state a :class:`Progress` wrote to ``path``; None when there is none yet."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
