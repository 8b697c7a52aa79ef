"""Atomic file writes: a reader, or the next run after a kill, never sees half a file.

Every write goes to a temporary file in the destination's folder (same file system), is
flushed (and fsync'ed when ``durable``), then renamed over the destination with
``os.replace``. Until the rename, the previous file stays whole. The temporary name is
``<name>.<pid>-<thread id>.tmp`` (see :data:`TEMP_PATTERN`), so leftovers of a killed
writer can be recognised and removed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

from scalpnet.errors import DatasetError

# Matches the temporary files this module makes (for cleaning up after a killed writer).
TEMP_PATTERN = re.compile(r".+\.\d+-\d+\.tmp")


def temp_path(path: Path) -> Path:
    """The temporary name :func:`write_bytes_atomic` uses for ``path`` in this thread."""
    return path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        durable: fsync the file before the rename, so the new content survives a power
            cut too. A killed process cannot leave half a file either way; bulk writers
            of files that can be re-made (prepared PNGs) pass False for speed.

    Raises:
        OSError: the write failed (e.g. ENOSPC); ``path`` is untouched, no temp is left.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as pretty UTF-8 JSON (no NaN), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def make_folder(folder: Path) -> None:
    """``mkdir -p``, as a :class:`DatasetError` naming the folder when it cannot be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(
            f"cannot create the output folder '{folder}': {exc.strerror or exc}"
        ) from None
