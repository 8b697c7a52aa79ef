"""`Predictor`: load a model once, predict many images, safely from many threads.

A run folder (``model.onnx`` / ``model.int8.onnx`` / ``model.keras`` + ``model_card.json``
+ ``thresholds.json`` + ``calibration.json`` + optional ``ood.npz``), a bare ``.keras``
file, or an ``https://`` URL of either (a ``.keras`` file or a ``.zip`` of a run folder,
with its sha256) becomes a :class:`Predictor`. Pixels are made by
``preprocess.preprocess_image`` only; the forward pass is one call of a runtime
(``runtimes``: ONNX Runtime when the run has an ONNX model, else Keras) that returns the
pooled features (for the OOD score), the probabilities and the class maps (for the CAM).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalpnet.data import preprocess
from scalpnet.errors import InvalidImageError, ModelNotFoundError
from scalpnet.labels import CONDITIONS, NUM_CLASSES
from scalpnet.serve import runtimes
from scalpnet.serve.fetch import check_sha256, fetch_model, file_sha256
from scalpnet.serve.prediction import Prediction

CARD_FILE = "model_card.json"
OOD_FILE = "ood.npz"
DEFAULT_THRESHOLD = 0.5
RUNTIME_SETTING = "SCALPNET_RUNTIME"  # auto | onnx | int8 | keras, for the app and the CLI


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Prepared:
    """One image made ready for the model."""

    pixels: np.ndarray  # (S, S, 3) uint8, exactly what the model sees
    sha256: str | None  # of the input bytes, when bytes or a file were given
    preprocess_ms: float


def _read_source(source) -> tuple[object, str | None]:
    """An image source -> (what to hand to preprocess, sha256 of its bytes or None)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return data, hashlib.sha256(data).hexdigest()
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_file():
            try:
                return path, file_sha256(path)
            except OSError as exc:
                raise InvalidImageError(f"cannot read '{path}': {exc.strerror}") from None
        return path, None  # preprocess raises the "no such image file" error
    if hasattr(source, "read"):  # an upload or open file: read once, hash, keep its name
        data = source.read()
        buffer = io.BytesIO(data)
        buffer.name = getattr(source, "name", None) or "the uploaded data"
        return buffer, hashlib.sha256(data).hexdigest()
    raise TypeError(
        f"expected a path, bytes, a binary file object or an (H, W, 3) uint8 array, "
        f"got {type(source).__name__}"
    )


