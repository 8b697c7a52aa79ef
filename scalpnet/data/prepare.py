"""A dataset folder or CSV -> processed PNGs + ``labels.csv``, with splits and a report.

Three inputs are recognised (see :func:`discover`): the Kaggle layout
(``train/ val/ test/<Class>/*.jpg``), a flat folder of class folders, and a CSV
of image paths with one 0/1 column per condition. Every image goes through
``preprocess.preprocess_image`` (the project's one decode/resize/blur path) and
is written as a PNG whose name depends on its source path only, never on its
split, so a split can be re-decided without re-processing anything.

Re-running skips images whose source is unchanged (size and mtime recorded in a
state file); a run killed mid-way leaves only whole PNGs (temp file + rename)
and the next run finishes the job. The raw dataset is only ever read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import time
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from scalpnet.data import preprocess
from scalpnet.data.layouts import SPLITS, Item, discover, skipped_lines
from scalpnet.data.splits import split_counts, stratified_split
from scalpnet.errors import ConfigError, DatasetError, InvalidImageError
from scalpnet.files import (
    disk_full,
    disk_full_as_error,
    disk_full_error,
    is_leftover_temp,
    make_folder,
    write_bytes_atomic,
)
from scalpnet.labels import CONDITIONS, ENGLISH_NAMES, KEYS, NUM_CLASSES

SPLIT_SCHEMES = ("auto", "random", "grouped")
CSV_NAME = "labels.csv"
REPORT_NAME = "prepare_report.json"
STATE_NAME = ".prepare_state.json"
IMAGES_DIR = "images"
# PNG encoding dominated the run time: one fixed row filter plus Huffman-only deflate is
# ~2.3x faster to write than zlib level 1 with adaptive filters, at about the same size
# (~100 KB for a 256x256 photo); lossless either way. See benchmarks/bench_prepare.py.
PNG_PARAMS = (
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
)  # fmt: skip
# Bump when preprocess_image's output changes, so old PNGs are re-made.
PIPELINE_VERSION = f"preprocess_image v1, median {preprocess.MEDIAN_KERNEL}"

_CHECKPOINT_SECONDS = 2.0
_FINISH = "run the same command again to finish"
EXECUTORS = ("auto", "threads", "processes")


# --------------------------------------------------------------------------- config and results
@dataclass(frozen=True)
class PrepareConfig:
    """How to prepare a dataset. The CLI maps its flags onto these fields."""

    data: Path  # Kaggle folder, folder of class folders, or a CSV
    out: Path  # processed PNGs, labels.csv and prepare_report.json go here
    image_size: int = preprocess.DEFAULT_SIZE
    split: str = "auto"  # "auto" | "random" | "grouped"
    seed: int = 42
    workers: int | None = None  # None: all cores
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test
    dedupe_threshold: float | None = None  # grouped split only; None: grouping's default
    executor: str = "auto"  # "auto" (= threads) | "threads" | "processes" (see executor_kind)


@dataclass(frozen=True)
class PrepareResult:
    """What :func:`prepare_dataset` did."""

    csv_path: Path
    report_path: Path
    counts: dict[str, dict[str, int]]  # split -> condition key -> images with that label
    totals: dict[str, int]  # split -> images
    skipped: list[tuple[Path, str]]  # (file, reason)
    split_scheme: str  # "shipped" | "random" | "grouped"
    layout: str  # "kaggle" | "folders" | "csv"
    image_size: int
    processed: int  # images decoded and written in this run
    reused: int  # images already up to date from an earlier run
    elapsed: float  # seconds
    groups: int | None = None  # near-duplicate groups (grouped split only)
    largest_group: int | None = None  # images in the largest of them


# --------------------------------------------------------------------------- processing
def output_name(item: Item) -> str:
    """``images/<key or multi or none>/<stem>-<hash>.png``: depends on the source only."""
    positives = [KEYS[i] for i, v in enumerate(item.labels) if v]
    folder = positives[0] if len(positives) == 1 else ("multi" if positives else "none")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.source.stem)[:80].strip("._") or "image"
    digest = hashlib.sha1(item.key.encode("utf-8")).hexdigest()[:10]
    return f"{IMAGES_DIR}/{folder}/{stem}-{digest}.png"


def process_image(source: str, dest: str, size: int) -> str | None:
    """Preprocess one image and write it as a PNG. Returns None, or why it was skipped."""
    try:
        rgb = preprocess.preprocess_image(source, size)  # (size, size, 3) uint8
    except InvalidImageError as exc:
        return str(exc)
    except OSError as exc:  # e.g. permission denied
        return f"could not read the file ({exc.strerror or exc})"
    except Exception as exc:  # one odd file must not stop a 12,000-image run
        return f"could not decode it ({type(exc).__name__}: {exc})"
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1], list(PNG_PARAMS))
    if not ok:
        return "could not encode the processed image as PNG"
    write_bytes_atomic(Path(dest), png.tobytes(), durable=False)  # re-made if lost
    return None


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _load_state(path: Path, size: int) -> dict[str, list]:
    """The previous run's {output name: [source key, size, mtime_ns]}, if made the same way."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if state.get("image_size") != size or state.get("pipeline") != PIPELINE_VERSION:
        return {}
    entries = state.get("entries")
    return entries if isinstance(entries, dict) else {}


