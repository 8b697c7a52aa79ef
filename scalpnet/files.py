"""Atomic file writes: a reader, or the next run after a kill, never sees half a file.

Every write goes to a temporary file in the destination's folder (same file system), is
flushed (and fsync'ed when ``durable``), then renamed over the destination with
``os.replace`` (and the folder fsync'ed). Until the rename, the previous file stays
whole. The temporary name is ``<name>.<pid>-<thread id>.tmp`` plus, for writers that
insist on a suffix (Keras's ``save_weights`` wants ``.weights.h5``), the destination's
suffixes (see :data:`TEMP_PATTERN`), so leftovers of a killed writer can be recognised.

Tests inject faults through the ``SCALPNET_FAULT`` environment variable (see
:func:`_fault`): a write that pauses before its rename (to be killed there) or fails
with ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from scalpnet.errors import DatasetError, DiskFullError

# Matches the temporary files this module makes (for cleaning up after a killed writer);
# group 1 is the writer's process id.
TEMP_PATTERN = re.compile(r".+\.(\d+)-\d+\.tmp(\.[^.]+)*")
_TEMP_TAIL = re.compile(r"\.\d+-\d+\.tmp(\.[^./]+)*$")
FAULT_ENV = "SCALPNET_FAULT"
_fault_counts: dict[str, int] = {}


def temp_path(path: Path, keep_suffix: bool = False) -> Path:
    """The temporary name the atomic writers use for ``path`` in this thread."""
    suffix = "".join(path.suffixes) if keep_suffix else ""
    return path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{suffix}")


def is_leftover_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary file of a writer that has ended (safe to delete).

    A temp whose process is still alive may be a write in flight: another ``prepare`` or
    worker sharing the folder, or another thread of this process.
    """
    match = TEMP_PATTERN.fullmatch(path.name)
    return match is not None and not process_alive(int(match.group(1)))


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a name we cannot judge): leave it
    return True


def _fault(path: Path, tmp: Path) -> None:
    """Test hook, before the rename: ``SCALPNET_FAULT=ACTION:NAME:N`` acts on the N-th
    atomic write (in this process) of a file whose name contains NAME.

    ACTION ``pause``: print ``fault: paused <path>`` on stderr and sleep (to be killed);
    ``enospc``: raise ``OSError(ENOSPC)`` as a full disk would.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    action, name, nth = spec.split(":")
    if name not in path.name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] != int(nth):
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    if action == "pause":
        print(f"fault: paused {path}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not possible on every platform)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """For writers that take a file name: yield a temporary path beside ``path`` (same
    suffixes); when the block ends, fsync it and rename it over ``path``.

    ``with atomic_path(p) as tmp: model.save_weights(tmp)``. If the block raises (or the
    process dies), ``path`` keeps its previous content and the temporary is removed (a
    killed process leaves it, matching :data:`TEMP_PATTERN`).
    """
    path = Path(path)
    tmp = temp_path(path, keep_suffix=True)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        _fault(path, tmp)
        os.replace(tmp, path)
        if durable:
            _fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        _fault(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)
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


def disk_full(exc: BaseException) -> bool:
    """True for the OSError of a full disk or an exhausted quota (h5py's OSError carries
    no errno, only HDF5's message with "errno = 28")."""
    if not isinstance(exc, OSError):
        return False
    text = str(exc)
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (
        "No space left" in text or "errno = 28" in text or "Disk quota" in text
    )


AGAIN = "run the same command again"  # what to do once space is free
RESUME = f"{AGAIN} to resume"


def disk_full_error(
    folder: Path | None, needed_bytes: int | None, kept: str, then: str = RESUME
) -> DiskFullError:
    """The one-line error for a save that found the disk full.

    Args:
        folder: where the save went (None: not known).
        needed_bytes: about how much the file takes (None: not known).
        kept: what is still usable, e.g. "the backup after epoch 3 is kept".
        then: what to do once space is free.
    """
    if folder is None:
        return DiskFullError(f"the disk is full; {kept}. Free some space and {then}")
    try:
        free = f"{_mb(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    needs = f"needs about {_mb(needed_bytes)}" if needed_bytes else "failed"
    return DiskFullError(
        f"the disk is full: saving in '{folder}' {needs} ({free}); {kept}. "
        f"Free some space and {then}"
    )


@contextlib.contextmanager
def disk_full_as_error(
    folder: Path, needed_bytes: int | None, kept: str, then: str = RESUME
) -> Iterator[None]:
    """Turn a full disk inside the block into :func:`disk_full_error`'s one-line error."""
    try:
        yield
    except OSError as exc:
        if not disk_full(exc):
            raise
        raise disk_full_error(folder, needed_bytes, kept, then) from None


def os_error_line(exc: OSError) -> str:
    """One line for an OSError that reached a command's top level (no saver said more):
    a full disk, or a file that cannot be written or read (the path, and why)."""
    if disk_full(exc):
        folder = Path(exc.filename).parent if exc.filename else None
        kept = "the files written before it are whole"
        return str(disk_full_error(folder, None, kept, AGAIN))
    if exc.filename:  # an atomic writer's temporary is named for the file it becomes
        where = _TEMP_TAIL.sub("", os.fspath(exc.filename))
        return f"cannot use '{where}': {exc.strerror or exc}"
    return str(exc.strerror or exc)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"
