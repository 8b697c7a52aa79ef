"""What a killed run needs to continue, how it is written, and how it is read back.

``<run>/.resume/`` holds ``state.json`` (the fingerprint and the finished phases), per
phase ``backup_<phase>/epoch-NNNN.weights.h5`` (model and optimizer after each epoch),
``best-NNNN.weights.h5`` (the best epochs so far) and ``after_<phase>.weights.h5`` (the
weights a finished phase hands on), each with its record (see
:mod:`scalpnet.learn.checkpoints`). ``history.csv`` is rewritten whole after every epoch.
Every file appears atomically; the two newest backups and bests are kept.

Resuming (:func:`resume_phase`) takes the newest usable backup, reports every unusable
one in one line, falls back to the previous backup or the start of the phase, says what
that costs, and cuts ``history.csv`` and the bests back to the epoch it continues from:
each epoch appears once. Under multiworker every worker continues from the same epoch.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scalpnet.errors import RunFolderError
from scalpnet.files import disk_full_as_error, write_json_atomic, write_text_atomic
from scalpnet.learn import checkpoints, distributed
from scalpnet.learn.checkpoints import Checkpoint, CheckpointSet
from scalpnet.learn.config import Phase, TrainConfig, monitor_mode

RESUME_DIR = ".resume"
HISTORY = "history.csv"
KEPT = f"the checkpoints in {RESUME_DIR} are kept"


class RunState:
    """``<run>/.resume/``: ``state.json`` and the checkpoints of an unfinished run."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / RESUME_DIR
        self.path = self.dir / "state.json"
        self.data: dict[str, Any] = {}
        # Bests are saved before the backup of their epoch: three cover a fall-back to the
        # previous backup even when the epoch being backed up set a record.
        self.bests = CheckpointSet(self.dir, "best", keep=3)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> dict[str, Any]:
        self.data = json.loads(self.path.read_text(encoding="utf-8"))
        return self.data

    def save(self) -> None:
        with disk_full_as_error(self.dir, 1 << 16, KEPT):
            write_json_atomic(self.path, self.data)

    def backups(self, phase: Phase) -> CheckpointSet:
        return CheckpointSet(self.dir / f"backup_{phase.name}", "epoch")

    def phase_weights(self, phase: Phase) -> Path:
        return self.dir / f"after_{phase.name}.weights.h5"

    def records(self) -> list[dict]:
        """Every readable checkpoint record under ``.resume`` (to rebuild a lost state)."""
        found = []
        for path in sorted(self.dir.rglob("*.json")):
            if path != self.path:
                try:
                    found.append(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError):
                    continue
        return found

    def rebuild(self, stamp: str, base: dict, say: Callable[[str], None]) -> None:
        """Make ``state.json`` again from the checkpoints' records (it was lost or damaged).

        Raises:
            RunFolderError: the checkpoints there belong to another training.
        """
        records = self.records()
        ours = [r for r in records if r.get("fingerprint") == stamp]
        if records and not ours:
            raise RunFolderError(
                f"'{self.run_dir}' holds the checkpoints of another training and no "
                f"{self.path.name}; choose another --out"
            )
        phases = {
            r["phase"]: {"start": r["phase_start"], "end": r["phase_end"]}
            for r in ours
            if "phase_end" in r
        }
        self.data = {**base, "phases": phases}
        if ours:
            say(
                f"'{self.path}' is missing or unreadable: rebuilt from the checkpoints' "
                f"records ({len(phases)} finished phase(s))"
            )
        else:
            history = read_history(self.run_dir)
            say(
                f"'{self.path}' is missing or unreadable and no checkpoint is usable: "
                f"starting the run over ({len(history)} epoch(s) to run again)"
            )
            write_history(self.run_dir, history.iloc[:0])
        self.save()


