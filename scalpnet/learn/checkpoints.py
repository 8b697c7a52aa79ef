"""Weights checkpoints that survive a kill, a full disk and a damaged file.

A checkpoint is ``<stem>.weights.h5`` (Keras ``save_weights``: the model's variables and,
when compiled, the optimizer's) plus ``<stem>.json``, its record: what it belongs to
(training fingerprint, image size, variable count, phase), when (``epochs_done``: epochs
finished over the whole run when it was saved) and what the weights file must be (bytes,
SHA-256). Both appear atomically, weights first, so a checkpoint without a record was cut
short, and one whose file differs from its record is damaged: :func:`problem` tells,
before anything is loaded. A :class:`CheckpointSet` keeps the newest few of a series
(``epoch-0003``, ``epoch-0004``): the previous good one stays until the next is complete.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from scalpnet.errors import DiskFullError
from scalpnet.files import atomic_path, disk_full_as_error, is_leftover_temp, write_json_atomic

WEIGHTS_SUFFIX = ".weights.h5"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its weights file and its record."""

    weights: Path
    meta: dict

    @property
    def epochs_done(self) -> int:
        return int(self.meta["epochs_done"])


def record_path(weights: Path) -> Path:
    """``x.weights.h5`` -> ``x.json``."""
    return weights.with_name(weights.name[: -len(WEIGHTS_SUFFIX)] + ".json")


def identity(model: keras.Model, fingerprint: str, image_size: int) -> dict:
    """What a checkpoint must match to be loaded into ``model`` for this training."""
    return {
        "fingerprint": fingerprint,
        "image_size": int(image_size),
        "variables": len(model.weights),
    }


def variables_bytes(model: keras.Model) -> int:
    """About the size of a weights file of ``model`` (its and its optimizer's variables)."""
    optimizer = getattr(model, "optimizer", None)
    found = list(model.weights) + (list(optimizer.variables) if optimizer is not None else [])
    return int(sum(np.prod(v.shape) * np.dtype(str(v.dtype)).itemsize for v in found))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(model: keras.Model, path: Path, meta: dict, kept: str) -> Checkpoint:
    """Save ``model`` to ``path`` (a ``.weights.h5``) and its record, both atomically.

    Raises:
        DiskFullError: the disk is full; names the folder and the space needed, and says
            what is still usable (``kept``). Nothing half-written is left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with disk_full_as_error(path.parent, variables_bytes(model), kept):
            with atomic_path(path) as tmp:
                model.save_weights(tmp)
            full = {**meta, "bytes": path.stat().st_size, "sha256": sha256_of(path)}
            write_json_atomic(record_path(path), full)
    except DiskFullError:
        if not record_path(path).is_file():
            path.unlink(missing_ok=True)  # a file without a record is never used
        raise
    return Checkpoint(path, full)


def copy(source: Checkpoint, path: Path, **changes) -> Checkpoint:
    """A copy of ``source`` at ``path`` with its record updated by ``changes``."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source.weights, tmp)
    meta = {**source.meta, **changes}
    write_json_atomic(record_path(path), meta)
    return Checkpoint(path, meta)


def problem(weights: Path, expected: dict) -> str | None:
    """Why the checkpoint at ``weights`` cannot be used (one phrase), or None.

    ``expected``: :func:`identity` of the model and training it is for.
    """
    record = record_path(weights)
    try:
        if not weights.is_file():
            return "its weights file is missing"
        if not record.is_file():
            return "its save was cut short (no record beside the weights)"
        try:
            meta = json.loads(record.read_text(encoding="utf-8"))
        except ValueError:
            return f"its record '{record.name}' is not valid JSON"
        size = weights.stat().st_size
        if size == 0:
            return "the weights file is empty"
        if size != meta.get("bytes"):
            expected_size = meta.get("bytes")
            return f"the weights file is truncated or changed ({size} bytes of {expected_size})"
        for key, what in (
            ("variables", "another model"),
            ("image_size", "another image size"),
            ("fingerprint", "another training (other settings or data)"),
        ):
            if meta.get(key) != expected[key]:
                return f"it belongs to {what} ({key} {meta.get(key)}, not {expected[key]})"
        if sha256_of(weights) != meta.get("sha256"):
            return "the weights file is damaged (its SHA-256 differs from the record)"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    return None


