"""Shared fixtures, and how the suite is spread over pytest-xdist's workers.

Heavy fixtures (a trained tiny run) are session-scoped: built once per worker process.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from scalpnet.cpu_kernels import use_onednn

# TensorFlow's C++ start-up chatter is not part of any test's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's kernels, as the tools ask for them (TensorFlow leaves them off on AVX2-only CPUs).
use_onednn()

REPO = Path(__file__).resolve().parents[1]
REAL_SCALP = REPO.parent / "shared" / "fixtures" / "real_scalp"
REAL_PHOTOS = REPO.parent / "shared" / "fixtures" / "real_photos"


@pytest.fixture(scope="session")
def real_scalp_dir() -> Path:
    """The 73 real photos and their manifest.csv (read-only)."""
    if not (REAL_SCALP / "manifest.csv").is_file():
        pytest.skip(f"real photo fixtures not found at {REAL_SCALP}")
    return REAL_SCALP


# --------------------------------------------------------------------------- tiny_run
# A ResNet50 trained from scratch on the synthetic set: what fits the CI budget on a
# 2-core CPU (about 3 minutes on 2026-11-24, 526 s beside the other pytest worker on
# 2026-12-05). More images for fewer epochs learn more per minute.
# See tests/learn/test_training.py for what it must reach and what it measured.
# CI machines differ: on a 2-core AVX2 AMD EPYC VM it trained in about 32 minutes with
# Eigen's kernels, past pytest's 900 s limit (oneDNN's, asked for above, train ResNet50
# twice as fast there). The tests that share it get TINY_RUN_TIMEOUT instead.
TINY_RUN = {
    "per_class": 200,  # 160 train, 20 val, 20 test per condition
    "image_size": 64,  # conv5_block3_out is 2x2: Grad-CAM can still tell quadrants apart
    "epochs": 5,
    "batch_size": 32,
    "lr": 1e-3,
    "seed": 0,
}
TINY_RUN_TIMEOUT = 3600  # seconds: the first test to ask for the run pays for training it


def train_tiny_run(root: Path) -> Path:
    """synthetic_dataset.write_dataset -> prepare -> train into ``root/run`` (returned)."""
    from scalpnet.data import prepare, synthetic_dataset
    from scalpnet.learn.config import TrainConfig
    from scalpnet.learn.training import train

    synthetic_dataset.write_dataset(root / "synthetic", per_class=TINY_RUN["per_class"], seed=0)
    prepared = prepare.prepare_dataset(
        prepare.PrepareConfig(
            data=root / "synthetic", out=root / "processed", image_size=TINY_RUN["image_size"]
        ),
        progress=False,
    )
    config = TrainConfig(
        out_dir=root / "run",
        image_size=TINY_RUN["image_size"],
        batch_size=TINY_RUN["batch_size"],
        head_epochs=0,
        finetune_epochs=TINY_RUN["epochs"],
        head_lr=TINY_RUN["lr"],
        weights="none",
        seed=TINY_RUN["seed"],
        patience=TINY_RUN["epochs"],
        augment=False,  # too few epochs for augmentation to pay off
        cache=True,
        demo=True,
        verbose=0,
    )
    return train(config, prepared.csv_path).run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete run folder (model.keras, model_card.json, history.csv, curves.png, logs/)
    of a model trained on synthetic images at 64 px; its card's dataset.csv is a labels.csv
    with train/val/test. Shared by the whole session: copy it before changing anything."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def real_photo_paths() -> list[Path]:
    """The photos of fixtures/real_photos (condition/file.jpg), sorted; skips without them."""
    paths = sorted(REAL_PHOTOS.glob("*/*.jpg"))
    if not paths:
        pytest.skip(f"real photo fixtures not found at {REAL_PHOTOS}")
    return paths


# --------------------------------------------------------------------------- workers
@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (its hook runs later)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the suite over pytest-xdist's workers (pyproject's addopts: ``-n 2 --dist
    loadgroup``).

    Each test module runs whole on one worker, so its module-scoped fixtures are built
    once, and the modules that use ``tiny_run`` share one worker, so the tiny run is trained
    once. The groups with the most ``slow`` tests go first, so that the long ones start
    early and the two workers finish together.
    """
    shares_tiny_run = {item.module.__name__ for item in items if "tiny_run" in item.fixturenames}
    group = {}
    for item in items:
        module = item.module.__name__
        group[item] = "tiny_run" if module in shares_tiny_run else module
        item.add_marker(pytest.mark.xdist_group(group[item]))
        if "tiny_run" in item.fixturenames:  # the closest marker is the one that counts
            own = item.get_closest_marker("timeout")
            limit = max(TINY_RUN_TIMEOUT, own.args[0] if own else 0)
            item.add_marker(pytest.mark.timeout(limit), append=False)
    slow = Counter(group[item] for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[group[item]])  # stable: each module keeps its order
