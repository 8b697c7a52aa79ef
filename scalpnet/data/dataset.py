"""``labels.csv`` + split name -> a ``tf.data.Dataset`` of (uint8 images, float32 multi-hot).

The processed PNGs written by ``prepare`` are already resized and blurred by
``preprocess.preprocess_image`` at the training image size, so this pipeline
only decodes them: it never resizes (the pixels a model trains on are made
exactly like the pixels it is served). Images are read lazily, batch by batch:
memory is bounded by the batch, shuffle and prefetch buffers, not by the size
of the dataset (the original project loaded every image into RAM as float32).

The training split is an endless stream of epochs, each in its own seeded order
(:func:`make_dataset`, :func:`steps_per_epoch`), so one iterator serves a whole
training phase and the orders never depend on timing.

Augmentation (training split only) runs inside the graph with Keras
preprocessing layers; its float output is rounded back to uint8 so every split
yields the same dtype, which is also what the model is served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scalpnet.errors import DatasetError
from scalpnet.labels import KEYS, NUM_CLASSES

SPLITS = ("train", "val", "test")
SHUFFLE_BUFFER = 1024  # decoded images; used only after a cache on disk
_SHOW_MISSING = 5


@dataclass(frozen=True)
class AugmentConfig:
    """Random, label-preserving changes applied to training batches only.

    Factors follow the Keras layers: rotation and zoom are fractions (0.1 -> up to
    ±36° and ±10 %), contrast a fraction, brightness a fraction of the 0-255 range.
    Scalp photos have no canonical orientation, so both flips are allowed.
    """

    flip: str = "horizontal_and_vertical"
    rotation: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.2
    brightness: float = 0.1


def read_split(csv_path: str | Path, split: str) -> pd.DataFrame:
    """The rows of one split, with absolute image paths, in CSV order.

    Args:
        csv_path: a ``labels.csv`` written by ``prepare`` (paths relative to its folder).
        split: "train", "val" or "test".

    Returns:
        DataFrame with ``path`` (absolute str), the CSV's other columns, and the ten
        condition columns (int 0/1) in :data:`scalpnet.labels.KEYS` order.

    Raises:
        DatasetError: the CSV is missing or malformed, the split is empty, or image files
            it lists do not exist (the first few are named, with the total count).
    """
    csv_path = Path(csv_path)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not csv_path.is_file():
        raise DatasetError(
            f"no labels CSV at '{csv_path}'; run 'python -m scalpnet prepare' to make one"
        )
    try:
        table = pd.read_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"'{csv_path}' is not a readable labels CSV: {exc}") from None
    missing_columns = [c for c in ("path", "split", *KEYS) if c not in table.columns]
    if missing_columns:
        raise DatasetError(
            f"'{csv_path}' lacks the columns {', '.join(missing_columns)}; expected "
            f"path, split and one 0/1 column per condition ({', '.join(KEYS)})"
        )
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        found = sorted(str(s) for s in table["split"].unique())
        raise DatasetError(
            f"'{csv_path}' has no rows for split '{split}' (splits found: {', '.join(found)})"
        )
    labels = rows[list(KEYS)]
    if not labels.isin([0, 1]).all().all():
        raise DatasetError(f"'{csv_path}': condition columns must hold only 0 or 1")
    rows[list(KEYS)] = labels.astype(np.int64)
    rows["path"] = [str((csv_path.parent / p).resolve()) for p in rows["path"]]
    missing = [p for p in rows["path"] if not Path(p).is_file()]
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:_SHOW_MISSING])
        more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
        raise DatasetError(
            f"{len(missing)} of {len(rows)} images of split '{split}' listed in '{csv_path}' "
            f"are missing: {shown}{more}. Re-run 'python -m scalpnet prepare'"
        )
    return rows


def label_matrix(rows: pd.DataFrame) -> np.ndarray:
    """(N, 10) float32 multi-hot labels of a :func:`read_split` frame, in label order."""
    return rows[list(KEYS)].to_numpy(dtype=np.float32)


def _decode(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """File path -> (S, S, 3) uint8; fails in-graph if the stored size is not S."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def stored_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, decoded the same way the pipeline decodes it."""
    image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    return int(image.shape[0]), int(image.shape[1])


