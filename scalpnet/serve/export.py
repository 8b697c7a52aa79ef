"""Export a ScalpNet model for other runtimes, and prove the export computes the same thing.

Formats (``model.export(path, format=...)`` underneath):

- ``savedmodel``: TensorFlow SavedModel folder (TF Serving, ``tf.saved_model.load``).
- ``onnx``: a ``.onnx`` file (ONNX Runtime); needs ``tf2onnx`` and ``onnx`` to export and
  ``onnxruntime`` for the parity check.
- ``litert``: a ``.tflite`` file (LiteRT / TensorFlow Lite, phones and edge devices);
  checked with ``ai_edge_litert`` when installed, else TensorFlow's own interpreter.

Every export is run on the same images as the Keras model; the largest absolute
difference of the probabilities is reported and above ``tolerance`` the export fails.
All formats take (batch, S, S, 3) float32 RGB pixels 0-255, as ``preprocess_image``
makes them, and return (batch, 10) sigmoid probabilities (uncalibrated; apply the run's
``calibration.json`` and ``thresholds.json`` as ``inference.Predictor`` does).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalpnet.errors import ExportError
from scalpnet.files import AGAIN, disk_full, disk_full_error, temp_path
from scalpnet.quiet import quiet_converter

FORMATS = {"savedmodel": "tf_saved_model", "onnx": "onnx", "litert": "litert"}
DEFAULT_NAMES = {"savedmodel": "savedmodel", "onnx": "model.onnx", "litert": "model.tflite"}
# Importable module -> pip package, per format: (needed to export, needed to check).
REQUIREMENTS = {
    "savedmodel": ((), ()),
    "onnx": ((("tf2onnx", "tf2onnx"), ("onnx", "onnx")), (("onnxruntime", "onnxruntime"),)),
    "litert": ((), ()),
}


@dataclass(frozen=True)
class ExportConfig:
    """What ``python -m scalpnet export`` does."""

    run: Path  # a run folder or a .keras file
    format: str = "savedmodel"
    out: Path | None = None  # default: <run>/export/<savedmodel | model.onnx | model.tflite>
    tolerance: float = 1e-4
    check_images: int = 4  # random images for the parity check
    seed: int = 0


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and how close it is to Keras. ``os.fspath(result)`` is the path."""

    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    seconds: float

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def summary(self) -> str:
        return (
            f"exported {self.format} to {self.path} in {self.seconds:.1f} s; parity with Keras "
            f"on the same images: max |difference| = {self.max_abs_diff:.2e} "
            f"(tolerance {self.tolerance:.0e})"
        )


def _missing(modules) -> list[str]:
    return [package for module, package in modules if importlib.util.find_spec(module) is None]


def check_requirements(fmt: str) -> None:
    """Raise :class:`ExportError` naming the pip packages a format needs but lacks."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    to_export, to_check = REQUIREMENTS[fmt]
    missing = _missing(to_export) + _missing(to_check)
    if missing:
        raise ExportError(
            f"exporting to {fmt} needs the Python package(s) {', '.join(missing)}: "
            f"pip install {' '.join(missing)}"
        )


def _load(source) -> tuple[object, Path | None]:
    """A keras.Model, a run folder or a .keras path -> (model, run folder or None)."""
    from scalpnet.learn.model import load_model

    if not isinstance(source, str | os.PathLike):
        return source, None
    path = Path(source)
    if path.is_dir():
        return load_model(path / "model.keras"), path
    return load_model(path), path.parent


def _check_inputs(model, n: int, seed: int) -> np.ndarray:
    """(n, S, S, 3) float32 test images: uniform noise plus a smooth gradient image."""
    size = int(model.input_shape[1])
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (max(n, 1), size, size, 3)).astype(np.float32)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images[0] = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128.0), axis=-1)
    return images


def run_exported(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Run an exported artifact on (B, S, S, 3) float32 images -> (B, 10) probabilities."""
    if fmt == "savedmodel":
        import tensorflow as tf

        artifact = tf.saved_model.load(os.fspath(path))
        return np.asarray(artifact.serve(tf.constant(images)))
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.asarray(session.run(None, {name: images})[0])
    if fmt == "litert":
        return _run_litert(path, images)
    raise ExportError(f"unknown export format {fmt!r}")


