"""One pass over the image files: fingerprints, verification views, digests, read errors.

Each image is decoded once, at full size, and leaves five things behind:

* a **fingerprint**: a (32, 32) grey thumbnail (luma, area-averaged, lightly blurred), so
  colour changes, greyscale copies, re-encoding and resizing barely touch it: the
  candidate search and the template score work on these;
* a **view**: a (96, 96) grey uint8 thumbnail (9 KB an image), where skin and hair texture
  still differ between photos: the geometric verification's correlation works on these;
* a **detail view**: a (160, 160) grey uint8 thumbnail (25 KB an image) for the SIFT
  keypoints: a copy magnified 1.5-2x (a rotation's inner square, a crop, a zoom) shows
  detail that a 96x96 view of its photo has lost, so keypoints found at 96 px rarely match;
* the sha256 of the file bytes and a digest of the decoded pixels (exact duplicates).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scalpnet.data.preprocess import load_image
from scalpnet.data.threads import one_thread_per_worker
from scalpnet.errors import InvalidImageError

FP_SIZE = 32  # fingerprint side: (32, 32) grey thumbnail
FP_DIM = FP_SIZE * FP_SIZE
FP_BLUR = 0.7  # Gaussian sigma on the thumbnail, pixels
VIEW_SIZE = 96  # verification view side: (96, 96) grey uint8
DETAIL_SIZE = 160  # keypoint view side: (160, 160) grey uint8


@dataclass(frozen=True)
class Scan:
    """What one pass over N image files found."""

    fingerprints: np.ndarray  # (N, FP_DIM) float32, rows of unreadable files are zero
    views: np.ndarray  # (N, VIEW_SIZE, VIEW_SIZE) uint8 grey, zero when unreadable
    details: np.ndarray  # (N, DETAIL_SIZE, DETAIL_SIZE) uint8 grey, zero when unreadable
    file_digests: list[str]  # sha256 of the file bytes ("" when unreadable)
    pixel_digests: list[str]  # digest of the decoded RGB pixels ("" when unreadable)
    errors: list[str | None]  # None, or why the file could not be read

    @classmethod
    def of_images(cls, images: Sequence[np.ndarray]) -> Scan:
        """The scan of N (H, W, 3) uint8 RGB arrays already in memory (tests, benchmarks)."""
        digests = [_pixel_digest(rgb) for rgb in images]
        return cls(
            np.stack([fingerprint(rgb) for rgb in images]).reshape(len(images), FP_DIM),
            np.stack([view(rgb) for rgb in images]).reshape(len(images), VIEW_SIZE, VIEW_SIZE),
            np.stack([view(rgb, DETAIL_SIZE) for rgb in images]).reshape(
                len(images), DETAIL_SIZE, DETAIL_SIZE
            ),
            list(digests),
            list(digests),
            [None] * len(images),
        )

    def subset(self, keep: Sequence[int]) -> Scan:
        """The scan of the images at ``keep`` only."""
        keep = list(keep)
        return Scan(
            self.fingerprints[keep],
            self.views[keep],
            self.details[keep],
            [self.file_digests[i] for i in keep],
            [self.pixel_digests[i] for i in keep],
            [self.errors[i] for i in keep],
        )


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def fingerprint(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB (or (H, W) grey) -> (FP_DIM,) float32 grey thumbnail, 0-255.

    Area-averaged to 32x32, then a light Gaussian blur (FP_BLUR pixels) so that texture
    finer than the thumbnail (hair) does not make half-pixel shifts look like new content.
    """
    grey = _grey(rgb).astype(np.float32)
    thumb = cv2.resize(grey, (FP_SIZE, FP_SIZE), interpolation=cv2.INTER_AREA)
    thumb = cv2.GaussianBlur(thumb, (0, 0), FP_BLUR, borderType=cv2.BORDER_REFLECT)
    return thumb.reshape(FP_DIM)


def view(rgb: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB (or (H, W) grey) -> (size, size) uint8 grey thumbnail."""
    return cv2.resize(_grey(rgb), (size, size), interpolation=cv2.INTER_AREA)


def _pixel_digest(rgb: np.ndarray) -> str:
    pixels = hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16)
    pixels.update(repr(rgb.shape).encode())
    return pixels.hexdigest()


_Found = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, str, str, str | None]


def _scan_one(path: Path) -> _Found:
    """(fingerprint, view, detail view, file digest, pixel digest, None), or Nones and why."""
    try:
        data = Path(path).read_bytes()
        named = io.BytesIO(data)
        named.name = f"'{path}'"  # load_image's messages name the file
        rgb = load_image(named)  # full size: "same pixels" must mean all of them
    except InvalidImageError as exc:
        return None, None, None, "", "", str(exc)
    except OSError as exc:
        return None, None, None, "", "", f"cannot read '{path}': {exc.strerror or exc}"
    digest = hashlib.sha256(data).hexdigest()
    grey = _grey(rgb)
    return fingerprint(grey), view(grey), view(grey, DETAIL_SIZE), digest, _pixel_digest(rgb), None


def scan(paths: Sequence[Path], workers: int | None = None) -> Scan:
    """Decode every image once (in parallel): fingerprints, views, digests, errors."""
    workers = workers or os.cpu_count() or 1
    fps = np.zeros((len(paths), FP_DIM), np.float32)
    views = np.zeros((len(paths), VIEW_SIZE, VIEW_SIZE), np.uint8)
    details = np.zeros((len(paths), DETAIL_SIZE, DETAIL_SIZE), np.uint8)
    file_digests, pixel_digests, errors = [""] * len(paths), [""] * len(paths), [None] * len(paths)
    # Pillow's decoders and OpenCV release the GIL, so threads overlap the decoding.
    with one_thread_per_worker(), ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (fp, v, d, fd, pd, err) in enumerate(pool.map(_scan_one, paths, chunksize=64)):
            if fp is not None:
                fps[i], views[i], details[i] = fp, v, d
            file_digests[i], pixel_digests[i], errors[i] = fd, pd, err
    return Scan(fps, views, details, file_digests, pixel_digests, errors)


def scan_strict(paths: Sequence[Path], workers: int | None = None) -> Scan:
    """:func:`scan`, but an unreadable file raises InvalidImageError (naming the file)."""
    result = scan(paths, workers)
    for error in result.errors:
        if error is not None:
            raise InvalidImageError(error)
    return result


def same(digests: Sequence[str]) -> list[list[int]]:
    """Index sets (size >= 2) sharing a non-empty digest, in order of their first member."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest:
            by[digest].append(i)
    return sorted((m for m in by.values() if len(m) > 1), key=lambda m: m[0])


def exact_duplicates(
    paths: Sequence[Path], workers: int | None = None
) -> dict[str, list[list[int]]]:
    """Indices of files with the same bytes (``"same_bytes"``) or the same decoded pixels."""
    result = scan(paths, workers)
    return {"same_bytes": same(result.file_digests), "same_pixels": same(result.pixel_digests)}