def _check_image_size(rows: pd.DataFrame, image_size: int, csv_path: Path) -> None:
    """Raise DatasetError when the first image is not image_size x image_size."""
    first = rows["path"].iloc[0]
    height, width = stored_image_size(first)
    if (height, width) != (image_size, image_size):
        raise DatasetError(
            f"the processed images of '{csv_path}' are {width}x{height} (e.g. '{first}') but "
            f"the model expects {image_size}x{image_size}; the pipeline never resizes. Re-run "
            f"prepare with '--image-size {image_size}' (into a new --out folder), or train "
            f"with '--image-size {height}'"
        )


def make_augmenter(config: AugmentConfig = AugmentConfig(), seed: int = 0) -> keras.Sequential:
    """Keras preprocessing layers: (B, S, S, 3) 0-255 -> same shape float32 0-255, randomised."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip(config.flip, seed=seed),
            keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 3),
            keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 4),
        ],
        name="augment",
    )


def make_dataset(
    csv_path: str | Path,
    split: str,
    *,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    seed: int = 0,
    cache: bool | str | Path = False,
    augment: AugmentConfig | None = AugmentConfig(),
) -> tf.data.Dataset:
    """Batches of (images, labels) for one split of a ``labels.csv``.

    Evaluation (``training=False``): one pass in CSV order. Training: an endless stream
    of epochs, each every image once in its own seeded order, the last batch of an epoch
    possibly partial; give ``fit`` ``steps_per_epoch=``:func:`steps_per_epoch`. One
    iterator then serves a whole training phase (see :func:`_epochs`).

    Args:
        csv_path: the ``labels.csv`` written by ``prepare``.
        split: "train", "val" or "test".
        image_size: side S the stored images must already have (never resized here).
        batch_size: images per batch; the last batch (of an epoch) may be smaller.
        training: endless, shuffled every epoch and augmented; for the train split only.
        seed: seeds the shuffle orders and the augmentation.
        cache: False; True to cache decoded images in memory; or a file path prefix for
            an on-disk cache. Caching stores un-augmented images, so augmentation still
            differs every epoch.
        augment: augmentation settings when ``training``; None turns it off.

    Returns:
        Dataset of (images (B, S, S, 3) uint8 0-255, labels (B, 10) float32 multi-hot).

    Raises:
        DatasetError: see :func:`read_split`, or the stored images are not S x S.
    """
    csv_path = Path(csv_path)
    rows = read_split(csv_path, split)
    _check_image_size(rows, image_size, csv_path)
    paths = tf.constant(rows["path"].to_numpy(dtype=str))
    labels = tf.constant(label_matrix(rows))  # (N, 10) float32

    def decode(data: tf.data.Dataset) -> tf.data.Dataset:
        return data.map(
            lambda path, label: (_decode(path, image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def cached(data: tf.data.Dataset) -> tf.data.Dataset:
        return data.cache("" if cache is True else str(cache)) if cache else data

    if not training:
        data = cached(decode(tf.data.Dataset.from_tensor_slices((paths, labels))))
        return _finish(data.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE), image_size)

    # labels.csv lists images class by class. Put the rows in a seeded random order
    # first, so that whatever is cached is already mixed across classes: a shuffle
    # buffer after a cache only mixes neighbours (measured: with the rows in CSV order
    # and a 1,024-image buffer, 4,800 images gave near single-class batches and
    # training collapsed to chance).
    order = np.random.default_rng(seed).permutation(len(rows))
    rows_data = tf.data.Dataset.from_tensor_slices(
        (tf.gather(paths, order), tf.gather(labels, order))
    )
    if cache:
        # Decoded once. In memory the shuffle buffer holds references to the cached
        # tensors, so it spans the whole split (a full reshuffle each epoch) at no extra
        # memory; from a file cache it holds decoded copies, bounded by SHUFFLE_BUFFER.
        images = cached(decode(rows_data))
        buffer = len(rows) if cache is True else min(len(rows), SHUFFLE_BUFFER)

        def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
            return images.shuffle(buffer, seed=epoch).batch(batch_size)

    else:

        def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
            # Shuffle file names (a few bytes each) before decoding: a full shuffle
            # that holds no pixels.
            shuffled = rows_data.shuffle(len(rows), seed=epoch)
            return decode(shuffled).batch(batch_size)

    batches = _epochs(one_epoch, seed)
    if augment is not None:
        augmenter = make_augmenter(augment, seed)
        batches = batches.map(
            lambda x, y: (_to_uint8(augmenter(x, training=True)), y),
            # Sequential on purpose: the Keras layers draw from a stateful seed
            # generator, and parallel calls would take its values in a racy order
            # (not repeatable). Each call is one vectorised batch, and prefetch
            # overlaps it with the training step.
            num_parallel_calls=None,
        )
    return _finish(batches, image_size)


def _epochs(one_epoch: Callable[[tf.Tensor], tf.data.Dataset], seed: int) -> tf.data.Dataset:
    """Epochs 0, 1, 2, ... forever: ``one_epoch(epoch)``, shuffled with the seeds
    (``seed``, epoch).

    Why not ``shuffle(reshuffle_each_iteration=True).repeat()``: such a shuffle takes its
    seeds in turn from one generator shared by every iterator of the dataset, and Keras
    makes a second iterator under a distribution strategy (to build the model) whose
    prefetching races ahead into the next epoch and takes a seed: the training orders
    then depended on timing (measured: 1- and 2-replica runs drifted apart). Here the
    order of epoch e is a pure function of (seed, e).

    Why endless, not one pass: ``fit`` makes a new iterator of a finite dataset every
    epoch and drops the old one, and dropping an iterator of an autotuned pipeline
    sometimes blocks until tf.data's autotuning thread next wakes: it sleeps 10 ms, 20,
    40, ... (doubling, up to 60 s) from the iterator's first batch, so an epoch of t
    seconds can stall for up to about t more. ``benchmarks/bench_pipeline.py`` (b) shows
    it: on the 2-core VM at 96 px, one iterator gave 51.4 img/s over 8 epochs and a new
    iterator every epoch 41.8 (medians 52.1 and 38.4). Disabling autotuning also avoids
    the stall, but ran slower in a trial here (48.9 against 52.0 img/s).
    """

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        # Traced as a graph function: this sets that graph's own seed (the process's
        # global seed is untouched), so the shuffle seeds are (seed + 1, epoch) whatever
        # the global seed is. Never 0: with a graph seed of 0 TensorFlow's seed check
        # fails on a tensor op seed.
        tf.random.set_seed(seed % (2**31 - 1) + 1)
        return one_epoch(epoch)

    return tf.data.Dataset.counter(dtype=tf.int64).flat_map(epoch_batches)


def steps_per_epoch(csv_path: str | Path, split: str, batch_size: int) -> int:
    """Batches in one epoch of a split: ``ceil(images / batch_size)``."""
    return -(-len(read_split(csv_path, split)) // batch_size)


def _finish(batches: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
    """Static shapes for the model, and prefetching."""
    batches = batches.map(
        lambda x, y: (
            tf.ensure_shape(x, (None, image_size, image_size, 3)),
            tf.ensure_shape(y, (None, NUM_CLASSES)),
        )
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def _to_uint8(images: tf.Tensor) -> tf.Tensor:
    """float 0-255 (B, S, S, 3) -> uint8, rounded and clipped."""
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)
