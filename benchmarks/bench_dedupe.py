"""Near-duplicate grouping: speed at dataset scale, and recall/precision on real photos.

Two modes, one table each (both by default):

* ``synthetic``: N processed-looking 256x256 PNGs (default 12,000): synthetic originals,
  40% of which get two planted copies each (``copies.plant``: two or three stacked
  Kaggle-style transformations). Timed per stage, wall and CPU seconds.
* ``real``: the real photos of ../shared/fixtures/real_photos (214 distinct photos of six
  conditions), each with ``--copies`` planted copies (seeded), all as prepare stores them
  (resized to 256 + median blur, PNG). Recall of the planted pairs, pair precision, false
  groups (groups holding copies of two different photos), per transformation family, at
  each threshold of ``--sweep``. ``--seeds 0,1,2`` plants three independent sets of copies
  and adds a row pooled over them: one planting moves recall by about 0.01, so calibrate
  on the pooled row. This is where the default threshold is calibrated.

Making the images is not timed. Baseline in the same run: exact pixel hashes (the usual
"duplicate check").

    python benchmarks/bench_dedupe.py [--mode both|synthetic|real] [--n 12000] [--copies 2]
        [--seeds 0,1,2] [--sweep 0.3,0.4,0.5,0.6] [--threshold T] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from scalpnet.data import copies, grouping, prepare, synthetic
from scalpnet.data.fingerprints import same, scan
from scalpnet.data.preprocess import load_image, to_model_input
from scalpnet.labels import NUM_CLASSES

SIZE = 256
COPY_SHARE = 0.4  # of the synthetic originals get two planted copies
REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real_photos"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _write(folder: Path, name: str, rgb: np.ndarray) -> Path:
    path = folder / f"{name}.png"
    if not path.exists():
        _, png = cv2.imencode(".png", rgb[:, :, ::-1], prepare.PNG_PARAMS)
        path.write_bytes(png.tobytes())
    return path


def make_synthetic(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Write n PNGs; returns their paths and (n,) planted group ids (one per original)."""
    originals = round(n / (1 + 2 * COPY_SHARE))
    with_copies = (n - originals) // 2
    originals = n - 2 * with_copies

    def one(k: int) -> list[Path]:
        rng = np.random.default_rng([seed, k])
        rgb = to_model_input(synthetic.make_image(k % NUM_CLASSES, rng, (320, 320)), SIZE)
        out = [_write(folder, f"{k:05d}_0", rgb)]
        for c in (1, 2) if k < with_copies else ():
            copy = to_model_input(copies.plant(rgb, rng)[0], SIZE)
            out.append(_write(folder, f"{k:05d}_{c}", copy))
        return out

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        made = list(pool.map(one, range(originals)))
    paths = [p for names in made for p in names]
    truth = np.array([k for k, names in enumerate(made) for _ in names])
    return paths, truth


REAL_NAMES = [f"{p.parent.name}/{p.name}" for p in sorted(REAL_PHOTOS.glob("*/*.jpg"))]
# Pairs of real_photos files that are one photo (found by the audit, confirmed by eye)
SAME_PHOTO_CSV = Path(__file__).resolve().parents[1] / "tests/data/real_photos_same_photo.csv"


def make_real(folder: Path, per_photo: int, seed: int = 0):
    """Real photos + planted copies as PNGs: paths, (n,) source photo, (n,) families."""
    sources = sorted(REAL_PHOTOS.glob("*/*.jpg"))
    paths, truth, families = [], [], []
    for k, source in enumerate(sources):
        rgb = load_image(source)
        rng = np.random.default_rng([seed, k])
        paths.append(_write(folder, f"{k:04d}_0", to_model_input(rgb, SIZE)))
        truth.append(k)
        families.append(())
        for c in range(1, per_photo + 1):
            copy, names = copies.plant(rgb, rng)
            paths.append(_write(folder, f"{k:04d}_{c}", to_model_input(copy, SIZE)))
            truth.append(k)
            families.append(names)
    return paths, np.array(truth), families


def _pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    order = np.argsort(labels, kind="stable")
    for _, run in itertools.groupby(order.tolist(), key=lambda i: labels[i]):
        out.update(itertools.combinations(sorted(run), 2))
    return out


