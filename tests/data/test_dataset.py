"""The tf.data input pipeline: shapes, dtypes, label order, augmentation, seeds, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from scalpnet.data import dataset  # noqa: E402
from scalpnet.errors import DatasetError  # noqa: E402
from scalpnet.labels import KEYS, NUM_CLASSES  # noqa: E402

SIZE = 32


def write_images(root: Path, per_class: int = 4, size: int = SIZE, ext: str = ".png") -> Path:
    """A labels.csv with random images: per class 2 train, 1 val, 1 test (repeating).

    Columns are written in reverse label order, so readers must select them by name.
    Image i of class c has pixel (0, 0) = (c, i, 7): tests can tell images apart.
    """
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for c, key in enumerate(KEYS):
        for i in range(per_class):
            rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            rgb[0, 0] = (c, i, 7)
            rel = f"images/{key}_{i}{ext}"
            cv2.imwrite(str(root / rel), rgb[:, :, ::-1])
            split = ("train", "train", "val", "test")[i % 4]
            rows.append(
                {"path": rel, "split": split, "source": rel, **{k: int(k == key) for k in KEYS}}
            )
    table = pd.DataFrame(rows)[["path", "split", "source", *reversed(KEYS)]]
    table.to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


@pytest.fixture
def csv_path(tmp_path) -> Path:
    return write_images(tmp_path)


def stored(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1]


def collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def epochs(ds, csv_path, batch_size: int, n: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``n`` epochs of an endless training dataset, read by one iterator."""
    steps = dataset.steps_per_epoch(csv_path, "train", batch_size)
    batches = iter(ds)
    return [collect([next(batches) for _ in range(steps)]) for _ in range(n)]


def test_batches_have_the_documented_shapes_and_dtypes(csv_path):
    ds = dataset.make_dataset(csv_path, "train", image_size=SIZE, batch_size=8, training=True)
    assert ds.element_spec[0].shape.as_list() == [None, SIZE, SIZE, 3]
    assert ds.element_spec[0].dtype == tf.uint8
    assert ds.element_spec[1].shape.as_list() == [None, NUM_CLASSES]
    assert ds.element_spec[1].dtype == tf.float32
    assert dataset.steps_per_epoch(csv_path, "train", 8) == 3
    sizes = [int(x.shape[0]) for x, _ in ds.take(7)]
    assert sizes == [8, 8, 4, 8, 8, 4, 8]  # endless; 20 images per epoch, its last batch partial


def test_eval_split_is_the_stored_pixels_in_csv_order_with_labels_in_label_order(csv_path):
    rows = dataset.read_split(csv_path, "val")
    images, labels = collect(dataset.make_dataset(csv_path, "val", image_size=SIZE, batch_size=3))
    assert len(images) == len(rows) == NUM_CLASSES
    for i, path in enumerate(rows["path"]):
        assert Path(path).is_absolute()
        np.testing.assert_array_equal(images[i], stored(path))
    # The CSV's columns were reversed; the labels still follow labels.KEYS.
    np.testing.assert_array_equal(labels, np.eye(NUM_CLASSES, dtype=np.float32))
    np.testing.assert_array_equal(dataset.label_matrix(rows), labels)


def test_multi_label_rows_and_jpeg_files_are_read(tmp_path):
    csv_path = write_images(tmp_path, ext=".jpg")
    table = pd.read_csv(csv_path)
    table.loc[table["split"] == "test", ["psoriasis", "head_lice"]] = 1
    table.to_csv(csv_path, index=False)
    images, labels = collect(dataset.make_dataset(csv_path, "test", image_size=SIZE))
    assert images.dtype == np.uint8 and images.shape == (NUM_CLASSES, SIZE, SIZE, 3)
    assert (labels.sum(axis=1) >= 2).all()
    assert labels[:, KEYS.index("psoriasis")].all() and labels[:, KEYS.index("head_lice")].all()


