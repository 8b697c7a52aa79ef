"""The run folder's ONNX models: fp32 and int8, each checked against Keras on the test split.

:func:`export_run` writes, next to ``model.keras``:

- ``model.onnx``: ``runtimes.serving_model`` (features, probs, class maps) as fp32 ONNX
  (``model.export(format="onnx")``, needs tf2onnx and onnx);
- ``model.int8.onnx``: the same, statically quantised by ONNX Runtime (QDQ, per-channel,
  QInt8 weights, QUInt8 activations; the head stays fp32) with activation ranges from the run's
  validation images, padding integers where it padded a float copy (``pad_integers``);
- ``onnx_check.json``: how each compares on the test split. fp32 against Keras (largest
  probability difference within ``FP32_TOLERANCE``); int8 against fp32 through the run's
  calibration and tuned thresholds, the gate ``runtimes.open_runtime`` reads before
  serving int8 by default: top-1 agreement >= 99%, largest calibrated-probability
  difference <= 0.05, no condition's decision flipping on more than 1% of images; and the
  int8 model's features of a seeded noise image (``runtimes.probe_features``), so that a
  server can tell whether it computes the same numbers as the machine that checked it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from scalpnet.errors import ExportError, ModelNotFoundError
from scalpnet.files import atomic_path, disk_full, disk_full_as_error, write_json_atomic
from scalpnet.quiet import quiet_converter
from scalpnet.serve import runtimes
from scalpnet.serve.fetch import file_sha256

FP32_TOLERANCE = 1e-4  # largest |probability difference| of fp32 ONNX vs Keras
GATE = {"min_top1_agreement": 0.99, "max_prob_diff": 0.05, "max_flip_rate": 0.01}
CALIBRATION_IMAGES = 200  # validation images that set the int8 activation ranges
CHECK_IMAGES = 500  # at most this many test images in the check
BATCH = 16


def split_pixels(run_dir: Path, split: str, limit: int, seed: int = 0) -> np.ndarray:
    """(N, S, S, 3) uint8: up to ``limit`` images of a split of the run's dataset, in order.

    Raises:
        ModelNotFoundError / DatasetError: no usable card, CSV or images.
    """
    from scalpnet.data.dataset import read_split
    from scalpnet.data.preprocess import load_image, to_model_input
    from scalpnet.judge.evaluation import read_card

    card = read_card(run_dir)
    size = int(card["image_size"])
    paths = list(read_split(Path(card["dataset"]["csv"]), split)["path"])
    if len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
        paths = [paths[i] for i in keep]
    images = []
    for path in paths:
        rgb = load_image(path)
        images.append(rgb if rgb.shape[:2] == (size, size) else to_model_input(rgb, size))
    return np.stack(images)


def export_fp32(model, out: Path) -> Path:
    """``serving_model(model)`` -> fp32 ONNX at ``out`` (written to a temporary file first).

    Raises:
        ExportError: tf2onnx/onnx missing, or the export failed.
    """
    from scalpnet.serve.export import check_requirements

    check_requirements("onnx")
    serving = runtimes.serving_model(model)
    size = int(model.input_shape[1])
    serving(np.zeros((1, size, size, 3), np.float32), training=False)  # the exporter needs a call
    try:
        with atomic_path(out) as staged, quiet_converter(), collecting_cycles():
            serving.export(os.fspath(staged), format="onnx", verbose=False)
    except Exception as exc:
        if disk_full(exc):
            raise
        raise ExportError(f"exporting to ONNX failed: {type(exc).__name__}: {exc}") from None
    return out


@contextlib.contextmanager
def collecting_cycles(every_s: float = 0.2) -> Iterator[None]:
    """Collect garbage reference cycles every ``every_s`` seconds while the body runs.

    tf2onnx deep-copies its whole graph, weights included (94 MB for ResNet50), before
    each of its optimisers, and drops the old copy as a reference cycle. With TensorFlow
    loaded, Python's full collections are rare (they wait for new long-lived objects to
    reach a quarter of the ~420,000 already there), so the copies piled up: the export of
    the 64 px demo model peaked at 7.2 GiB. The objects that exist before the export are
    frozen (``gc.freeze``), so each collection only walks the export's own objects (about
    10 ms). Measured on the same model: peak 2.7 GiB, and 8 s instead of 22 s.
    """
    gc.collect()
    gc.freeze()
    stop = threading.Event()

    def collect() -> None:
        while not stop.wait(every_s):
            gc.collect()

    collector = threading.Thread(target=collect, name="collect-cycles", daemon=True)
    collector.start()
    try:
        yield
    finally:
        stop.set()
        collector.join()
        gc.unfreeze()


def quantize_int8(fp32: Path, out: Path, pixels: np.ndarray) -> Path:
    """Static int8 quantisation of ``fp32`` with activation ranges from ``pixels`` (N, S, S, 3).

    Raises:
        ExportError: the quantisation failed.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self._batches = iter(
                {name: pixels[i : i + 1].astype(np.float32)} for i in range(len(pixels))
            )

        def get_next(self):
            return next(self._batches, None)

    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(fp32), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch, atomic_path(out) as staged:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            # skip_symbolic_shape: the symbolic pass needs sympy and adds nothing here.
            quant_pre_process(os.fspath(fp32), os.fspath(prepared), skip_symbolic_shape=True)
            quantize_static(
                os.fspath(prepared),
                os.fspath(staged),
                Reader(name),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
                nodes_to_exclude=head_nodes(prepared),
            )
            quantized = onnx.load(os.fspath(staged))
            pad_integers(quantized)
            onnx.save(quantized, os.fspath(staged))
        except Exception as exc:
            if disk_full(exc):
                raise
            raise ExportError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from None
    return out


