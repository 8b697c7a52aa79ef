"""Small run folders for the inference, explain, OOD, export and CLI tests.

An untrained ``build_model(weights=None)`` is enough wherever nothing depends on
what the model has learned (schema, parity, calibration and thresholds being
applied, URL loading, threads, bad files, export). It is built and saved once
per test process; each test copies the file into its own run folder.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from scalpnet.labels import CONDITIONS, KEYS

SIZE = 64
# Varied, deliberately non-trivial values so a test can tell they were applied.
THRESHOLDS = tuple(0.2 + 0.06 * i for i in range(len(KEYS)))
TEMPERATURES = tuple(0.5 + 0.3 * i for i in range(len(KEYS)))


@functools.cache
def model_file(size: int = SIZE) -> Path:
    """A saved untrained ScalpNet model at ``size`` px, made once per process."""
    import keras

    from scalpnet.learn.model import build_model, save_model

    keras.utils.set_random_seed(size)  # the same weights in every test process
    folder = Path(tempfile.mkdtemp(prefix="scalpnet-test-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return save_model(build_model(image_size=size, weights=None), folder / "model.keras")


def card(size: int = SIZE, name: str = "test-run") -> dict:
    """A model_card.json with the common.md keys."""
    return {
        "name": name,
        "created": "2026-11-23T00:00:00+00:00",
        "demo": True,
        "image_size": size,
        "labels": [{"key": c.key, "english": c.english, "korean": c.korean} for c in CONDITIONS],
        "preprocessing": "resize + median blur 3 (scalpnet.data.preprocess)",
        "weights": "none",
        "training": {},
        "dataset": {"csv": None, "csv_sha256": None, "split_scheme": "random", "counts": {}},
        "best_epoch": 0,
        "val_metrics": {},
        "versions": {},
        "git_commit": None,
    }


def make_run(folder: Path, size: int = SIZE, *, calibrated: bool = True) -> Path:
    """A run folder: model.keras, model_card.json, thresholds.json, calibration.json."""
    from scalpnet.judge.calibration import Calibration
    from scalpnet.judge.evaluation import save_thresholds

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file(size), folder / "model.keras")
    (folder / "model_card.json").write_text(json.dumps(card(size)), encoding="utf-8")
    save_thresholds(folder, np.array(THRESHOLDS))
    if calibrated:
        Calibration(temperatures=TEMPERATURES).save(folder)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def photo(seed: int = 0, shape=(90, 120)) -> np.ndarray:
    """A random smooth-ish RGB photo, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (shape[0] // 6 + 1, shape[1] // 6 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 6, axis=0), 6, axis=1)[: shape[0], : shape[1]].copy()


def jpeg_bytes(rgb: np.ndarray, **save) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue()


@functools.cache
def onnx_files(size: int = SIZE) -> tuple[Path, Path]:
    """(fp32, int8) ONNX serving models of :func:`model_file`, exported once per process."""
    from scalpnet.learn.model import load_model
    from scalpnet.serve import onnx_export

    folder = model_file(size).parent
    fp32 = onnx_export.export_fp32(load_model(model_file(size)), folder / "model.onnx")
    pixels = np.stack([photo(seed, (size, size)) for seed in range(8)])
    return fp32, onnx_export.quantize_int8(fp32, folder / "model.int8.onnx", pixels)


def add_onnx(folder: Path, size: int = SIZE, *, int8: bool = False) -> Path:
    """Copy the ONNX model(s) of :func:`model_file` into a run folder made by :func:`make_run`."""
    fp32, quantized = onnx_files(size)
    shutil.copy(fp32, folder / "model.onnx")
    if int8:
        shutil.copy(quantized, folder / "model.int8.onnx")
    return folder