def pair_scores(truth: np.ndarray, found: np.ndarray, own: np.ndarray | None = None) -> dict:
    """Recall and precision of 'same group' over all image pairs; false groups.

    ``own``: each image's own photo (before re-exports of one photo were merged into
    ``truth``); adds the recall of the pairs of each photo with its own planted copies.
    """
    planted, grouped = _pairs(truth), _pairs(found)
    hit = len(planted & grouped)
    false_groups = sum(1 for g in np.unique(found) if len(set(truth[found == g].tolist())) > 1)
    out = {
        "hit": hit,
        "recall": hit / len(planted) if planted else 1.0,
        "precision": hit / len(grouped) if grouped else 1.0,
        "planted": len(planted),
        "grouped": len(grouped),
        "false_groups": false_groups,
        "largest": int(np.bincount(np.unique(found, return_inverse=True)[1]).max()),
    }
    if own is not None:
        copies = _pairs(own)
        out |= {"copy_hit": len(copies & grouped), "copies": len(copies)}
    return out


def run_synthetic(args, folder: Path) -> None:
    paths, truth = make_synthetic(folder, args.n)
    print(f"\n== synthetic: {len(paths)} images ({len(np.unique(truth))} originals, "
          f"{len(paths) - len(np.unique(truth))} planted copies); {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    w0, c0 = time.perf_counter(), _cpu()
    scanned = scan(paths, args.workers)
    w1, c1 = time.perf_counter(), _cpu()
    found = grouping.find_groups(
        scanned, args.threshold, args.neighbours, args.workers, word_neighbours=args.word_neighbours
    )
    w2, c2 = time.perf_counter(), _cpu()
    ours = pair_scores(truth, found.groups)
    exact = np.arange(len(paths))
    for members in same(scanned.pixel_digests):
        exact[members] = members[0]
    base = pair_scores(truth, exact)
    scan_name = "decode + fingerprint + view (scan)"
    print(f"  {scan_name:<38} {w1 - w0:7.1f} s wall {c1 - c0:7.1f} s CPU")
    for name, took in found.seconds.items():
        print(f"    {name:<36} {took['wall']:7.1f} s wall {took['cpu']:7.1f} s CPU")
    print(f"  {'find_groups':<38} {w2 - w1:7.1f} s wall {c2 - c1:7.1f} s CPU  "
          f"{len(found.pairs)} pairs verified")  # fmt: skip
    print(f"  {'ours, end to end (scan + find_groups)':<38} {w2 - w0:7.1f} s wall "
          f"{c2 - c0:7.1f} s CPU  load after {os.getloadavg()[0]:.1f}")  # fmt: skip
    _row("ours", ours)
    _row("exact pixel hash", base)


def _row(name: str, r: dict) -> None:
    print(f"  {name:<38} recall {r['recall']:.4f}  precision {r['precision']:.4f}  "
          f"false groups {r['false_groups']}  largest {r['largest']}  "
          f"(planted pairs {r['planted']}, grouped {r['grouped']})")  # fmt: skip
    if r.get("copies"):
        print(f"    of which each photo with its own copies: recall "
              f"{r['copy_hit'] / r['copies']:.4f} ({r['copy_hit']} of {r['copies']}); the rest "
              f"pair a photo's images with a re-export's (SAME_PHOTO_CSV)")  # fmt: skip


STAGES = ("not a candidate", "no alignment", "scored below the threshold",
          "refused by the merge check", "with its photo, apart from a re-export of it")  # fmt: skip


def _stage(score: float | None, threshold: float, with_own: bool) -> str:
    """Why a copy is not in the group of its photo's first image (its own photo, or a
    re-export of it listed in SAME_PHOTO_CSV): its pair with its own photo was never a
    candidate, was verified without an alignment (score 0) or below the threshold, or
    linked them but the merge check refused; or it is with its own photo, and the miss is
    that photo's re-export."""
    if with_own:
        return STAGES[4]
    if score is None:
        return STAGES[0]
    return STAGES[1] if score == 0 else STAGES[2] if score < threshold else STAGES[3]


def _stages(counts: Counter, prefix: str = "") -> str:
    return ", ".join(f"{name} {counts[prefix + name]}" for name in STAGES)


def run_real(args, folder: Path) -> None:
    if not REAL_PHOTOS.is_dir():
        print(f"\n== real: skipped, no fixtures at {REAL_PHOTOS}")
        return
    with open(SAME_PHOTO_CSV, newline="") as handle:
        same_photo = [(row["first"], row["second"]) for row in csv.DictReader(handle)]
    thresholds = [float(t) for t in args.sweep.split(",")]
    pooled: dict[float, Counter] = {t: Counter() for t in thresholds}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        (folder / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        planting = _run_real_planting(args, folder / f"seed{seed}", seed, thresholds, same_photo)
        for threshold, r in planting:
            pooled[threshold].update({k: r[k] for k in r if k.startswith("stage ")})
            counts = ("hit", "planted", "grouped", "copy_hit", "copies")
            pooled[threshold].update({k: r[k] for k in counts})
            pooled[threshold]["false_groups"] += r["false_groups"]
            pooled[threshold]["largest"] = max(pooled[threshold]["largest"], r["largest"])
    if len(seeds) > 1:
        print(f"\n== real, pooled over planting seeds {args.seeds}")
        for threshold, n in pooled.items():
            n["recall"] = n["hit"] / max(n["planted"], 1)
            n["precision"] = n["hit"] / max(n["grouped"], 1)
            _row(f"ours at {threshold}", n)
            print("    copies not grouped with their photo: " + _stages(n, "stage "))


def _run_real_planting(
    args, folder: Path, seed: int, thresholds: list[float], same_photo: list[tuple[str, str]]
):
    """One planting of copies of the real photos: prints its rows, yields (threshold, scores).

    ``same_photo``: pairs of fixture files that are one photo (their copies are one group).
    """
    paths, truth, families = make_real(folder, args.copies, seed)
    # each image's own photo: the latest original at or before it
    own = np.maximum.accumulate([0 if names else k for k, names in enumerate(families)])
    for a, b in same_photo:  # one photo: its copies are one planted group
        truth[truth == REAL_NAMES.index(b)] = REAL_NAMES.index(a)
    print(f"\n== real, planting seed {seed}: {len(paths)} images ({len(np.unique(truth))} real "
          f"photos, {args.copies} planted copies each); load {os.getloadavg()[0]:.1f}")  # fmt: skip
    w0, c0 = time.perf_counter(), _cpu()
    scanned = scan(paths, args.workers)
    print(f"  scan {time.perf_counter() - w0:.1f} s wall, {_cpu() - c0:.1f} s CPU")
    for threshold in thresholds:
        w, c = time.perf_counter(), _cpu()
        found = grouping.find_groups(
            scanned, threshold, args.neighbours, args.workers, word_neighbours=args.word_neighbours
        )
        wall, cpu = time.perf_counter() - w, _cpu() - c
        r = pair_scores(truth, found.groups, own)
        _row(f"ours at {threshold} ({wall:.1f} s, {cpu:.1f} s CPU)", r)
        print(f"    {len(found.pairs)} pairs verified; links refused by the merge check: "
              f"{found.refused}; CPU s per stage: "
              f"{ {k: v['cpu'] for k, v in found.seconds.items()} }")  # fmt: skip
        missed, stages = Counter(), Counter()
        scores = dict(zip(map(tuple, found.pairs.tolist()), found.scores.tolist(), strict=True))
        for k, names in enumerate(families):
            if names and found.groups[k] != found.groups[np.flatnonzero(truth == truth[k])[0]]:
                missed.update(names)
                score = scores.get((int(own[k]), k))  # the copy against its own photo
                stages[_stage(score, threshold, found.groups[k] == found.groups[own[k]])] += 1
        total = Counter(n for names in families for n in names)
        for g in np.unique(found.groups):
            sources = sorted(set(truth[found.groups == g].tolist()))
            if len(sources) > 1:
                print("    false group joins:", ", ".join(REAL_NAMES[k] for k in sources))
        print(
            "    copies not grouped with their photo, by family: "
            + ", ".join(f"{n} {missed[n]}/{total[n]}" for n in copies.FAMILIES)
        )
        print("    ... why: " + _stages(stages))
        yield threshold, r | {f"stage {k}": v for k, v in stages.items()}
    exact = np.arange(len(paths))
    for members in same(scanned.pixel_digests):
        exact[members] = members[0]
    _row("exact pixel hash", pair_scores(truth, exact, own))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("both", "synthetic", "real"), default="both")
    parser.add_argument("--n", type=int, default=12_000, help="synthetic images in all")
    parser.add_argument("--copies", type=int, default=2, help="planted copies per real photo")
    parser.add_argument("--seeds", default="0", help="comma-separated planting seeds (real mode)")
    parser.add_argument("--sweep", default=str(grouping.DEFAULT_THRESHOLD),
                        help="comma-separated thresholds for the real mode")  # fmt: skip
    parser.add_argument("--threshold", type=float, default=grouping.DEFAULT_THRESHOLD)
    parser.add_argument("--neighbours", type=int, default=grouping.DEFAULT_NEIGHBOURS)
    parser.add_argument("--word-neighbours", type=int, default=grouping.DEFAULT_WORD_NEIGHBOURS)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="write (and reuse) the images here")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_dedupe_"))
    try:
        for mode in ("real", "synthetic"):
            if args.mode in ("both", mode):
                (folder / mode).mkdir(parents=True, exist_ok=True)
                (run_real if mode == "real" else run_synthetic)(args, folder / mode)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