def pad_integers(model) -> int:
    """Pad the quantised tensor itself where a QDQ model pads its dequantised copy.

    ``DequantizeLinear -> Pad -> QuantizeLinear`` with one scale and zero point on both
    sides and zero padding becomes one ``Pad`` of the integers with the zero point: the
    same numbers. ONNX Runtime drops the Q/DQ pair around ops that only move data
    (Transpose, MaxPool...) but not around Pad, so ResNet50's ``pool1_pad`` ran in float
    between the two: 0.37 ms in ONNX Runtime's profile of the 256 px int8 forward. A one-off
    probe (2026-12-03, sessions timed in turn): 8.24 -> 7.97 ms, the outputs bit-identical.

    Args:
        model: an ``onnx.ModelProto`` from ``quantize_static`` (QDQ), changed in place.

    Returns:
        How many Pad nodes now pad integers.
    """
    from onnx import numpy_helper

    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped = []
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        dq, after = producer.get(pad.input[0]), readers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(readers[dq.output[0]]) != 1:
            continue
        if len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        params = [constants.get(name) for name in (*dq.input[1:3], *q.input[1:3])]
        if mode != b"constant" or value is None or np.any(value != 0) or len(params) != 4:
            continue
        if any(p is None or p.size != 1 for p in params):  # per-channel: not a plain copy
            continue
        scale, zero, q_scale, q_zero = params
        if scale != q_scale or zero != q_zero or zero.dtype != q_zero.dtype:
            continue
        fill = f"{pad.name}/zero_point"
        graph.initializer.append(numpy_helper.from_array(zero.reshape(()), fill))
        inputs = [dq.input[0], pad.input[1], fill, *pad.input[3:]]
        del pad.input[:]
        pad.input.extend(inputs)
        pad.output[0] = q.output[0]
        dropped += [dq, q]
    for node in dropped:
        graph.node.remove(node)
    return len(dropped) // 2


def head_nodes(path: Path) -> list[str]:
    """Names of the head's nodes (Dense + sigmoid, class maps): kept in fp32 by
    :func:`quantize_int8`. They cost nothing to run, and quantising the 2048 -> 10 head
    moved calibrated probabilities by up to 0.1 on the tiny run."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    return [n.name for n in graph.node if "/predictions" in n.name or "/maps" in n.name]


def _outputs(runtime, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) -> (features (N, 2048), raw probs (N, 10)) in batches of BATCH."""
    parts = [runtime.forward(pixels[i : i + BATCH])[:2] for i in range(0, len(pixels), BATCH)]
    return np.concatenate([f for f, _ in parts]), np.concatenate([p for _, p in parts])


