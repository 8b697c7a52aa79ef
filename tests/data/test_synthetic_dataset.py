"""The synthetic dataset on disk: the Kaggle layout, seeded, varied sizes, stale files removed."""

from __future__ import annotations

import hashlib
import re

import pytest
from PIL import Image

from scalpnet import files
from scalpnet.data import synthetic_dataset
from scalpnet.data.preprocess import load_image
from scalpnet.errors import DiskFullError
from scalpnet.labels import CONDITIONS


def test_write_dataset_kaggle_layout_counts_and_names(tmp_path):
    result = synthetic_dataset.write_dataset(tmp_path / "syn", per_class=10, seed=3)
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
            assert min(im.size) >= 160 and max(im.size) <= synthetic_dataset.SIDE_RANGE[1]
    assert len(sizes) > 50  # varied sizes and aspects
    assert load_image(next((tmp_path / "syn").rglob("*.jpg"))).ndim == 3
    assert "Tinea Capitis" in synthetic_dataset.summary(result)


def _digest(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }


def test_write_dataset_is_seeded_and_removes_its_own_stale_files(tmp_path):
    synthetic_dataset.write_dataset(tmp_path / "a", per_class=2, seed=5, workers=2)
    synthetic_dataset.write_dataset(tmp_path / "b", per_class=2, seed=5, workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    synthetic_dataset.write_dataset(tmp_path / "c", per_class=2, seed=6)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")

    foreign = tmp_path / "a" / "train" / "Psoriasis" / "my_own_photo.jpg"
    foreign.write_bytes(b"not ours")
    killed = tmp_path / "a" / "train" / "Psoriasis" / "psoriasis_0001.jpg.123-456.tmp"
    killed.write_bytes(b"half a jpeg")
    synthetic_dataset.write_dataset(tmp_path / "a", per_class=1, seed=5)
    assert len(list((tmp_path / "a").rglob("psoriasis_*.jpg"))) == 1
    assert foreign.exists()  # files we did not write are left alone
    assert not killed.exists()


def test_a_full_disk_is_one_line_and_leaves_only_whole_images(tmp_path, monkeypatch):
    monkeypatch.setenv(files.FAULT_ENV, "enospc:.jpg:5")
    monkeypatch.setattr(files, "_fault_counts", {})
    with pytest.raises(DiskFullError, match="the same seed writes the same files") as caught:
        synthetic_dataset.write_dataset(tmp_path, per_class=10, seed=5, sides=(64, 96), workers=1)
    assert str(caught.value).startswith(f"the disk is full: saving in '{tmp_path}'")
    written = sorted(tmp_path.rglob("*.jpg*"))  # a temporary would end in .tmp
    assert all(p.suffix == ".jpg" and load_image(p).ndim == 3 for p in written)
    assert 4 <= len(written) < 99  # the queued images were dropped, not drawn


def test_write_dataset_rejects_zero_images(tmp_path):
    with pytest.raises(ValueError):
        synthetic_dataset.write_dataset(tmp_path, per_class=0)


def test_write_dataset_draws_within_the_sides_asked_for(tmp_path):
    synthetic_dataset.write_dataset(tmp_path / "small", per_class=3, seed=1, sides=(96, 128))
    sizes = []
    for path in (tmp_path / "small").rglob("*.jpg"):
        with Image.open(path) as im:
            sizes.append(im.size)
    assert len(sizes) == 30
    assert all(96 <= max(s) <= 128 and min(s) >= 48 for s in sizes), sizes
    with pytest.raises(ValueError, match="sides"):
        synthetic_dataset.write_dataset(tmp_path / "bad", per_class=1, sides=(200, 100))
