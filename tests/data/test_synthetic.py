"""The synthetic dataset: seeded, confined signatures, learnable but not from colour alone."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from scalpnet.data import synthetic
from scalpnet.data.preprocess import load_image
from scalpnet.labels import CONDITIONS, NUM_CLASSES


def image(condition: int, seed: int, size=(120, 160), where=None) -> np.ndarray:
    return synthetic.make_image(condition, np.random.default_rng(seed), size, where)


@pytest.mark.parametrize("size", [(480, 640), (100, 100), (64, 200)])
def test_make_image_shape_and_dtype(size):
    out = image(4, 0, size)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    assert out.std() > 5  # not a flat colour


def test_make_image_is_seeded():
    np.testing.assert_array_equal(image(2, 7), image(2, 7))
    assert not np.array_equal(image(2, 7), image(2, 8))


@pytest.mark.parametrize("bad", [-1, 10])
def test_make_image_rejects_unknown_conditions(bad):
    with pytest.raises(ValueError, match="condition"):
        image(bad, 0)


def test_make_image_rejects_tiny_sizes():
    with pytest.raises(ValueError, match="size"):
        image(0, 0, (16, 16))


@pytest.mark.parametrize(("fx", "fy"), [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.8, 0.7)])
def test_where_confines_the_signature_to_a_quarter_around_that_point(fx, fy):
    # The scene does not depend on the condition, so two conditions drawn from the same
    # seed differ only where their signatures are.
    h, w = 240, 320
    box = np.zeros((h, w), bool)
    box[
        max(0, round(fy * h - h / 4)) : round(fy * h + h / 4),
        max(0, round(fx * w - w / 4)) : round(fx * w + w / 4),
    ] = True
    base = image(0, 11, (h, w), (fx, fy)).astype(int)
    for condition in range(1, NUM_CLASSES):
        other = image(condition, 11, (h, w), (fx, fy)).astype(int)
        diff = np.abs(other - base).max(axis=2)
        # outside the box, at most the camera blur's 2-3 px spill at its edge
        outside = diff[~_grow(box, 3)]
        assert outside.max() == 0, CONDITIONS[condition].key
        assert diff[box].mean() > 2, CONDITIONS[condition].key


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    grown = mask.copy()
    for axis in (0, 1):
        for shift in range(1, pixels + 1):
            grown |= np.roll(mask, shift, axis) | np.roll(mask, -shift, axis)
    return grown


def test_random_placement_moves_the_signature():
    centres = set()
    for seed in range(6):
        diff = np.abs(image(6, seed, (240, 320)).astype(int) - image(0, seed, (240, 320))).sum(2)
        ys, xs = np.nonzero(diff > 30)
        centres.add((round(xs.mean() / 40), round(ys.mean() / 40)))
    assert len(centres) >= 3


def _dataset(per_class: int, size=(96, 128), where=(0.25, 0.25)):
    images, labels = [], []
    for condition in range(NUM_CLASSES):
        for i in range(per_class):
            images.append(image(condition, 1000 * condition + i, size, where))
            labels.append(condition)
    return np.array(images), np.array(labels)


def test_average_colour_does_not_give_the_class_away():
    images, labels = _dataset(24)
    features = images.reshape(len(images), -1, 3).mean(axis=1) / 255  # (N, 3)
    train = np.arange(len(labels)) % 4 != 0
    model = LogisticRegression(max_iter=3000).fit(features[train], labels[train])
    assert model.score(features[~train], labels[~train]) <= 0.35  # chance is 0.1


@pytest.mark.slow
def test_a_small_cnn_learns_the_signatures():
    keras = pytest.importorskip("keras")
    images, labels = _dataset(30)
    crops = images[:, :48, :64]  # (N, 48, 64, 3): the quarter the signature is confined to
    train = np.arange(len(labels)) % 3 != 0
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((48, 64, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(16, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu", padding="same"),
            layers.GlobalMaxPooling2D(),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    history = model.fit(
        crops[train],
        labels[train],
        validation_data=(crops[~train], labels[~train]),
        epochs=25,
        batch_size=20,
        verbose=0,
    )
    # 100 held-out images, chance 0.1; measured ~0.85 here
    assert max(history.history["val_accuracy"][-5:]) >= 0.6


def test_write_dataset_kaggle_layout_counts_and_names(tmp_path):
    result = synthetic.write_dataset(tmp_path / "syn", per_class=10, seed=3)
    assert result.total == 100
    for split, expected in (("train", 8), ("val", 1), ("test", 1)):
        for condition in CONDITIONS:
            folder = tmp_path / "syn" / split / condition.english
            files = sorted(folder.iterdir())
            assert len(files) == expected == result.counts[split][condition.key]
            assert all(re.fullmatch(rf"{condition.key}_\d{{4}}\.jpg", f.name) for f in files)
    # numbered 1..N across a class's splits, like the Kaggle set
    names = sorted(p.name for p in (tmp_path / "syn").rglob("alopecia_areata_*.jpg"))
    assert names == [f"alopecia_areata_{i:04d}.jpg" for i in range(1, 11)]
    sizes = set()
    for path in (tmp_path / "syn").rglob("*.jpg"):
        with Image.open(path) as im:
            assert im.format == "JPEG"
            sizes.add(im.size)
            assert min(im.size) >= 160 and max(im.size) <= synthetic.SIDE_RANGE[1]
    assert len(sizes) > 50  # varied sizes and aspects
    assert load_image(next((tmp_path / "syn").rglob("*.jpg"))).ndim == 3
    assert "Tinea Capitis" in synthetic.summary(result)


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }


def test_write_dataset_is_seeded_and_removes_its_own_stale_files(tmp_path):
    synthetic.write_dataset(tmp_path / "a", per_class=2, seed=5, workers=2)
    synthetic.write_dataset(tmp_path / "b", per_class=2, seed=5, workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    synthetic.write_dataset(tmp_path / "c", per_class=2, seed=6)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")

    foreign = tmp_path / "a" / "train" / "Psoriasis" / "my_own_photo.jpg"
    foreign.write_bytes(b"not ours")
    killed = tmp_path / "a" / "train" / "Psoriasis" / "psoriasis_0001.jpg.123-456.tmp"
    killed.write_bytes(b"half a jpeg")
    synthetic.write_dataset(tmp_path / "a", per_class=1, seed=5)
    assert len(list((tmp_path / "a").rglob("psoriasis_*.jpg"))) == 1
    assert foreign.exists()  # files we did not write are left alone
    assert not killed.exists()


def test_write_dataset_rejects_zero_images(tmp_path):
    with pytest.raises(ValueError):
        synthetic.write_dataset(tmp_path, per_class=0)


def test_write_dataset_draws_within_the_sides_asked_for(tmp_path):
    synthetic.write_dataset(tmp_path / "small", per_class=3, seed=1, sides=(96, 128))
    sizes = []
    for path in (tmp_path / "small").rglob("*.jpg"):
        with Image.open(path) as im:
            sizes.append(im.size)
    assert len(sizes) == 30
    assert all(96 <= max(s) <= 128 and min(s) >= 48 for s in sizes), sizes
    with pytest.raises(ValueError, match="sides"):
        synthetic.write_dataset(tmp_path / "bad", per_class=1, sides=(200, 100))
