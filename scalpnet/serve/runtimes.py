"""The forward pass, on Keras/TensorFlow or on ONNX Runtime, and which one a run folder gets.

Every runtime maps (B, S, S, 3) uint8 pixels (as ``preprocess`` makes them) to three
float32 arrays in one pass:

- features (B, 2048): the pooled backbone features (for the OOD score);
- probs (B, 10): the raw sigmoid probabilities;
- class maps (B, h, w, 10): ``sum_k w_kc A_k``, the last conv block's map A (h = w = S/32)
  weighted by the head's dense weights, from which the CAM is drawn (``explain.cam``).

The ONNX runtime imports onnxruntime only: no TensorFlow, no Keras. A run folder holds
``model.onnx`` (fp32) and ``model.int8.onnx`` next to ``model.keras`` when ``train.py``
exported them; ``onnx_check.json`` records how each compares with Keras on the test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from scalpnet.errors import ModelNotFoundError
from scalpnet.labels import NUM_CLASSES
from scalpnet.serve.heap import release_freed_memory

KERAS_FILE = "model.keras"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CHECK_FILE = "onnx_check.json"
CHOICES = ("auto", "onnx", "int8", "keras")
FEATURES = 2048
PROBE_SEED = 0  # of the noise image whose features fingerprint a runtime's arithmetic
PROBE_TOLERANCE = 0.01  # largest probe feature change, relative to the largest feature:
# the same CPU gives the same bits; an AVX2-only one moved an int8 model's by 4-7% (docs/deploy.md)


class KerasRuntime:
    """A ``keras.Model`` from ``learn.model`` behind one traced ``tf.function``."""

    def __init__(self, model, *, jit_compile: bool = False, name: str = "keras"):
        import tensorflow as tf

        self.model = model
        self.name = name
        self.image_size = input_size(model.input_shape, model.name)
        serving = serving_model(model)
        size = self.image_size

        @tf.function(
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)],
            jit_compile=jit_compile,
            autograph=False,  # no Python control flow to convert
        )
        def forward(images):
            outputs = serving(tf.cast(images, tf.float32), training=False)
            return tuple(tf.cast(out, tf.float32) for out in outputs)

        # Traced once here, so concurrent first calls never race to trace it.
        self._forward = forward.get_concrete_function()

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 -> (features (B, 2048), probs (B, 10), maps (B, h, w, 10))."""
        features, probs, maps = self._forward(check_pixels(pixels, self.image_size))
        return features.numpy(), probs.numpy(), maps.numpy()