# ----------------------------------------------------------------------------- predictor
class Predictor:
    """A loaded model with its thresholds, calibration and OOD model. Share it freely.

    Build one with :meth:`load`. Every method is safe to call from several threads at
    once: nothing changes after loading, and both runtimes' forward passes are thread-safe.
    """

    def __init__(
        self,
        runtime,
        *,
        thresholds: np.ndarray | None = None,
        calibration=None,
        ood=None,
        card: dict | None = None,
        source: str = "",
        runtime_note: str | None = None,
    ):
        from scalpnet.judge.calibration import Calibration

        self.runtime = runtime  # runtimes.OnnxRuntime or runtimes.KerasRuntime
        self.runtime_note = runtime_note  # why a faster runtime was not used, or None
        self.image_size = runtime.image_size
        self.thresholds = (
            np.full(NUM_CLASSES, DEFAULT_THRESHOLD)
            if thresholds is None
            else np.asarray(thresholds, dtype=np.float64)
        )
        self.calibration = calibration if calibration is not None else Calibration.identity()
        self.ood = ood
        self.card = card
        self.source = source
        self.run_dir: Path | None = None  # set by load() when a run folder was loaded

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        sha256: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        runtime: str | None = None,
        with_ood: bool = True,
        jit_compile: bool = False,
    ) -> Predictor:
        """Load a run folder, a ``.keras`` file, or an https URL (``sha256`` required).

        A ``.keras`` file next to a ``model_card.json`` is read as its run folder. A
        bare ``.keras`` file gets its image size from the model's input, thresholds of
        0.5, no calibration and no OOD warning.

        Args:
            runtime: "auto" (default: ``$SCALPNET_RUNTIME`` or auto), "onnx", "int8" or
                "keras"; see ``runtimes.open_runtime``.

        Raises:
            ModelNotFoundError: nothing loadable there, a checksum mismatch, a download
                failure, a run folder whose files disagree, or the runtime asked for
                cannot serve it.
        """
        choice = (runtime or os.environ.get(RUNTIME_SETTING) or "auto").strip().lower()
        text = os.fspath(source)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
            path = fetch_model(text, sha256, cache_dir)
        else:
            path = Path(text)
            model_path = path / runtimes.KERAS_FILE if path.is_dir() else path
            if sha256 is not None and model_path.is_file():
                got = file_sha256(model_path)
                if got != check_sha256(text, sha256):
                    raise ModelNotFoundError(
                        f"'{model_path}' has sha256 {got}, expected {sha256.lower()}; "
                        "refusing to load it"
                    )
        if path.is_file() and (path.parent / CARD_FILE).is_file():
            path = path.parent
        if path.is_dir():
            return cls._load_run(path, text, choice, with_ood=with_ood, jit_compile=jit_compile)
        if path.is_file():
            return cls(runtimes.keras_runtime(path, jit_compile=jit_compile), source=text)
        raise ModelNotFoundError(
            f"no model at '{path}': expected a run folder holding {runtimes.KERAS_FILE} or "
            f"{runtimes.FP32_FILE}, a .keras file, or an https:// URL with --sha256"
        )

    @classmethod
    def _load_run(cls, run_dir: Path, source: str, choice: str, *, with_ood, jit_compile):
        from scalpnet.judge.calibration import Calibration
        from scalpnet.judge.evaluation import THRESHOLDS_FILE, load_thresholds
        from scalpnet.judge.ood import OODModel

        if not any((run_dir / f).is_file() for f in (runtimes.KERAS_FILE, runtimes.FP32_FILE)):
            raise ModelNotFoundError(
                f"'{run_dir}' holds no {runtimes.KERAS_FILE}; train one with 'python train.py "
                "--demo' or 'python train.py --data ...'"
            )
        card = _read_card(run_dir / CARD_FILE)
        runtime, note = runtimes.open_runtime(run_dir, choice, jit_compile=jit_compile)
        size = runtime.image_size
        if card is not None and card.get("image_size", size) != size:
            raise ModelNotFoundError(
                f"'{run_dir / CARD_FILE}' says image_size {card['image_size']} but the "
                f"{runtime.name} model takes {size}x{size} images"
            )
        thresholds = (
            load_thresholds(run_dir / THRESHOLDS_FILE)
            if (run_dir / THRESHOLDS_FILE).is_file()
            else None
        )
        ood = None
        if with_ood and (run_dir / OOD_FILE).is_file():
            try:
                ood = OODModel.load(run_dir / OOD_FILE)
            except Exception as exc:
                raise ModelNotFoundError(str(exc)) from None
        predictor = cls(
            runtime,
            thresholds=thresholds,
            calibration=Calibration.load_or_identity(run_dir),
            ood=ood,
            card=card,
            source=source,
            runtime_note=note,
        )
        predictor.run_dir = run_dir
        return predictor

    @property
    def name(self) -> str:
        """The run's name from its card, else the model file's name."""
        if self.card and self.card.get("name"):
            return str(self.card["name"])
        return Path(self.source).stem or "model"

    # ------------------------------------------------------------------ the pieces
    def prepare(self, source) -> Prepared:
        """Any image source -> the (S, S, 3) uint8 pixels the model sees, plus the input's hash.

        ``source`` is a path, bytes, a binary file object, or an (H, W, 3) uint8 RGB array
        (already decoded; it is resized and blurred like any photo).

        Raises:
            InvalidImageError: the source is not a readable image.
        """
        started = time.perf_counter()
        if isinstance(source, np.ndarray):
            if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
                raise InvalidImageError(
                    f"expected an (H, W, 3) uint8 RGB array, got {source.shape} {source.dtype}"
                )
            pixels, digest = preprocess.to_model_input(source, self.image_size), None
        else:
            data, digest = _read_source(source)
            pixels = preprocess.preprocess_image(data, self.image_size)
        return Prepared(pixels, digest, (time.perf_counter() - started) * 1e3)

    def _calibrate(self, probs: np.ndarray) -> np.ndarray:
        """The run's temperatures; without any (all T = 1) probabilities pass through exactly."""
        if all(t == 1.0 for t in self.calibration.temperatures):
            return probs
        return self.calibration.apply(probs)

    def predict_prepared(self, items: Sequence[Prepared], tta: bool = False) -> list[Prediction]:
        """Predictions for images already made ready by :meth:`prepare`, in one batch."""
        if not items:
            return []
        pixels = np.stack([item.pixels for item in items])  # (B, S, S, 3)
        views = _flip_views(pixels) if tta else pixels[None]  # (V, B, S, S, 3)
        n_views, batch = views.shape[:2]
        started = time.perf_counter()
        features, raw, maps = self.runtime.forward(
            views.reshape(n_views * batch, *pixels.shape[1:])
        )
        forward_ms = (time.perf_counter() - started) * 1e3
        raw = raw.reshape(n_views, batch, NUM_CLASSES).astype(np.float64)
        mean_raw = raw.mean(axis=0)  # (B, 10)
        calibrated = self._calibrate(mean_raw)  # (B, 10)
        spread = self._calibrate(raw).std(axis=0) if tta else None  # (B, 10)
        started = time.perf_counter()
        # The OOD model was fitted on un-augmented images: score the original view only.
        scores = self.ood.score(features[:batch]) if self.ood is not None else None
        ood_ms = (time.perf_counter() - started) * 1e3
        predictions = []
        for i, item in enumerate(items):
            timings = {"preprocess": item.preprocess_ms, "forward": forward_ms / batch}
            if scores is not None:
                timings["ood"] = ood_ms / batch
            timings["total"] = sum(timings.values())
            predictions.append(
                Prediction(
                    probabilities=tuple(float(p) for p in calibrated[i]),
                    thresholds=tuple(float(t) for t in self.thresholds),
                    raw_probabilities=tuple(float(p) for p in mean_raw[i]),
                    ood_score=None if scores is None else float(scores[i]),
                    is_ood=bool(scores is not None and scores[i] > self.ood.threshold),
                    uncertainty=None if spread is None else tuple(float(s) for s in spread[i]),
                    image_sha256=item.sha256,
                    timings_ms={k: round(v, 3) for k, v in timings.items()},
                    class_maps=np.array(maps[i], np.float32),  # (h, w, 10), the original view
                )
            )
        return predictions

    # ------------------------------------------------------------------ the API
    def predict(self, image, tta: bool = False) -> Prediction:
        """One image (path, bytes, file object or RGB array) -> :class:`Prediction`.

        Args:
            tta: also predict the horizontally, vertically and doubly flipped image;
                report the mean, and the spread (std) across the views as ``uncertainty``.

        Raises:
            InvalidImageError: not a readable image (the Predictor stays usable).
        """
        started = time.perf_counter()
        prediction = self.predict_prepared([self.prepare(image)], tta=tta)[0]
        prediction.timings_ms["end_to_end"] = round((time.perf_counter() - started) * 1e3, 3)
        return prediction

    def predict_batch(self, images: Sequence, tta: bool = False, batch_size: int = 16):
        """Several images -> list of :class:`Prediction`, in order, ``batch_size`` per forward.

        Raises:
            InvalidImageError: the first unreadable image (nothing is returned then); use
                :meth:`prepare` + :meth:`predict_prepared` to skip bad images instead.
        """
        prepared = [self.prepare(image) for image in images]
        out: list[Prediction] = []
        for start in range(0, len(prepared), max(1, batch_size)):
            out.extend(self.predict_prepared(prepared[start : start + batch_size], tta=tta))
        return out

    def explain(self, image, classes=None) -> dict[int, np.ndarray]:
        """Class activation maps of an image: {condition index: (S, S) float32 in [0, 1]}.

        One forward pass. Default ``classes``: the top condition and every condition above
        its threshold. To explain a Prediction already made, :meth:`explain_prediction`
        needs no forward pass at all.
        """
        return self.explain_prediction(self.predict_prepared([self.prepare(image)])[0], classes)

    def explain_prediction(self, prediction: Prediction, classes=None) -> dict[int, np.ndarray]:
        """Class activation maps drawn from the class maps a Prediction of this Predictor
        carries: {condition index: (S, S) float32 in [0, 1]}, no forward pass.

        Default ``classes``: the prediction's top condition and every positive one.

        Raises:
            ValueError: the prediction carries no class maps (it was not made by a Predictor).
        """
        from scalpnet.serve.explain import cam

        if prediction.class_maps is None:
            raise ValueError(
                "this Prediction carries no class maps; explain the image instead "
                "(Predictor.explain)"
            )
        if classes is None:
            classes = [prediction.top, *(i for i in prediction.positives if i != prediction.top)]
        classes = list(classes)
        heats = cam(prediction.class_maps, classes, self.image_size)
        return dict(zip(classes, heats, strict=True))

    def describe(self) -> dict:
        """What is loaded, for the CLI header, logs and the app's sidebar."""
        return {
            "name": self.name,
            "source": self.source,
            "run_dir": None if self.run_dir is None else os.fspath(self.run_dir),
            "image_size": self.image_size,
            "demo": bool(self.card.get("demo")) if self.card else None,
            "calibrated": any(t != 1.0 for t in self.calibration.temperatures),
            "ood": self.ood is not None,
            "runtime": self.runtime.name,
            "runtime_note": self.runtime_note,
        }