# --------------------------------------------------------------------------- history
def read_history(run_dir: Path) -> pd.DataFrame:
    """``history.csv`` as written so far; one row per epoch (a repeated epoch keeps its last row).

    The ``epoch`` column is Keras's 0-based epoch index while training; training
    rewrites the file counted from 1, with a ``phase`` column, when the run finishes (such
    a file is read back 0-based, so finishing again is harmless).
    """
    path = Path(run_dir) / HISTORY
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    history = pd.read_csv(path, on_bad_lines="skip")
    if history.empty or "epoch" not in history:
        return pd.DataFrame()
    history = history.dropna(subset=["epoch"])
    history["epoch"] = history["epoch"].astype(int)
    if "phase" in history:  # already rewritten by a finish that was then interrupted
        history = history.drop(columns="phase").assign(epoch=history["epoch"] - 1)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def write_history(run_dir: Path, history: pd.DataFrame) -> None:
    """Replace ``history.csv`` atomically."""
    text = history.to_csv(index=False)
    with disk_full_as_error(Path(run_dir), len(text), KEPT):
        write_text_atomic(Path(run_dir) / HISTORY, text)


def phase_rows(history: pd.DataFrame, start: int) -> pd.DataFrame:
    return history[history["epoch"] >= start] if not history.empty else history


def phase_progress(
    history: pd.DataFrame, start: int, config: TrainConfig
) -> tuple[int, float | None, int, int]:
    """(epochs done in this phase, best monitor value there, wait since it, best epoch idx)."""
    rows = phase_rows(history, start)
    if rows.empty or config.monitor not in rows:
        return len(rows), None, 0, 0
    values = rows[config.monitor].to_numpy(dtype=float)
    if np.isnan(values).all():
        return len(rows), None, 0, 0
    pick = np.nanargmin if monitor_mode(config.monitor) == "min" else np.nanargmax
    best_at = int(pick(values))
    best_epoch = int(rows["epoch"].iloc[best_at])
    return len(rows), float(values[best_at]), len(rows) - 1 - best_at, best_epoch


def phase_finished(history: pd.DataFrame, phase: Phase, start: int, config: TrainConfig) -> bool:
    """True when history.csv shows the phase ran all its epochs or early stopping fired."""
    done, best, wait, _ = phase_progress(history, start, config)
    return done >= phase.epochs or (best is not None and wait >= config.patience)


# --------------------------------------------------------------------------- callbacks
class HistoryLogger(keras.callbacks.Callback):
    """``history.csv`` rewritten whole, atomically, after every epoch: the rows before
    this fit's first epoch, then one row per epoch (``epoch`` first, then sorted keys)."""

    def __init__(self, run_dir: Path, earlier: pd.DataFrame):
        super().__init__()
        self.run_dir, self.rows = Path(run_dir), earlier

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: float(v) for k, v in sorted((logs or {}).items())}}
        kept = self.rows[self.rows["epoch"] < epoch] if not self.rows.empty else self.rows
        self.rows = pd.concat([kept, pd.DataFrame([row])], ignore_index=True)
        write_history(self.run_dir, self.rows)


