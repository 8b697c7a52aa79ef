"""Run folders and images for the app's tests and benchmark (AppTest, browser)."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np

from scalpnet.labels import CONDITIONS, KEYS


def write_run(
    folder: Path,
    model_file: Path | None = None,
    ood_threshold: float = 1e12,
    image_size: int = 64,
    onnx: bool = False,
) -> Path:
    """A complete run folder: model (built, or linked), card, thresholds, calibration, OOD;
    with ``onnx``, also its fp32 ``model.onnx`` (served instead of Keras; ~40 s to export)."""
    from scalpnet.judge.ood import OODModel

    folder.mkdir(parents=True)
    if model_file is None:
        import keras

        from scalpnet.learn.model import build_model, save_model

        keras.utils.set_random_seed(7)
        save_model(build_model(image_size=image_size, weights=None), folder / "model.keras")
    else:
        (folder / "model.keras").symlink_to(model_file)
    card = {
        "name": folder.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "demo": True,
        "image_size": image_size,
        "labels": [{"key": c.key, "english": c.english, "korean": c.korean} for c in CONDITIONS],
        "weights": "none",
    }
    (folder / "model_card.json").write_text(json.dumps(card))
    thresholds = {k: 0.3 + 0.04 * i for i, k in enumerate(KEYS)}
    (folder / "thresholds.json").write_text(json.dumps({"thresholds": thresholds}))
    temperatures = {k: 0.5 + 0.15 * i for i, k in enumerate(KEYS)}
    calibration = {"method": "temperature", "fitted_on": "val", "temperature": temperatures}
    (folder / "calibration.json").write_text(json.dumps(calibration))
    # A trivial OOD model: distance to the origin, with the threshold chosen by the test.
    OODModel(
        means=np.zeros((1, 2048), np.float32),
        whitener=np.eye(2048, dtype=np.float32),
        classes=np.array([0]),
        threshold=ood_threshold,
    ).save(folder / "ood.npz")
    # Placeholder numbers: the sidebar must show whatever metrics.json holds.
    metrics = {
        "split": "test",
        "split_scheme": "grouped",
        "n_images": {"test": 30},
        "at_tuned": {"top1_accuracy": 0.5, "macro": {"f1": 0.25}},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if onnx:
        from scalpnet.learn.model import load_model
        from scalpnet.serve.onnx_export import export_fp32

        export_fp32(load_model(folder / "model.keras"), folder / "model.onnx")
    return folder


def jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