def _flip_views(pixels: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) -> (4, B, S, S, 3): original, left-right, up-down, both."""
    return np.stack([pixels, pixels[:, :, ::-1], pixels[:, ::-1, :], pixels[:, ::-1, ::-1]])


def _read_card(path: Path) -> dict | None:
    """The run's model_card.json, or None without one.

    Raises:
        ModelNotFoundError: not JSON, not an object, an image_size that is no positive
            whole number, or labels other than ScalpNet's conditions in their order.
    """
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"'{path}' is not valid JSON: {exc}") from None
    problem = _card_problem(card)
    if problem:
        raise ModelNotFoundError(f"'{path}' is not a usable model card: {problem}")
    return card


def _card_problem(card: object) -> str | None:
    """What is wrong with a parsed model card, in a few words; None when it is usable."""
    if not isinstance(card, dict):
        return f"it holds a JSON {type(card).__name__}, not an object"
    size = card.get("image_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return f"image_size is {size!r}, not a positive whole number of pixels"
    labels = card.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(e, dict) for e in labels):
        return "labels is not a list of conditions"
    keys = [entry.get("key") for entry in labels]
    if keys and keys != [c.key for c in CONDITIONS]:
        return (
            f"it lists the conditions {keys}; this ScalpNet expects "
            f"{[c.key for c in CONDITIONS]} in that order"
        )
    return None