def _save_state(path: Path, size: int, entries: dict[str, list]) -> None:
    state = {"image_size": size, "pipeline": PIPELINE_VERSION, "entries": entries}
    write_bytes_atomic(path, json.dumps(state, separators=(",", ":")).encode())


def process_chunk(jobs: list[tuple[str, str]], size: int) -> list[str | None]:
    """:func:`process_image` over several (source, dest) pairs: one task, less overhead."""
    return [process_image(source, dest, size) for source, dest in jobs]


def executor_kind(config_kind: str) -> str:
    """ "threads" (the default) or "processes".

    Pillow's decoder, OpenCV and the file writes release the GIL, so threads overlap
    the real work with no start-up cost, and they are safe in any process. Worker
    processes are started with "spawn" (about a second of start-up for the imports):
    forking a process whose OpenCV thread pool has run deadlocks the children in
    ``cv2.setNumThreads``/``parallel_for`` (seen here), and a parent that has loaded
    TensorFlow must not fork either. See benchmarks/bench_prepare.py for both.
    """
    return "processes" if config_kind == "processes" else "threads"


def _make_executor(kind: str, workers: int) -> Executor:
    if kind == "processes":
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    return ThreadPoolExecutor(max_workers=workers)


def _process_all(
    jobs: list[tuple[Item, str]],
    out: Path,
    size: int,
    workers: int,
    kind: str,
    progress: bool,
    on_done,
) -> None:
    """Run :func:`process_image` over ``jobs`` in parallel; ``on_done(item, name, reason)``."""
    from scalpnet.progress import Progress

    if not jobs:
        return
    # Small chunks: few enough tasks to keep IPC cheap, enough to balance the workers.
    chunk = max(1, min(16, len(jobs) // (8 * workers)))
    bar = Progress("prepare", len(jobs), unit="img", show=progress)
    pool = _make_executor(kind, workers)
    try:
        futures = {}
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            pairs = [(str(item.source), str(out / name)) for item, name in part]
            futures[pool.submit(process_chunk, pairs, size)] = part
        for future in as_completed(futures):
            for (item, name), reason in zip(futures[future], future.result(), strict=True):
                on_done(item, name, reason)
            bar.update(len(futures[future]))
    finally:
        # On Ctrl-C or an error, drop the queued work instead of finishing it first.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


# --------------------------------------------------------------------------- the whole stage
def _check_config(config: PrepareConfig) -> None:
    if config.split not in SPLIT_SCHEMES:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_SCHEMES)}, got {config.split!r}")
    if not 16 <= config.image_size <= 4096:
        raise ConfigError(f"image size must be between 16 and 4096 pixels, got {config.image_size}")
    if config.executor not in EXECUTORS:
        raise ConfigError(
            f"executor must be one of {', '.join(EXECUTORS)}, got {config.executor!r}"
        )
    if config.workers is not None and config.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {config.workers}")
    split_counts(0, config.ratios)  # validates the ratios


def _assign_splits(
    config: PrepareConfig, items: list[Item], names: list[str], out: Path
) -> tuple[list[str], list[int] | None, str]:
    """Split names per item, group ids (grouped split only), and the scheme's name."""
    labels = np.array([item.labels for item in items], dtype=np.uint8).reshape(-1, NUM_CLASSES)
    shipped = all(item.split is not None for item in items)
    if config.split == "auto" and shipped:
        return [item.split for item in items], None, "shipped"
    if config.split == "grouped":
        from scalpnet.data import grouping

        kwargs = {} if config.dedupe_threshold is None else {"threshold": config.dedupe_threshold}
        splits, groups = grouping.assign_grouped_splits(
            [out / name for name in names],
            labels,
            ratios=config.ratios,
            seed=config.seed,
            **kwargs,
        )
        return list(splits), [int(g) for g in groups], "grouped"
    return stratified_split(labels, config.ratios, config.seed), None, "random"