def _run_litert(path: Path, images: np.ndarray) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():  # TF's own interpreter warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=os.fspath(path))
    detail_in = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail_in["index"], list(images.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail_in["index"], images.astype(detail_in["dtype"]))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def export_model(
    source,
    fmt: str = "savedmodel",
    out: str | os.PathLike | None = None,
    *,
    tolerance: float = 1e-4,
    check_images: int = 4,
    seed: int = 0,
) -> ExportResult:
    """Export a model and check it against Keras on the same images.

    Args:
        source: a run folder, a ``.keras`` path, or a ``keras.Model``.
        fmt: "savedmodel", "onnx" or "litert".
        out: output path; default ``<run>/export/<savedmodel|model.onnx|model.tflite>``
            (required when ``source`` is a model object). An existing output is replaced,
            only once the new one has passed the check.
        tolerance: the largest allowed absolute difference of any probability.

    Returns:
        :class:`ExportResult` (``os.fspath(result)`` is the exported path).

    Raises:
        ExportError: unknown format, missing packages (named, with the pip command),
            the export itself failed, or the parity check exceeded ``tolerance``.
        DiskFullError: the disk filled up (an earlier export at ``out`` is kept).
    """
    import time

    if not tolerance > 0:  # also refuses NaN
        raise ExportError(f"tolerance must be above 0, got {tolerance}")
    check_requirements(fmt)
    started = time.perf_counter()
    model, run_dir = _load(source)
    if out is None:
        if run_dir is None:
            raise ExportError("give an output path when exporting a model object")
        out = run_dir / "export" / DEFAULT_NAMES[fmt]
    out = Path(out)
    if fmt == "litert" and out.suffix != ".tflite":
        raise ExportError(f"a LiteRT export must be a .tflite file, got '{out}'")
    out.parent.mkdir(parents=True, exist_ok=True)
    images = _check_inputs(model, check_images, seed)
    # Also builds the model's call graph, which the ONNX exporter needs.
    expected = np.asarray(model(images, training=False))
    staged = temp_path(out, keep_suffix=True)  # checked there; `out` is replaced only then
    try:
        diff = _export_and_check(model, fmt, staged, images, expected, tolerance)
        _remove(out)
        os.replace(staged, out)
    except OSError as exc:
        if not disk_full(exc):
            raise
        _remove(staged)  # before the free space is measured for the message
        kept = f"'{out}' is as it was" if out.exists() else "nothing half-written is kept"
        raise disk_full_error(out.parent, None, kept, AGAIN) from None
    finally:
        _remove(staged)
    return ExportResult(out, fmt, diff, tolerance, time.perf_counter() - started)


def _export_and_check(
    model, fmt: str, path: Path, images: np.ndarray, expected: np.ndarray, tolerance: float
) -> float:
    """Export ``model`` to ``path``; its largest probability difference from Keras on
    ``images`` (N, S, S, 3), whose Keras outputs are ``expected`` (N, 10)."""
    try:
        with quiet_converter():
            model.export(os.fspath(path), format=FORMATS[fmt], verbose=False)
    except OSError:
        raise
    except Exception as exc:
        if "No space left on device" in str(exc):  # TensorFlow's own errors are no OSError
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
        raise ExportError(f"exporting to {fmt} failed: {type(exc).__name__}: {exc}") from None
    got = run_exported(path, fmt, images)
    if got.shape != expected.shape:
        raise ExportError(f"the {fmt} export returns shape {got.shape}, Keras {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"the {fmt} export differs from the Keras model by up to {diff:.2e} "
            f"(tolerance {tolerance:.0e}); it was not written"
        )
    return diff


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def run(config: ExportConfig) -> ExportResult:
    """The ``export`` verb: :func:`export_model` with the config's settings."""
    return export_model(
        config.run,
        config.format,
        config.out,
        tolerance=config.tolerance,
        check_images=config.check_images,
        seed=config.seed,
    )