def compare(reference: np.ndarray, candidate: np.ndarray, calibration, thresholds) -> dict:
    """Two runtimes' raw probabilities (N, 10) on the same images, through calibration.

    Returns:
        top1_agreement, max_prob_diff (calibrated), max_raw_diff, max_flip_rate (the largest
        share of images on which one condition's tuned-threshold decision differs), n.
    """
    ref = calibration.apply(reference.astype(np.float64))
    cand = calibration.apply(candidate.astype(np.float64))
    flips = ((ref >= thresholds) != (cand >= thresholds)).mean(axis=0)  # (10,)
    return {
        "n": len(ref),
        "top1_agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))),
        "max_prob_diff": float(np.max(np.abs(ref - cand))),
        "max_raw_diff": float(np.max(np.abs(reference - candidate.astype(reference.dtype)))),
        "max_flip_rate": float(flips.max()),
    }


def gate_reasons(measured: dict) -> list[str]:
    """Why int8 fails :data:`GATE` (empty when it passes)."""
    reasons = []
    if not measured["top1_agreement"] >= GATE["min_top1_agreement"]:
        reasons.append(
            f"top-1 agreement with fp32 {measured['top1_agreement']:.1%} < "
            f"{GATE['min_top1_agreement']:.0%}"
        )
    if not measured["max_prob_diff"] <= GATE["max_prob_diff"]:
        reasons.append(
            f"largest calibrated-probability difference {measured['max_prob_diff']:.3f} > "
            f"{GATE['max_prob_diff']}"
        )
    if not measured["max_flip_rate"] <= GATE["max_flip_rate"]:
        reasons.append(
            f"a tuned-threshold decision flips on {measured['max_flip_rate']:.1%} of images > "
            f"{GATE['max_flip_rate']:.0%}"
        )
    return reasons


# The export's stages and their rough share of its time (seconds on the 64-px demo model,
# 2-core CPU): the progress bar counts these, so its time left is an estimate from the start.
STAGE_SECONDS = {"load": 3, "fp32": 15, "check fp32": 4, "int8": 6, "check int8": 2}


