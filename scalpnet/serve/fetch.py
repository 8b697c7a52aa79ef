"""Models from the web: download once into a cache, verify the sha256, unpack a zipped run.

A ``.keras`` file or a ``.zip`` of a run folder (``model.keras`` and/or ``model.onnx``
with its card, thresholds, calibration...) is fetched over https (plain http only for
127.0.0.1) and refused unless its bytes match the sha256 given with the URL.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from scalpnet.errors import ModelNotFoundError
from scalpnet.files import disk_full, disk_full_error

MODEL_FILES = ("model.keras", "model.onnx")  # a zip holding either is a run folder
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_NOTHING_KEPT = "nothing half-written is kept"
_TRY_AGAIN = "try again"


def default_cache_dir() -> Path:
    """``$SCALPNET_CACHE`` or ``~/.cache/scalpnet/models``: where downloaded models live."""
    env = os.environ.get("SCALPNET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "scalpnet" / "models"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    local = parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
    if parts.scheme != "https" and not local:
        raise ModelNotFoundError(
            f"model URL '{url}' must start with https:// (plain http only for 127.0.0.1)"
        )
    return parts


def check_sha256(url: str, sha256: str | None) -> str:
    value = (sha256 or "").strip().lower()
    if not _SHA256.match(value):
        raise ModelNotFoundError(
            f"a model URL needs its sha256 (64 hex digits) to be verified; got {sha256!r} "
            f"for '{url}'"
        )
    return value


def fetch_model(
    url: str,
    sha256: str | None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` once into the cache and verify its sha256.

    A ``.zip`` (a zipped run folder) is unpacked next to it and the folder returned.

    Returns:
        The path of the verified ``.keras`` file, or of the unpacked run folder.

    Raises:
        ModelNotFoundError: no/invalid sha256, not https, server unreachable or
            answering an error, or the downloaded bytes do not match the sha256.
        DiskFullError: the cache's disk filled up while downloading or unpacking.
    """
    parts = check_url(url)
    expected = check_sha256(url, sha256)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.unquote(parts.path)).name)
    target = cache / f"{expected[:16]}-{name or MODEL_FILES[0]}"
    if not (target.is_file() and file_sha256(target) == expected):
        _download(url, target, expected, timeout)
    if target.suffix.lower() == ".zip":
        return _unpack_run(target)
    return target


def _download(url: str, target: Path, expected: str, timeout: float) -> None:
    """Stream ``url`` into ``target`` through a temporary file, hashing as it goes.

    Raises:
        ModelNotFoundError: the server cannot be reached, answers an error or cuts the
            download off; the bytes do not match ``expected``; the cache is not writable.
        DiskFullError: the cache's disk filled up.
    """
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(url, timeout):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if got != expected:
            raise ModelNotFoundError(
                f"the file downloaded from '{url}' has sha256 {got}, expected {expected}; "
                "refusing to load it (wrong URL, wrong checksum, or a tampered file)"
            )
        os.replace(tmp, target)
    except OSError as exc:  # the cache's: _chunks turns the network's into ModelNotFoundError
        if disk_full(exc):
            raise disk_full_error(target.parent, None, _NOTHING_KEPT, _TRY_AGAIN) from None
        raise ModelNotFoundError(
            f"cannot write the model cache '{target.parent}': {exc.strerror or exc}; "
            "point SCALPNET_CACHE at a writable folder"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _chunks(url: str, timeout: float) -> Iterator[bytes]:
    """The bytes at ``url``, ``_CHUNK`` at a time; what goes wrong on the way is a
    ModelNotFoundError that says so."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            yield from iter(lambda: response.read(_CHUNK), b"")
    except urllib.error.HTTPError as exc:
        raise ModelNotFoundError(
            f"could not download the model: '{url}' answered HTTP {exc.code} {exc.reason}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelNotFoundError(
            f"could not download the model from '{url}': {reason} (is the server up?)"
        ) from None


def _unpack_run(archive: Path) -> Path:
    """Unpack a zipped run folder once; returns the folder holding its model."""
    folder = archive.with_suffix("")
    if not (folder / ".complete").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=archive.parent))
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    resolved = (staging / member).resolve()
                    if not resolved.is_relative_to(staging.resolve()):
                        raise ModelNotFoundError(f"'{archive}' holds an unsafe path: {member!r}")
                zipped.extractall(staging)
            (staging / ".complete").touch()
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        except zipfile.BadZipFile as exc:
            raise ModelNotFoundError(f"'{archive}' is not a zip file: {exc}") from None
        except OSError as exc:
            if not disk_full(exc):
                raise
            kept = "the verified zip is kept, nothing half-unpacked"
            raise disk_full_error(archive.parent, None, kept, _TRY_AGAIN) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    models = sorted(p for name in MODEL_FILES for p in folder.rglob(name))
    if not models:
        raise ModelNotFoundError(f"the zip '{archive}' holds no {' or '.join(MODEL_FILES)}")
    return models[0].parent