def read(weights: Path, expected: dict) -> tuple[Checkpoint | None, str | None]:
    """(the checkpoint, None) when usable, else (None, why not)."""
    why = problem(weights, expected)
    if why is not None:
        return None, why
    return Checkpoint(weights, json.loads(record_path(weights).read_text(encoding="utf-8"))), None


def _build_optimizer(model: keras.Model) -> None:
    """Build a compiled model's optimizer (in the strategy's scope, if any)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)


def load(model: keras.Model, checkpoint: Checkpoint) -> None:
    """Load a checkpoint; builds the optimizer first so its state is restored too."""
    _build_optimizer(model)
    model.load_weights(checkpoint.weights)


def snapshot(model: keras.Model) -> Callable[[], None]:
    """Remember the model's and its optimizer's variables (building the optimizer first);
    the returned call puts them back."""
    _build_optimizer(model)
    optimizer = getattr(model, "optimizer", None)
    found = list(model.weights) + (list(optimizer.variables) if optimizer is not None else [])
    values = [v.numpy() for v in found]

    def restore() -> None:
        for variable, value in zip(found, values, strict=True):
            variable.assign(value)

    return restore


class CheckpointSet:
    """A series ``<folder>/<prefix>-NNNN.weights.h5`` (NNNN: epochs done); keeps the newest
    ``keep`` complete ones."""

    def __init__(self, folder: Path, prefix: str, keep: int = 2):
        self.folder, self.prefix, self.keep = Path(folder), prefix, keep
        self._name = re.compile(rf"{re.escape(prefix)}-(\d+){re.escape(WEIGHTS_SUFFIX)}")

    def path(self, epochs_done: int) -> Path:
        return self.folder / f"{self.prefix}-{epochs_done:04d}{WEIGHTS_SUFFIX}"

    def numbers(self) -> list[int]:
        """Epochs done of every weights file in the series, newest first."""
        if not self.folder.is_dir():
            return []
        found = (self._name.fullmatch(p.name) for p in self.folder.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def save(self, model: keras.Model, epochs_done: int, meta: dict) -> Checkpoint:
        """Save the next checkpoint, then delete the ones beyond the newest ``keep``."""
        complete = [n for n in self.numbers() if record_path(self.path(n)).is_file()]
        kept = (
            f"the checkpoint after epoch {complete[0]} in '{self.folder}' is kept"
            if complete
            else "no earlier checkpoint of this series exists"
        )
        checkpoint = save(model, self.path(epochs_done), {**meta, "epochs_done": epochs_done}, kept)
        for old in [n for n in self.numbers() if n < epochs_done][self.keep - 1 :]:
            self.remove(old)
        return checkpoint

    def newest(
        self, expected: dict, at_most: int | None = None, report: Callable[[str], None] = print
    ) -> Checkpoint | None:
        """The newest usable checkpoint with at most ``at_most`` epochs done; each unusable
        newer one is reported in one line."""
        for n in self.numbers():
            if at_most is not None and n > at_most:
                continue
            checkpoint, why = read(self.path(n), expected)
            if checkpoint is not None:
                return checkpoint
            report(f"the checkpoint after epoch {n} ('{self.path(n)}') is unusable: {why}")
        return None

    def remove(self, epochs_done: int) -> None:
        path = self.path(epochs_done)
        record_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def remove_after(self, epochs_done: int) -> None:
        """Delete the checkpoints with more than ``epochs_done`` epochs (and leftover temps)."""
        for n in self.numbers():
            if n > epochs_done:
                self.remove(n)
        if self.folder.is_dir():
            for leftover in self.folder.iterdir():
                if is_leftover_temp(leftover):
                    leftover.unlink(missing_ok=True)
