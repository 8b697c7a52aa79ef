"""Export: each installed format matches Keras on the same images, and failures are loud."""

from __future__ import annotations

import errno
import importlib.util
import os
from pathlib import Path

import keras
import numpy as np
import pytest
from inference_helpers import model_file

from scalpnet import cli
from scalpnet.errors import DiskFullError, ExportError
from scalpnet.learn.layers import ResNetPreprocess
from scalpnet.learn.model import save_model
from scalpnet.serve import export

FORMATS = ["savedmodel", "onnx", "litert"]


def _installed(fmt: str) -> bool:
    to_export, to_check = export.REQUIREMENTS[fmt]
    return all(importlib.util.find_spec(module) for module, _ in (*to_export, *to_check))


def _needs(fmt: str):
    if not _installed(fmt):
        pytest.skip(f"the packages for {fmt} export are not installed")


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory):
    """A tiny model with ScalpNet's input layer and head: exports in seconds, not minutes."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = ResNetPreprocess(name="resnet_preprocess")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(10, activation="sigmoid", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights(
        [np.random.default_rng(0).normal(0, 0.05, (8, 10)).astype("float32"), np.zeros(10, "f")]
    )
    return save_model(model, tmp_path_factory.mktemp("small") / "model.keras")


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_keras(fmt, small_model_file, tmp_path):
    _needs(fmt)
    out = tmp_path / export.DEFAULT_NAMES[fmt]
    result = export.export_model(small_model_file, fmt, out)
    assert os.fspath(result) == os.fspath(out) and out.exists()
    assert result.max_abs_diff <= 1e-4
    images = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)
    model = keras.saving.load_model(small_model_file)
    expected = np.asarray(model(images, training=False))
    got = export.run_exported(out, fmt, images)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert "max |difference|" in result.summary()


def test_parity_failure_is_loud(small_model_file, tmp_path, monkeypatch):
    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda *a: real(*a) + 1e-3)
    with pytest.raises(ExportError, match=r"differs from the Keras model by up to 1\.00e-03"):
        export.export_model(small_model_file, "savedmodel", tmp_path / "sm")


def test_a_failed_check_or_a_full_disk_leaves_the_previous_export(
    small_model_file, tmp_path, monkeypatch
):
    out = tmp_path / "exported"
    out.write_bytes(b"the export that was there")
    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda *a: real(*a) + 1e-3)
    with pytest.raises(ExportError, match="it was not written"):
        export.export_model(small_model_file, "savedmodel", out)
    assert out.read_bytes() == b"the export that was there"
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary left

    def half_then_full(self, path, **kwargs):
        Path(path).write_bytes(b"half an export")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "export", half_then_full)
    with pytest.raises(DiskFullError, match=r"is as it was\. Free some space") as caught:
        export.export_model(small_model_file, "savedmodel", out)
    assert str(caught.value).startswith(f"the disk is full: saving in '{tmp_path}'")
    assert out.read_bytes() == b"the export that was there"
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]


def test_missing_packages_are_named_with_the_pip_command(monkeypatch, small_model_file, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    with pytest.raises(ExportError, match="pip install tf2onnx"):
        export.export_model(small_model_file, "onnx", tmp_path / "m.onnx")


def test_bad_format_tolerance_and_litert_suffix(small_model_file, tmp_path):
    with pytest.raises(ExportError, match="tolerance must be above 0, got -1"):
        export.export_model(small_model_file, "onnx", tmp_path / "m.onnx", tolerance=-1)
    with pytest.raises(ExportError, match="unknown export format"):
        export.export_model(small_model_file, "coreml", tmp_path / "x")
    with pytest.raises(ExportError, match=r"\.tflite"):
        export.export_model(small_model_file, "litert", tmp_path / "model.bin")


def test_export_verb_writes_into_the_run_folder(small_model_file, capsys):
    code = cli.main(["export", "--run", str(small_model_file.parent), "--format", "savedmodel"])
    assert code == 0
    assert (small_model_file.parent / "export" / "savedmodel" / "saved_model.pb").is_file()
    assert "max |difference|" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet50_export_matches_keras(fmt, tmp_path):
    """The real architecture (untrained, 64 px): every installed format within 1e-4."""
    _needs(fmt)
    result = export.export_model(model_file(), fmt, tmp_path / export.DEFAULT_NAMES[fmt])
    assert result.max_abs_diff <= 1e-4