def _write_labels_csv(
    path: Path,
    items: list[Item],
    names: list[str],
    splits: list[str],
    groups: list[int] | None,
) -> None:
    order = sorted(range(len(items)), key=lambda i: (SPLITS.index(splits[i]), names[i]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "split", "source", *(["group"] if groups is not None else []), *KEYS])
    for i in order:
        group = [groups[i]] if groups is not None else []
        writer.writerow([names[i], splits[i], str(items[i].source), *group, *items[i].labels])
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def _count(items: list[Item], splits: list[str]) -> tuple[dict, dict]:
    counts = {s: dict.fromkeys(KEYS, 0) for s in SPLITS}
    totals = dict.fromkeys(SPLITS, 0)
    for item, split in zip(items, splits, strict=True):
        totals[split] += 1
        for key, flag in zip(KEYS, item.labels, strict=True):
            counts[split][key] += flag
    return counts, totals


_OUR_PNG = re.compile(r".+-[0-9a-f]{10}\.png")


def _remove_leftovers(images: Path, keep: Iterable[Path]) -> None:
    """Delete temp files from a killed run and PNGs of sources that are gone or now failing.

    Only files this module names (``images/<key|multi|none>/<stem>-<hash>.png``) are touched,
    so an --out that happens to hold other pictures loses none of them; temps of a writer
    still running (another prepare of the same folder, e.g. a second worker) stay.
    """
    keep = set(keep)
    for path in images.parent.glob("*.tmp"):  # labels.csv, the report, the state file
        if is_leftover_temp(path):
            path.unlink(missing_ok=True)
    for folder in (images / name for name in (*KEYS, "multi", "none")):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            ours = is_leftover_temp(path) or (_OUR_PNG.fullmatch(path.name) and path not in keep)
            if ours and path.is_file():
                path.unlink(missing_ok=True)


def prepare_dataset(config: PrepareConfig, progress: bool = True) -> PrepareResult:
    """Turn a raw dataset into processed PNGs, ``labels.csv`` and ``prepare_report.json``.

    Args:
        config: where to read and write, the image size, the split scheme.
        progress: show a progress bar on stderr (when it is a terminal).

    Returns:
        Counts per split and condition, the skipped files, and where the CSV is.

    Raises:
        DatasetError: the input is missing, malformed, or has no readable image.
        ConfigError: a setting is out of range.
        DiskFullError: the disk filled up; says what was kept (whole PNGs, never half).
    """
    start = time.perf_counter()
    _check_config(config)
    out = Path(config.out).expanduser().resolve()
    data = Path(config.data).expanduser()
    if data.is_dir() and out.is_relative_to(data.resolve()):
        raise DatasetError(
            f"the output folder '{out}' is inside the dataset '{data}'; the raw dataset is "
            "never modified, so choose an --out outside it"
        )
    found = discover(data)
    size, workers = config.image_size, config.workers or os.cpu_count() or 1
    make_folder(out)
    state_path = out / STATE_NAME
    old_state = _load_state(state_path, size)

    names = [output_name(item) for item in found.items]
    state: dict[str, list] = {}
    jobs = []
    for item, name in zip(found.items, names, strict=True):
        entry = [item.key, *_stat_key(item.source)]
        if old_state.get(name) == entry and (out / name).is_file():
            state[name] = entry
        else:
            jobs.append((item, name))
    for folder in {(out / name).parent for _, name in jobs}:
        make_folder(folder)

    failed: dict[str, str] = {}
    last_save = [time.monotonic()]

    def on_done(item: Item, name: str, reason: str | None) -> None:
        if reason is None:
            state[name] = [item.key, *_stat_key(item.source)]
        else:
            failed[name] = reason
        if time.monotonic() - last_save[0] > _CHECKPOINT_SECONDS:  # survive a kill mid-run
            _save_state(state_path, size, state)
            last_save[0] = time.monotonic()

    kind = executor_kind(config.executor)
    try:
        _process_all(jobs, out, size, workers, kind, progress, on_done)
    except OSError as exc:
        if not disk_full(exc):
            raise
        kept = f"the {len(state)} of {len(found.items)} images prepared so far are kept"
        raise disk_full_error(out, None, kept, _FINISH) from None
    finally:
        try:
            _save_state(state_path, size, state)  # keep the finished work, even on Ctrl-C
        except OSError as exc:  # on a full disk: the images stay; the next run re-makes them
            if not disk_full(exc):
                raise

    skipped = list(found.skipped)
    kept_items, kept_names = [], []
    for item, name in zip(found.items, names, strict=True):
        if name in failed:
            skipped.append((item.source, failed[name]))
        else:
            kept_items.append(item)
            kept_names.append(name)
    _remove_leftovers(out / IMAGES_DIR, (out / name for name in kept_names))
    if not kept_items:
        raise DatasetError(
            f"none of the {len(found.items)} images in '{data}' could be read; "
            f"first problem: {skipped[0][0]}: {skipped[0][1]}"
        )

    splits, groups, scheme = _assign_splits(config, kept_items, kept_names, out)
    csv_path = out / CSV_NAME
    with disk_full_as_error(out, None, "every prepared image is kept", _FINISH):
        _write_labels_csv(csv_path, kept_items, kept_names, splits, groups)
    counts, totals = _count(kept_items, splits)
    result = PrepareResult(
        csv_path=csv_path,
        report_path=out / REPORT_NAME,
        counts=counts,
        totals=totals,
        skipped=skipped,
        split_scheme=scheme,
        layout=found.layout,
        image_size=size,
        processed=len(jobs) - len(failed),
        reused=len(kept_items) - (len(jobs) - len(failed)),
        elapsed=time.perf_counter() - start,
        groups=None if groups is None else len(set(groups)),
        largest_group=None if groups is None else int(np.bincount(groups).max()),
    )
    with disk_full_as_error(out, None, f"{CSV_NAME} and every image are written", _FINISH):
        _write_report(result, config, workers, kind)
    return result