def test_augmentation_only_when_training(csv_path):
    rows = dataset.read_split(csv_path, "train")
    originals = {tuple(stored(p)[0, 0]): stored(p) for p in rows["path"]}
    plain_ds = dataset.make_dataset(csv_path, "train", image_size=SIZE, training=True, augment=None)
    [(plain, _)] = epochs(plain_ds, csv_path, 32)
    # Shuffled, but every image is exactly a stored one.
    assert sorted(tuple(x[0, 0]) for x in plain) == sorted(originals)
    assert all(np.array_equal(x, originals[tuple(x[0, 0])]) for x in plain)

    [(augmented, _)] = epochs(
        dataset.make_dataset(csv_path, "train", image_size=SIZE, training=True), csv_path, 32
    )
    assert augmented.dtype == np.uint8
    stored_set = {x.tobytes() for x in originals.values()}
    changed = sum(x.tobytes() not in stored_set for x in augmented)
    assert changed >= len(augmented) - 2  # contrast and brightness alone change nearly all

    evaluated, _ = collect(dataset.make_dataset(csv_path, "val", image_size=SIZE, training=False))
    val_rows = dataset.read_split(csv_path, "val")
    assert all(
        np.array_equal(x, stored(p)) for x, p in zip(evaluated, val_rows["path"], strict=True)
    )


def test_same_seed_same_batches_other_seed_other_batches_new_order_each_epoch(csv_path):
    def run(seed):
        ds = dataset.make_dataset(
            csv_path, "train", image_size=SIZE, batch_size=8, training=True, seed=seed
        )
        return epochs(ds, csv_path, 8, n=2)

    first, again, other = run(1), run(1), run(2)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])
    assert not np.array_equal(first[0][1], first[1][1])  # reshuffled each epoch


