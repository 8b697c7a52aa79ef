"""The synthetic dataset on disk: seeded JPEGs in the Kaggle layout, for tests and the demo.

``out/{train,val,test}/<English name>/<key>_NNNN.jpg``, each drawn by
:func:`scalpnet.data.synthetic.make_image` at a random size and aspect.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from scalpnet.data.splits import split_counts
from scalpnet.data.synthetic import make_image
from scalpnet.files import disk_full_as_error, make_folder, write_bytes_atomic
from scalpnet.labels import CONDITIONS, KEYS, NUM_CLASSES
from scalpnet.progress import Progress

SPLITS = ("train", "val", "test")
# Image sides written by write_dataset (pixels), like the mixed sizes of real photos.
SIDE_RANGE = (320, 800)
JPEG_QUALITY = 90
_AGAIN = "run the same command again (the same seed writes the same files)"


@dataclass(frozen=True)
class SynthResult:
    """What :func:`write_dataset` wrote."""

    out: Path
    counts: dict[str, dict[str, int]]  # split -> condition key -> images
    total: int
    elapsed: float  # seconds


def _write_one(
    path: Path, condition: int, seed_seq: np.random.SeedSequence, sides: tuple[int, int]
) -> None:
    rng = np.random.default_rng(seed_seq)
    side = int(rng.integers(sides[0], sides[1] + 1))
    aspect = rng.uniform(0.67, 1.5)
    h, w = (side, int(side * aspect)) if aspect < 1 else (int(side / aspect), side)
    h, w = max(h, sides[0] // 2, 32), max(w, sides[0] // 2, 32)
    rgb = make_image(condition, rng, (h, w))
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"could not encode {path}")
    write_bytes_atomic(
        path, data.tobytes(), durable=False
    )  # a killed run leaves no half-written JPEG


def _remove_stale(out: Path, written: set[Path]) -> None:
    """Delete images an earlier, larger run left in these class folders (only our own names)."""
    for split in SPLITS:
        for condition in CONDITIONS:
            ours = re.compile(rf"{condition.key}_\d{{4,}}\.jpg(\.\d+-\d+\.tmp)?")  # or a temp
            for path in (out / split / condition.english).glob(f"{condition.key}_*"):
                if path not in written and ours.fullmatch(path.name):
                    path.unlink()


def write_dataset(
    out: Path,
    per_class: int = 100,
    seed: int = 0,
    ratios=(0.8, 0.1, 0.1),
    workers: int | None = None,
    sides: tuple[int, int] = SIDE_RANGE,
    progress: bool = False,
) -> SynthResult:
    """Write ``per_class`` JPEGs per condition in the Kaggle layout.

    ``out/{train,val,test}/<English name>/<key>_NNNN.jpg``, numbered from 1 across
    the splits of a class like the Kaggle set. The same seed gives the same files.
    ``sides``: (shortest, longest) longer side in pixels. Drawing costs about its area:
    about 30 ms an image at 560 px on one core here, 3 ms at 200 px, so data that is
    prepared at 64 px is best drawn at a few times that (the demo draws at 160-240).
    ``progress``: a bar with the time left (see :mod:`scalpnet.progress`).

    Raises:
        DiskFullError: the disk filled up (every file written is whole, never half).
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not 32 <= sides[0] <= sides[1]:
        raise ValueError(f"sides must be (low, high) with 32 <= low <= high, got {sides}")
    start = time.perf_counter()
    out = Path(out)
    jobs, counts = [], {s: dict.fromkeys(KEYS, 0) for s in SPLITS}
    root = np.random.SeedSequence(seed)
    for index, (condition, seq) in enumerate(zip(CONDITIONS, root.spawn(NUM_CLASSES), strict=True)):
        seqs = seq.spawn(per_class)
        number = 0
        for split, n in zip(SPLITS, split_counts(per_class, ratios), strict=True):
            folder = out / split / condition.english
            make_folder(folder)
            for _ in range(n):
                path = folder / f"{condition.key}_{number + 1:04d}.jpg"
                jobs.append((path, index, seqs[number], sides))
                number += 1
            counts[split][condition.key] = n
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    with (
        disk_full_as_error(out, None, "the images written so far are whole", _AGAIN),
        Progress("synthetic images", len(jobs), unit="img", show=progress) as bar,
    ):
        try:
            for future in [pool.submit(_write_one, *job) for job in jobs]:
                future.result()
                bar.update()
        finally:  # on an error or Ctrl-C, drop the queued images instead of drawing them
            pool.shutdown(wait=True, cancel_futures=True)
    _remove_stale(out, {job[0] for job in jobs})
    return SynthResult(out, counts, len(jobs), time.perf_counter() - start)


def summary(result: SynthResult) -> str:
    """A short table of what was written, for the CLI."""
    lines = [f"{'condition':<24}" + "".join(f"{s:>7}" for s in SPLITS)]
    for c in CONDITIONS:
        lines.append(f"{c.english:<24}" + "".join(f"{result.counts[s][c.key]:>7}" for s in SPLITS))
    lines.append(f"wrote {result.total} synthetic images to {result.out} in {result.elapsed:.1f} s")
    return "\n".join(lines)
