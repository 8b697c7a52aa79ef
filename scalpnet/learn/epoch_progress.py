"""A Keras callback: each epoch's progress and the time left for the whole phase."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras

from scalpnet.progress import Progress, format_seconds


class EpochProgress(keras.callbacks.Callback):
    """Counts training batches into one :class:`scalpnet.progress.Progress` per ``fit``.

    Its status (``SCALPNET_PROGRESS_FILE``) says "training: epoch E/N" and the time left
    for the rest of the phase at the mean pace so far (validation included); ``say``
    gets one line per finished epoch with the pace and the time left.

    Args:
        label: the phase's name in the step ("training", "finetune", ...).
        show: draw its own tqdm bar (False when Keras draws one: verbose 1).
        say: where the per-epoch line goes (None: nowhere).
    """

    def __init__(
        self, label: str = "training", show: bool = False, say: Callable[[str], None] | None = print
    ):
        super().__init__()
        self.label, self.show, self.say = label, show, say
        self._bar: Progress | None = None
        self._first_epoch: int | None = None
        self._started = 0.0
        # An epoch's line waits for the next epoch (or the end): Keras's own progress bar,
        # the last callback, finishes its line after every other callback's epoch end.
        self._pending: str | None = None

    def _say_pending(self) -> None:
        if self._pending is not None and self.say is not None:
            self.say(self._pending)
        self._pending = None

    def _step(self, epoch: int) -> str:
        return f"{self.label}: epoch {epoch + 1}/{self.params.get('epochs')}"

    def on_epoch_begin(self, epoch, logs=None):
        self._say_pending()
        steps = self.params.get("steps") or 0
        if self._bar is None:  # the first epoch of this fit (a resumed fit starts later)
            self._first_epoch, self._started = epoch, time.monotonic()
            epochs_left = self.params.get("epochs", epoch + 1) - epoch
            self._bar = Progress(
                self._step(epoch), steps * epochs_left, unit="batch", show=self.show
            )
        else:
            self._bar.step = self._step(epoch)
            self._bar._bar.set_description(self._bar.step)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update()

    def on_epoch_end(self, epoch, logs=None):
        if self.say is None or self._first_epoch is None:
            return
        done = epoch + 1 - self._first_epoch
        pace = (time.monotonic() - self._started) / done
        left = (self.params.get("epochs", epoch + 1) - epoch - 1) * pace
        self._pending = (
            f"{self._step(epoch)} done, {format_seconds(pace)} an epoch; "
            f"about {format_seconds(left)} of {self.label} left"
        )

    def on_train_end(self, logs=None):
        self._say_pending()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
