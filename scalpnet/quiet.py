"""Quiet start-up: our tools hide TensorFlow's start-up notices unless asked for them.

TensorFlow 2.21 prints, on every start on a CPU machine, lines no user can act on: the
oneDNN notice, "Could not find cuda drivers", a cuInit error, the CPU-instruction notice,
and absl's "All log messages before absl::InitializeLog()". ``TF_CPP_MIN_LOG_LEVEL``
alone does not hide them (the first two are written before TensorFlow reads it), so
:func:`quiet_tensorflow` also captures file descriptor 2 while TensorFlow is imported and
its devices are listed, then writes back every line that is not one of those notices.
Python warnings and our own log lines are untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, MutableMapping

from scalpnet.import_hooks import on_import

LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# 2: the C++ runtime's INFO and WARNING lines are hidden; its errors still show.
QUIET_LEVEL = "2"
# The start-up notices, as TensorFlow 2.21 words them.
NOISE = re.compile(
    r"absl::InitializeLog\(\)"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|cpu_feature_guard"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning"
)


def quiet_tensorflow(
    verbose: bool = False, environ: MutableMapping[str, str] | None = None
) -> bool:
    """Hide TensorFlow's start-up notices from here on; call it before TensorFlow is imported.

    Does nothing when ``verbose`` or when the user set ``TF_CPP_MIN_LOG_LEVEL`` themselves.
    Returns True when it quietened something.
    """
    environ = os.environ if environ is None else environ
    if verbose or LOG_LEVEL_ENV in environ:
        return False
    environ[LOG_LEVEL_ENV] = QUIET_LEVEL
    if "tensorflow" not in sys.modules:
        on_import("tensorflow", _import_quietly)
    return True


def drop_noise(text: str) -> str:
    """``text`` without the lines that are start-up notices (the rest kept, in order)."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.search(line))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly), then write back all but noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = drop_noise(captured.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def _import_quietly(load, module) -> None:
    """Import ``tensorflow`` and list its devices (which prints the cuInit error) inside
    :func:`filtered_stderr`; turn absl's Python warnings down to errors."""
    with filtered_stderr():
        load(module)
        with contextlib.suppress(Exception):  # listing is only to print early
            module.config.list_physical_devices()
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Hide tf2onnx's NumPy deprecation (``np.object``) while ``model.export`` converts
    to ONNX: printed on every export, nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"keras\..*tf2onnx")
        yield