def _write_report(result: PrepareResult, config: PrepareConfig, workers: int, kind: str) -> None:
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(Path(config.data).expanduser().resolve()),
        "layout": result.layout,
        "csv": result.csv_path.name,
        "split_scheme": result.split_scheme,
        "image_size": result.image_size,
        "seed": config.seed,
        "ratios": list(config.ratios),
        "images": sum(result.totals.values()),
        "totals": result.totals,
        "counts": result.counts,
        "processed": result.processed,
        "reused": result.reused,
        "skipped_count": len(result.skipped),
        "skipped": [{"path": str(p), "reason": r} for p, r in result.skipped],
        "groups": result.groups,
        "largest_group": result.largest_group,
        "empty_splits": empty_splits(result),
        "untrained_conditions": untrained_conditions(result),
        "workers": workers,
        "executor": kind,
        "elapsed_s": round(result.elapsed, 3),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
    }
    write_bytes_atomic(result.report_path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))


def summary(result: PrepareResult) -> str:
    """The table the CLI prints: images per split and condition, then what was skipped."""
    width = max(len(n) for n in ENGLISH_NAMES) + 2
    lines = [f"{'condition':<{width}}" + "".join(f"{s:>8}" for s in SPLITS) + f"{'total':>8}"]
    for c in CONDITIONS:
        row = [result.counts[s][c.key] for s in SPLITS]
        lines.append(f"{c.english:<{width}}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")
    row = [result.totals[s] for s in SPLITS]
    lines.append(f"{'images':<{width}}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")
    lines.append(
        f"split: {result.split_scheme}; {result.processed} processed, {result.reused} already "
        f"up to date, {len(result.skipped)} skipped; {result.elapsed:.1f} s"
    )
    lines.extend(skipped_lines(result.skipped, result.report_path))
    for warning in (empty_splits(result), untrained_conditions(result)):
        if warning:
            lines.append(f"warning: {warning}")
    lines.append(f"wrote {result.csv_path}")
    return "\n".join(lines)


def empty_splits(result: PrepareResult) -> str | None:
    """Which splits hold no image and why, in one phrase; None when none is empty."""
    empty, n = [s for s in SPLITS if not result.totals[s]], sum(result.totals.values())
    if not empty:
        return None
    if result.groups is not None:
        why = (
            f"its {n} images form {result.groups} near-duplicate group(s), the largest of "
            f"{result.largest_group}, and each stays whole in one split"
        )
    elif result.split_scheme == "shipped":
        why = "the dataset's own split folders hold none"
    else:
        why = f"{n} images are too few for three splits"
    return f"{' and '.join(empty)} hold no image ({why}); training needs train and val"


def untrained_conditions(result: PrepareResult) -> str | None:
    """The conditions with images in val or test but none in train, in one phrase; None when
    every condition that has images has some in train."""
    missing = [
        c.english
        for c in CONDITIONS
        if not result.counts["train"][c.key] and any(result.counts[s][c.key] for s in SPLITS)
    ]
    if not missing:
        return None
    has, them, their = ("has", "it", "its") if len(missing) == 1 else ("have", "them", "their")
    return (
        f"{', '.join(missing)} {has} images in val or test but none in train: a model cannot "
        f"learn to recognise {them}, and {their} scores will mean little"
    )