class OnnxRuntime:
    """An ONNX model exported by ``serve.onnx_export`` in an ONNX Runtime CPU session.

    ``InferenceSession.run`` is safe to call from several threads at once.

    Raises:
        ModelNotFoundError: onnxruntime is missing, the file is not a loadable ONNX model,
            or its inputs/outputs are not ScalpNet's (image -> features, probs, maps).
    """

    def __init__(self, path: str | os.PathLike, *, name: str = "onnx", threads: int = 0):
        path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelNotFoundError(
                f"serving '{path}' needs onnxruntime: pip install onnxruntime"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default (one per core)
        options.log_severity_level = 3  # errors only
        # Idle worker threads would spin after every run, taking a small server's CPU from
        # the rest of the app (decoding, Streamlit) between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                os.fspath(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/NoSuchFile types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(f"'{path}' is not a loadable ONNX model: {first}") from None
        release_freed_memory()
        self.path, self.name = path, name
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
        self.image_size = input_size(shape, path)
        ranks = [len(o.shape) for o in outputs]
        if ranks != [2, 2, 4] or outputs[0].shape[1] != FEATURES or outputs[1].shape[1] != 10:
            raise ModelNotFoundError(
                f"'{path}' is not a ScalpNet serving model: its outputs are "
                f"{[tuple(o.shape) for o in outputs]}, expected (B, {FEATURES}) features, "
                f"(B, {NUM_CLASSES}) probabilities and (B, h, w, {NUM_CLASSES}) class maps "
                "(export it with 'python -m scalpnet export --format int8')"
            )
        self._input = inputs[0].name

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 -> (features (B, 2048), probs (B, 10), maps (B, h, w, 10))."""
        pixels = check_pixels(pixels, self.image_size).astype(np.float32)
        features, probs, maps = self._session.run(None, {self._input: pixels})
        return features, probs, maps


def check_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Contiguous (B, size, size, 3) uint8, or ValueError."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
        raise ValueError(f"expected (batch, {size}, {size}, 3) uint8, got {pixels.shape}")
    return pixels


def input_size(shape, where) -> int:
    """S of a (batch, S, S, 3) input shape, or a ModelNotFoundError naming ``where``."""
    shape = tuple(shape)
    if len(shape) != 4 or shape[1] != shape[2] or not isinstance(shape[1], int) or shape[3] != 3:
        raise ModelNotFoundError(
            f"'{where}' takes inputs of shape {shape}; expected (batch, S, S, 3) square RGB"
        )
    return int(shape[1])


def serving_model(model):
    """A ScalpNet ``keras.Model`` -> the same weights with outputs (features, probs, maps).

    The class maps are a bias-free Dense layer holding the head's kernel, applied to every
    cell of ``conv5_block3_out``: (B, h, w, 2048) @ (2048, 10) -> (B, h, w, 10).
    """
    import keras

    from scalpnet.learn.model import FEATURE_LAYER, LAST_CONV_LAYER

    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense) or tuple(head.kernel.shape) != (FEATURES, 10):
        raise ModelNotFoundError(
            f"model '{model.name}' does not end in a Dense({NUM_CLASSES}) head on "
            f"{FEATURES} pooled features; cannot draw its class maps"
        )
    conv = model.get_layer(LAST_CONV_LAYER).output
    maps_layer = keras.layers.Dense(NUM_CLASSES, use_bias=False, dtype="float32", name="maps")
    maps = maps_layer(conv)
    maps_layer.kernel.assign(keras.ops.cast(head.kernel, "float32"))
    features = model.get_layer(FEATURE_LAYER).output
    return keras.Model(model.input, [features, model.output, maps], name=f"{model.name}_serving")


# ----------------------------------------------------------------------------- the choice
def read_check(run_dir: Path) -> dict:
    """``onnx_check.json`` of a run folder, or {} when there is none or it is unreadable."""
    try:
        data = json.loads((run_dir / CHECK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def int8_refusal(run_dir: Path, check: dict) -> str | None:
    """Why ``auto`` must not serve the run's int8 model, or None when its check passed."""
    record = check.get("int8")
    if not isinstance(record, dict):
        return f"{INT8_FILE} has no recorded check in {CHECK_FILE}"
    if not record.get("passed"):
        reasons = "; ".join(record.get("reasons") or ["no reason recorded"])
        return f"{INT8_FILE} failed its check against fp32: {reasons}"
    from scalpnet.serve.fetch import file_sha256

    if record.get("sha256") != file_sha256(run_dir / INT8_FILE):
        return f"{INT8_FILE} is not the file its check in {CHECK_FILE} was recorded for"
    return None


def probe_features(runtime) -> np.ndarray:
    """(2048,) float32: a runtime's pooled features of one seeded noise image, here.

    On x86 CPUs without VNNI, ONNX Runtime adds each pair of u8 x s8 products in 16 bits,
    which saturate (docs/deploy.md): the same int8 model gives other numbers there than on
    a CPU with VNNI, and a check recorded on the one does not hold on the other. The
    export records these features beside the check; ``open_runtime`` computes them again
    before it serves int8.
    """
    size = runtime.image_size
    pixels = np.random.default_rng(PROBE_SEED).integers(0, 256, (1, size, size, 3), np.uint8)
    return np.asarray(runtime.forward(pixels)[0][0], np.float32)


def probe_refusal(runtime, recorded) -> str | None:
    """Why ``runtime`` (the int8 model) does not compute here what it computed where it was
    checked (``recorded``: the check's ``probe_features``), or None."""
    try:
        expected = np.asarray(recorded, np.float32).reshape(FEATURES)
    except (TypeError, ValueError):  # not recorded (an older export), or not numbers
        return (
            f"{CHECK_FILE} does not record what {INT8_FILE} computes, so its check cannot be "
            "confirmed on this CPU; export it again ('python -m scalpnet export --run RUN "
            "--format int8')"
        )
    change = np.abs(probe_features(runtime) - expected).max() / max(np.abs(expected).max(), 1e-6)
    if not change <= PROBE_TOLERANCE:
        return (
            f"{INT8_FILE} computes other numbers on this CPU than where it was checked (its "
            f"probe features moved by {change:.1%} of their range; x86 CPUs without VNNI "
            "saturate int8 products), so its check does not hold here"
        )
    return None


def open_runtime(run_dir: Path, choice: str = "auto", *, jit_compile: bool = False):
    """The runtime a run folder is served with, and a note on why (or None).

    ``auto``: the int8 model when its recorded check passed and it computes here what it
    computed then (:func:`probe_refusal`), else the fp32 ONNX model, else Keras. A model
    file that will not load is skipped with the reason in the note.
    ``onnx`` / ``int8`` / ``keras``: that one or a ModelNotFoundError.

    Returns:
        (runtime, note): the note says why a better runtime was not used.
    """
    if choice not in CHOICES:
        raise ModelNotFoundError(
            f"unknown runtime {choice!r} (SCALPNET_RUNTIME / --runtime); expected one of "
            f"{', '.join(CHOICES)}"
        )
    if choice == "keras":
        return keras_runtime(run_dir / KERAS_FILE, jit_compile=jit_compile), None
    if choice in ("onnx", "int8"):
        path = run_dir / (INT8_FILE if choice == "int8" else FP32_FILE)
        if not path.is_file():
            raise ModelNotFoundError(
                f"runtime {choice} asked for, but '{run_dir}' holds no {path.name}; export it "
                f"with 'python -m scalpnet export --run {run_dir} --format int8'"
            )
        return OnnxRuntime(path, name=f"onnx-{'int8' if choice == 'int8' else 'fp32'}"), None
    notes = []
    if (run_dir / INT8_FILE).is_file():
        check = read_check(run_dir)
        refusal = int8_refusal(run_dir, check)
        if refusal is None:
            try:
                int8 = OnnxRuntime(run_dir / INT8_FILE, name="onnx-int8")
            except ModelNotFoundError as exc:
                refusal = str(exc)
            else:
                refusal = probe_refusal(int8, check["int8"].get("probe_features"))
                if refusal is None:
                    return int8, None
                del int8  # its session's memory goes before the fp32 model's comes
        notes.append(refusal)
    if (run_dir / FP32_FILE).is_file():
        try:
            return OnnxRuntime(run_dir / FP32_FILE, name="onnx-fp32"), "; ".join(notes) or None
        except ModelNotFoundError as exc:
            notes.append(str(exc))
    if not (run_dir / KERAS_FILE).is_file():
        raise ModelNotFoundError(
            "; ".join(notes) or f"'{run_dir}' holds no {KERAS_FILE} and no {FP32_FILE}"
        )
    return keras_runtime(run_dir / KERAS_FILE, jit_compile=jit_compile), "; ".join(notes) or None


def keras_runtime(path: Path, *, jit_compile: bool = False) -> KerasRuntime:
    """A ``.keras`` file -> :class:`KerasRuntime` (TensorFlow is imported here)."""
    try:
        from scalpnet.learn.model import load_model
    except ImportError as exc:
        raise ModelNotFoundError(
            f"serving '{path}' needs TensorFlow and Keras ({exc}); install requirements.txt, "
            "or serve an exported ONNX model"
        ) from None
    return KerasRuntime(load_model(path), jit_compile=jit_compile)


def onnx_probability_fns(run_dir: str | os.PathLike) -> dict:
    """{runtime name: (B, S, S, 3) pixels 0-255 -> (B, 10) raw probabilities} for each ONNX
    model in a run folder (for ``judge.evaluation.evaluate``, which cannot import serve)."""
    fns = {}
    for file, name in ((FP32_FILE, "onnx-fp32"), (INT8_FILE, "onnx-int8")):
        if (Path(run_dir) / file).is_file():
            runtime = OnnxRuntime(Path(run_dir) / file, name=name)

            def probs(pixels: np.ndarray, runtime=runtime) -> np.ndarray:
                return runtime.forward(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))[1]

            fns[name] = probs
    return fns