class Backup(keras.callbacks.Callback):
    """After every epoch: model and optimizer into the next checkpoint of ``backups``."""

    def __init__(self, backups: CheckpointSet, meta: dict):
        super().__init__()
        self.backups, self.meta = backups, meta

    def on_epoch_end(self, epoch, logs=None):
        self.backups.save(self.model, epoch + 1, self.meta)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the epochs whose ``monitor`` value beats every earlier one (``best`` so far)."""

    def __init__(self, bests: CheckpointSet, meta: dict, monitor: str, best: float | None):
        super().__init__()
        self.bests, self.meta, self.monitor, self.best = bests, meta, monitor, best
        self.better = np.less if monitor_mode(monitor) == "min" else np.greater

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self.best is None or self.better(float(value), self.best):
            self.best = float(value)
            meta = {**self.meta, "monitor": self.monitor, "value": self.best}
            self.bests.save(self.model, epoch + 1, meta)


# --------------------------------------------------------------------------- resuming
def resume_phase(
    model: keras.Model,
    state: RunState,
    phase: Phase,
    start: int,
    expected: dict,
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
    say: Callable[[str], None] = print,
) -> tuple[int, float | None]:
    """Load the newest usable backup of ``phase`` and return (the epoch to continue at,
    the best ``monitor`` value of the epochs before it).

    ``model`` must be compiled for the phase and hold its starting weights. Unusable
    backups are reported in one line each; all workers agree on the epoch (the newest
    one every worker can load). ``history.csv`` and the best checkpoints are cut back to
    that epoch.
    """
    backups = state.backups(phase)
    history = read_history(state.run_dir)
    ran = len(phase_rows(history, start))
    newest = backups.numbers()[0] if backups.numbers() else None
    reported: set[str] = set()

    def report(line: str) -> None:
        if line not in reported:
            reported.add(line)
            say(line)

    restore_start = checkpoints.snapshot(model) if newest is not None else None
    bad: set[int] = set()
    limit, loaded = None, None
    while True:
        mine = _load_newest(model, backups, expected, limit, bad, report, restore_start)
        loaded = mine
        values = distributed.gather(strategy, mine.epochs_done if mine else start)
        agreed = min(values)
        if all(v == agreed for v in values):
            break
        limit = agreed
    at = loaded.epochs_done if loaded else start
    backups.remove_after(at)
    if newest is not None and at != newest:
        where = f"the backup after epoch {at}" if loaded else f"the start of phase {phase.name}"
        lost = max(0, ran - (at - start))
        say(f"falling back to {where}: {lost} epoch(s) to run again")
    elif loaded is not None:
        say(f"continuing phase {phase.name} after epoch {at} (from its backup)")
    elif ran:
        say(f"no backup of phase {phase.name}: starting it over ({ran} epoch(s) to run again)")
    kept = history[history["epoch"] < at] if not history.empty else history
    if len(kept) != len(history):
        write_history(state.run_dir, kept)
    return at, _rewind_bests(state, at, start, expected, config, kept, report)


def _load_newest(
    model, backups: CheckpointSet, expected, limit, bad: set[int], report, restore_start
) -> Checkpoint | None:
    """The newest backup at or below ``limit`` that loads; None: the phase's start weights."""
    while True:
        found = backups.newest(expected, at_most=limit, report=report)
        while found is not None and found.epochs_done in bad:
            found = backups.newest(expected, at_most=found.epochs_done - 1, report=report)
        if found is None:
            if restore_start is not None:
                restore_start()
            return None
        try:
            checkpoints.load(model, found)
            return found
        except (OSError, ValueError) as exc:
            report(f"the backup after epoch {found.epochs_done} could not be loaded: {exc}")
            bad.add(found.epochs_done)
            restore_start()


def _rewind_bests(
    state: RunState,
    at: int,
    start: int,
    expected: dict,
    config: TrainConfig,
    history: pd.DataFrame,
    report,
) -> float | None:
    """Drop best checkpoints of epochs after ``at``; the best value up to ``at``.

    Without a usable best checkpoint up to ``at``, the weights the previous phase handed
    on (the best of the epochs before ``start``) become it.
    """
    state.bests.remove_after(at)
    best = state.bests.newest(expected, report=report)
    if best is not None:
        return float(best.meta["value"])
    earlier = history[history["epoch"] < start] if not history.empty else history
    previous = _previous_phase_weights(state, start, expected)
    if previous is None or earlier.empty or config.monitor not in earlier:
        return None
    values = earlier[config.monitor].to_numpy(dtype=float)
    value = float(np.nanmin(values) if monitor_mode(config.monitor) == "min" else np.nanmax(values))
    checkpoints.copy(
        previous, state.bests.path(start), epochs_done=start, monitor=config.monitor, value=value
    )
    return value


def _previous_phase_weights(state: RunState, start: int, expected: dict) -> Checkpoint | None:
    for path in state.dir.glob("after_*.weights.h5"):
        found, _ = checkpoints.read(path, expected)
        if found is not None and found.meta.get("phase_end") == start:
            return found
    return None


def clear(state: RunState) -> None:
    """Remove the resume folder (the run folder is complete)."""
    shutil.rmtree(state.dir, ignore_errors=True)