@pytest.mark.parametrize("cache", [False, True])
def test_epoch_orders_depend_only_on_seed_and_epoch_not_on_other_iterators(csv_path, cache):
    # Keras makes a second iterator under a distribution strategy; its prefetching ran
    # into the next epoch and took a shared reshuffle seed, so training orders depended
    # on timing. Each epoch's order must be a function of (seed, epoch) alone.
    ds = dataset.make_dataset(
        csv_path, "train", image_size=SIZE, batch_size=8, training=True, augment=None, cache=cache
    )
    reference = epochs(ds, csv_path, 8, n=3)
    racer = iter(ds)
    for _ in range(7):  # another iterator of the same dataset, two epochs ahead
        next(racer)
    for (x1, y1), (x2, y2) in zip(reference, epochs(ds, csv_path, 8, n=3), strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # Each epoch holds every training image once, in an order of its own.
    for images, _ in reference:
        assert sorted(x.tobytes() for x in images) == sorted(x.tobytes() for x in reference[0][0])
    assert not np.array_equal(reference[0][0], reference[1][0])
    assert not np.array_equal(reference[1][0], reference[2][0])


def test_epoch_orders_do_not_depend_on_the_global_seed(csv_path):
    def first_epochs(global_seed):
        tf.random.set_seed(global_seed)  # train() sets it from --seed, which may be 0
        ds = dataset.make_dataset(
            csv_path, "train", image_size=SIZE, batch_size=8, training=True, augment=None
        )
        return epochs(ds, csv_path, 8, n=2)

    for (x0, _), (x5, _) in zip(first_epochs(0), first_epochs(5), strict=True):
        np.testing.assert_array_equal(x0, x5)


def test_memory_cache_decodes_each_image_once(csv_path):
    ds = dataset.make_dataset(
        csv_path, "train", image_size=SIZE, batch_size=8, training=True, augment=None, cache=True
    )
    batches = iter(ds)
    steps = dataset.steps_per_epoch(csv_path, "train", 8)
    first = collect([next(batches) for _ in range(steps)])[0]
    for path in dataset.read_split(csv_path, "train")["path"]:
        Path(path).unlink()  # later epochs must come from the cache
    for _ in range(2):
        later = collect([next(batches) for _ in range(steps)])[0]
        assert sorted(x.tobytes() for x in later) == sorted(x.tobytes() for x in first)


def test_cache_gives_the_same_images(csv_path, tmp_path):
    plain, _ = collect(dataset.make_dataset(csv_path, "val", image_size=SIZE))
    ds = dataset.make_dataset(csv_path, "val", image_size=SIZE, cache=True)
    np.testing.assert_array_equal(collect(ds)[0], plain)
    np.testing.assert_array_equal(collect(ds)[0], plain)
    ds = dataset.make_dataset(
        csv_path, "train", image_size=SIZE, training=True, cache=tmp_path / "c"
    )
    assert epochs(ds, csv_path, 32, n=2)[1][0].shape == (2 * NUM_CLASSES, SIZE, SIZE, 3)


@pytest.mark.parametrize("cache", ["none", "memory", "file"])
def test_training_order_is_mixed_across_classes_with_or_without_a_cache(
    tmp_path, monkeypatch, cache
):
    # labels.csv lists images class by class; a small buffer after a cache must not
    # leave that order in place (it gave near single-class batches and a collapse).
    monkeypatch.setattr(dataset, "SHUFFLE_BUFFER", 2)
    csv_path = write_images(tmp_path, per_class=20)  # 10 training images per class
    ds = dataset.make_dataset(
        csv_path,
        "train",
        image_size=SIZE,
        batch_size=10,
        training=True,
        augment=None,
        cache={"none": False, "memory": True, "file": tmp_path / "cache"}[cache],
    )
    for images, labels in epochs(ds, csv_path, 10, n=2):  # every epoch
        classes = labels.argmax(axis=1)
        assert sorted(map(tuple, images[:, 0, 0].tolist())) == sorted(
            (c, i, 7) for c in range(NUM_CLASSES) for i in range(20) if i % 4 < 2
        )  # each training image exactly once
        rank_corr = np.corrcoef(np.arange(len(classes)), classes)[0, 1]
        assert abs(rank_corr) < 0.5, rank_corr  # CSV order would give ~0.99
        assert min(len(set(batch)) for batch in classes.reshape(-1, 10)) >= 4


def test_missing_files_are_listed_up_front(csv_path):
    rows = dataset.read_split(csv_path, "train")
    for path in rows["path"][:7]:
        Path(path).unlink()
    with pytest.raises(DatasetError) as err:
        dataset.make_dataset(csv_path, "train", image_size=SIZE)
    message = str(err.value)
    assert "7 of 20 images" in message and "and 2 more" in message
    assert Path(rows["path"][0]).name in message
    assert "prepare" in message
    dataset.read_split(csv_path, "val")  # other splits are untouched


def test_wrong_image_size_is_refused_with_the_fix(csv_path):
    with pytest.raises(DatasetError, match="--image-size 48"):
        dataset.make_dataset(csv_path, "train", image_size=48)


def test_a_wrong_sized_image_later_in_the_split_fails_in_the_graph(csv_path):
    rows = dataset.read_split(csv_path, "val")
    last = rows["path"].iloc[-1]
    cv2.imwrite(last, np.zeros((SIZE + 4, SIZE, 3), np.uint8))
    ds = dataset.make_dataset(csv_path, "val", image_size=SIZE, batch_size=4)
    with pytest.raises(tf.errors.InvalidArgumentError):
        collect(ds)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["psoriasis"]), "psoriasis"),
        (lambda t: t.assign(split="train"), "no rows for split 'val'"),
        (lambda t: t.assign(folliculitis=2), "only 0 or 1"),
    ],
)
def test_malformed_csv_is_refused(csv_path, change, message):
    change(pd.read_csv(csv_path)).to_csv(csv_path, index=False)
    with pytest.raises(DatasetError, match=message):
        dataset.read_split(csv_path, "val")


def test_missing_csv_and_unknown_split(tmp_path, csv_path):
    with pytest.raises(DatasetError, match="prepare"):
        dataset.read_split(tmp_path / "nope.csv", "train")
    with pytest.raises(DatasetError, match="unknown split"):
        dataset.read_split(csv_path, "validation")
