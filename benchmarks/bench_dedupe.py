"""Near-duplicate grouping at dataset scale: speed, recall and precision of planted copies.

Writes N processed-looking 256x256 PNGs (default 12,000) into a temp folder: synthetic
originals, 40% of which get two planted copies each, made the way the Kaggle set was
(a random rotation/flip, a crop of up to 15% at a random place, a rotation of up to 7°,
greyscale or a brightness/contrast/colour change, JPEG re-encoding at quality 60-95, then
prepare's resize + median blur). Making them is not timed.

Timed, as ``assign_grouped_splits`` runs it: decode + fingerprint every file
(``dedupe.scan``), then ``dedupe.find_groups``. Reported: time per stage, recall and
precision of the planted pairs (two images count as grouped when they share a group).

Baselines in the same run:
  * exact hashes (same pixels), the usual "duplicate check": its recall of the planted pairs;
  * the naive all-pairs comparison (the same similarity for every pair, batched, no
    candidate stage), timed on a subset of ``--brute`` images and extrapolated to
    N(N-1)/2 pairs (plus the same decoding time).

    python benchmarks/bench_dedupe.py [--n 12000] [--brute 200] [--threshold T] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from scalpnet.data import dedupe, prepare, synthetic
from scalpnet.data.preprocess import load_image, to_model_input
from scalpnet.labels import NUM_CLASSES

SIZE = 256
COPY_SHARE = 0.4  # of the originals get two planted copies


def planted_copy(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A Kaggle-style copy of a (S, S, 3) image, as prepare would store it."""
    out = np.rot90(rgb, int(rng.integers(4)))
    out = out[:, ::-1] if rng.random() < 0.5 else out
    h, w = out.shape[:2]
    f = rng.uniform(0.85, 1.0)
    ch, cw = int(h * f), int(w * f)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = np.ascontiguousarray(out[y : y + ch, x : x + cw])
    turn = cv2.getRotationMatrix2D((cw / 2, ch / 2), rng.uniform(-7, 7), 1.0)
    out = cv2.warpAffine(out, turn, (cw, ch), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.3:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    else:
        gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3)
        out = np.clip(out * gain + rng.uniform(-15, 15), 0, 255).astype(np.uint8)
    _ok, jpeg = cv2.imencode(
        ".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))]
    )
    return to_model_input(load_image(jpeg.tobytes()), SIZE)


def make_dataset(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Write n PNGs; returns their paths and (n,) planted group ids (one per original)."""
    originals = round(n / (1 + 2 * COPY_SHARE))
    with_copies = (n - originals) // 2
    originals = n - 2 * with_copies

    def one(k: int) -> list[str]:
        names = [f"{k:05d}_{c}" for c in ((0, 1, 2) if k < with_copies else (0,))]
        if all((folder / f"{name}.png").exists() for name in names):
            return names  # made by an earlier run with --keep
        rng = np.random.default_rng([seed, k])
        rgb = to_model_input(synthetic.make_image(k % NUM_CLASSES, rng, (320, 320)), SIZE)
        images = [(f"{k:05d}_0", rgb)]
        if k < with_copies:
            images += [(f"{k:05d}_{c}", planted_copy(rgb, rng)) for c in (1, 2)]
        for name, image in images:
            _, png = cv2.imencode(".png", image[:, :, ::-1], prepare.PNG_PARAMS)
            (folder / f"{name}.png").write_bytes(png.tobytes())
        return names

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        made = list(pool.map(one, range(originals)))
    paths, truth = [], []
    for k, names in enumerate(made):
        for name in names:
            paths.append(folder / f"{name}.png")
            truth.append(k)
    return paths, np.array(truth)


def pair_scores(truth: np.ndarray, found: np.ndarray) -> tuple[float, float, int, int]:
    """Recall and precision of 'same group' over all image pairs; planted and found pair counts."""

    def pairs(labels: np.ndarray) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        order = np.argsort(labels, kind="stable")
        for _, run in itertools.groupby(order.tolist(), key=lambda i: labels[i]):
            out.update(itertools.combinations(sorted(run), 2))
        return out

    planted, grouped = pairs(truth), pairs(found)
    hit = len(planted & grouped)
    recall = hit / len(planted) if planted else 1.0
    precision = hit / len(grouped) if grouped else 1.0
    return recall, precision, len(planted), len(grouped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=12_000, help="images in all")
    parser.add_argument("--brute", type=int, default=200, help="subset for the all-pairs baseline")
    parser.add_argument("--threshold", type=float, default=dedupe.DEFAULT_THRESHOLD)
    parser.add_argument("--neighbours", type=int, default=dedupe.DEFAULT_NEIGHBOURS)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="write (and reuse) the images here")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_dedupe_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        paths, truth = make_dataset(folder, args.n)
        made = time.perf_counter() - t
        groups_planted = len(np.unique(truth))
        print(f"{len(paths)} images ({groups_planted} originals, "
              f"{len(paths) - groups_planted} planted copies) made in {made:.0f} s (not timed); "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")  # fmt: skip

        t0 = time.perf_counter()
        scanned = dedupe.scan(paths, args.workers)
        t1 = time.perf_counter()
        grouping = dedupe.find_groups(
            scanned.fingerprints, args.threshold, args.neighbours,
            identical=dedupe._same(scanned.pixel_digests), workers=args.workers,
        )  # fmt: skip
        t2 = time.perf_counter()
        recall, precision, n_planted, n_found = pair_scores(truth, grouping.groups)

        exact = np.arange(len(paths))
        for members in dedupe._same(scanned.pixel_digests):
            exact[members] = members[0]
        exact_recall, exact_precision, _, _ = pair_scores(truth, exact)

        rng = np.random.default_rng(1)
        subset = np.sort(rng.choice(len(paths), min(args.brute, len(paths)), replace=False))
        everything = np.array(list(itertools.combinations(range(len(subset)), 2)))
        tb = time.perf_counter()
        features = dedupe._Features.build(scanned.fingerprints[subset])
        dedupe._verify(features, everything, args.workers or os.cpu_count() or 1)
        per_pair = (time.perf_counter() - tb) / len(everything)
        brute_total = per_pair * len(paths) * (len(paths) - 1) / 2 + (t1 - t0)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    ours = t2 - t0
    rows = [
        ("decode + fingerprint (scan)", f"{t1 - t0:.1f} s", "", ""),
        ("candidates + verify + union-find", f"{t2 - t1:.1f} s",
         f"{len(grouping.pairs)} pairs scored", ""),
        ("ours, total", f"{ours:.1f} s", f"recall {recall:.4f}", f"precision {precision:.4f}"),
        ("exact pixel hash (baseline)", "(in scan)", f"recall {exact_recall:.4f}",
         f"precision {exact_precision:.4f}"),
        (f"all pairs, extrapolated from {len(subset)}", f"{brute_total:.0f} s",
         f"{per_pair * 1e6:.0f} us/pair", ""),
    ]  # fmt: skip
    print(f"\nthreshold {args.threshold}, neighbours {args.neighbours}; planted pairs {n_planted}, "
          f"pairs grouped {n_found}")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for name, *cells in rows:
        print(f"  {name:<{width}}  {cells[0]:>10}  {cells[1]:<22} {cells[2]}")
    print(f"\nall-pairs / ours: {brute_total / ours:.0f}x faster; recall vs exact hashing: "
          f"{recall:.3f} vs {exact_recall:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