def export_run(
    run_dir: str | os.PathLike,
    *,
    int8: bool = True,
    check_images=CHECK_IMAGES,
    progress: bool = False,
):
    """Write model.onnx (and model.int8.onnx) into a run folder, check them, record it.

    ``progress``: draw a bar (the status file, when set, is written either way).

    Returns:
        The record written to ``onnx_check.json``.

    Raises:
        ExportError: packages missing, the export or quantisation failed, or fp32 ONNX
            differs from Keras by more than :data:`FP32_TOLERANCE` (then nothing is kept).
        ModelNotFoundError / DatasetError: no usable model, card or dataset.
        DiskFullError: the disk filled up (no half-written model is left).
    """
    from scalpnet.progress import Progress

    run_dir = Path(run_dir)
    started = time.perf_counter()
    stages = [k for k in STAGE_SECONDS if int8 or "int8" not in k]
    again = f"run 'python -m scalpnet export --run {run_dir} --format int8'"
    with (
        disk_full_as_error(run_dir, None, "model.keras and the rest of the run are whole", again),
        Progress("export", sum(STAGE_SECONDS[k] for k in stages), unit="s", show=progress) as bar,
    ):
        record = _export(run_dir, int8, check_images, lambda k: bar.update(STAGE_SECONDS[k]))
        record["seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(run_dir / runtimes.CHECK_FILE, record)
    return record


def _export(run_dir: Path, int8: bool, check_images: int, done) -> dict:
    """:func:`export_run`'s work; ``done(stage)`` after each of STAGE_SECONDS."""
    from scalpnet.judge.calibration import Calibration
    from scalpnet.judge.evaluation import THRESHOLDS_FILE, load_thresholds
    from scalpnet.learn.model import load_model

    keras_rt = runtimes.KerasRuntime(load_model(run_dir / runtimes.KERAS_FILE))
    test = split_pixels(run_dir, "test", check_images)
    calibration = Calibration.load_or_identity(run_dir)
    thresholds = (
        load_thresholds(run_dir / THRESHOLDS_FILE)
        if (run_dir / THRESHOLDS_FILE).is_file()
        else np.full(10, 0.5)
    )
    fp32_path = run_dir / runtimes.FP32_FILE
    int8_path = run_dir / runtimes.INT8_FILE
    for stale in (fp32_path, int8_path, run_dir / runtimes.CHECK_FILE):
        stale.unlink(missing_ok=True)
    done("load")
    export_fp32(keras_rt.model, fp32_path)
    done("fp32")
    _, keras_probs = _outputs(keras_rt, test)
    _, fp32_probs = _outputs(runtimes.OnnxRuntime(fp32_path), test)
    done("check fp32")
    fp32 = compare(keras_probs, fp32_probs, calibration, thresholds)
    fp32.update(sha256=file_sha256(fp32_path), bytes=fp32_path.stat().st_size)
    fp32["passed"] = fp32["max_raw_diff"] <= FP32_TOLERANCE
    if not fp32["passed"]:
        fp32_path.unlink()
        raise ExportError(
            f"the fp32 ONNX model differs from Keras by up to {fp32['max_raw_diff']:.2e} on "
            f"the test split (tolerance {FP32_TOLERANCE:.0e}); not kept"
        )
    record = {
        "split": "test",
        "gate": GATE,
        "fp32_tolerance": FP32_TOLERANCE,
        "fp32": fp32,
        "int8": None,
    }
    if int8:
        quantize_int8(fp32_path, int8_path, split_pixels(run_dir, "val", CALIBRATION_IMAGES))
        done("int8")
        int8_runtime = runtimes.OnnxRuntime(int8_path)
        _, int8_probs = _outputs(int8_runtime, test)
        probe = runtimes.probe_features(int8_runtime)
        done("check int8")
        measured = compare(fp32_probs, int8_probs, calibration, thresholds)
        reasons = gate_reasons(measured)
        measured["vs_keras"] = compare(keras_probs, int8_probs, calibration, thresholds)
        measured.update(
            sha256=file_sha256(int8_path),
            bytes=int8_path.stat().st_size,
            calibration_images=CALIBRATION_IMAGES,
            passed=not reasons,
            reasons=reasons,
            probe_features=[float(f"{x:.7g}") for x in probe],  # what it computes here
        )
        record["int8"] = measured
    record["served_by_default"] = (
        "onnx-int8" if record["int8"] and record["int8"]["passed"] else "onnx-fp32"
    )
    return record


def summary(record: dict) -> str:
    """One paragraph for the CLI and train.py."""
    fp32 = record["fp32"]
    lines = [f"fp32 ONNX: max |p - Keras| = {fp32['max_raw_diff']:.1e} on {fp32['n']} test images"]
    int8 = record.get("int8")
    if int8:
        verdict = "passed" if int8["passed"] else "FAILED: " + "; ".join(int8["reasons"])
        lines.append(
            f"int8 ONNX: top-1 agreement {int8['top1_agreement']:.1%}, max calibrated |diff| "
            f"{int8['max_prob_diff']:.3f}, max decision flips {int8['max_flip_rate']:.1%} "
            f"({int8['bytes'] / 1e6:.0f} MB vs {fp32['bytes'] / 1e6:.0f} MB): {verdict}"
        )
    lines.append(f"served by default: {record['served_by_default']}")
    return "\n".join(lines)


def require_keras_run(run_dir: Path) -> None:
    """A clear error when ``run_dir`` is not a run folder with ``model.keras``."""
    if not (run_dir / runtimes.KERAS_FILE).is_file():
        raise ModelNotFoundError(f"'{run_dir}' holds no {runtimes.KERAS_FILE} to export")
