"""`Predictor`: load a model once, predict many images, safely from many threads.

A run folder (``model.keras`` + ``model_card.json`` + ``thresholds.json`` +
``calibration.json`` + optional ``ood.npz``), a bare ``.keras`` file, or an
``https://`` URL of either (a ``.keras`` file or a ``.zip`` of a run folder, with
its sha256) becomes a :class:`Predictor`. Pixels are made by
``preprocess.preprocess_image`` only; the forward pass is one traced
``tf.function`` that returns the pooled features (for the OOD score) and the
probabilities together.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalpnet.data import preprocess
from scalpnet.errors import InvalidImageError, ModelNotFoundError
from scalpnet.labels import CONDITIONS, NUM_CLASSES
from scalpnet.serve.prediction import Prediction

MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
OOD_FILE = "ood.npz"
DEFAULT_THRESHOLD = 0.5
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$SCALPNET_CACHE`` or ``~/.cache/scalpnet/models``: where downloaded models live."""
    env = os.environ.get("SCALPNET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "scalpnet" / "models"


# ----------------------------------------------------------------------------- download
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    local = parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
    if parts.scheme != "https" and not local:
        raise ModelNotFoundError(
            f"model URL '{url}' must start with https:// (plain http only for 127.0.0.1)"
        )
    return parts


def _check_sha256(url: str, sha256: str | None) -> str:
    value = (sha256 or "").strip().lower()
    if not _SHA256.match(value):
        raise ModelNotFoundError(
            f"a model URL needs its sha256 (64 hex digits) to be verified; got {sha256!r} "
            f"for '{url}'"
        )
    return value


def fetch_model(
    url: str,
    sha256: str | None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` once into the cache and verify its sha256.

    A ``.zip`` (a zipped run folder) is unpacked next to it and the folder returned.

    Returns:
        The path of the verified ``.keras`` file, or of the unpacked run folder.

    Raises:
        ModelNotFoundError: no/invalid sha256, not https, server unreachable or
            answering an error, or the downloaded bytes do not match the sha256.
    """
    parts = _check_url(url)
    expected = _check_sha256(url, sha256)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.unquote(parts.path)).name)
    target = cache / f"{expected[:16]}-{name or MODEL_FILE}"
    if not (target.is_file() and file_sha256(target) == expected):
        _download(url, target, expected, timeout)
    if target.suffix.lower() == ".zip":
        return _unpack_run(target)
    return target


def _download(url: str, target: Path, expected: str, timeout: float) -> None:
    """Stream ``url`` into ``target`` through a temporary file, hashing as it goes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if got != expected:
            raise ModelNotFoundError(
                f"the file downloaded from '{url}' has sha256 {got}, expected {expected}; "
                "refusing to load it (wrong URL, wrong checksum, or a tampered file)"
            )
        os.replace(tmp, target)
    except urllib.error.HTTPError as exc:
        raise ModelNotFoundError(
            f"could not download the model: '{url}' answered HTTP {exc.code} {exc.reason}"
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelNotFoundError(
            f"could not download the model from '{url}': {reason} (is the server up?)"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unpack_run(archive: Path) -> Path:
    """Unpack a zipped run folder once; returns the folder holding ``model.keras``."""
    folder = archive.with_suffix("")
    if not (folder / ".complete").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=archive.parent))
        try:
            with zipfile.ZipFile(archive) as zipped:
                for member in zipped.namelist():
                    resolved = (staging / member).resolve()
                    if not resolved.is_relative_to(staging.resolve()):
                        raise ModelNotFoundError(f"'{archive}' holds an unsafe path: {member!r}")
                zipped.extractall(staging)
            (staging / ".complete").touch()
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        except zipfile.BadZipFile as exc:
            raise ModelNotFoundError(f"'{archive}' is not a zip file: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    models = sorted(folder.rglob(MODEL_FILE))
    if not models:
        raise ModelNotFoundError(f"the zip '{archive}' holds no {MODEL_FILE}")
    return models[0].parent


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
    once: after loading, the only mutable state is the lazily built Grad-CAM helper,
    created under a lock.
    """

    def __init__(
        self,
        model,
        *,
        image_size: int,
        thresholds: np.ndarray | None = None,
        calibration=None,
        ood=None,
        card: dict | None = None,
        source: str = "",
        jit_compile: bool = False,
    ):
        import tensorflow as tf

        from scalpnet.judge.calibration import Calibration
        from scalpnet.learn.model import features_model

        self.model = model
        self.image_size = int(image_size)
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
        self._lock = threading.Lock()
        self._gradcam = None
        two_headed = features_model(model)  # -> [(B, 2048) features, (B, 10) probabilities]
        size = self.image_size

        @tf.function(
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)],
            jit_compile=jit_compile,
            autograph=False,  # no Python control flow to convert
        )
        def forward(images):
            features, probs = two_headed(tf.cast(images, tf.float32), training=False)
            return tf.cast(features, tf.float32), tf.cast(probs, tf.float32)

        # Traced once here, so concurrent first calls never race to trace it.
        self._forward = forward.get_concrete_function()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        sha256: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        with_ood: bool = True,
        jit_compile: bool = False,
    ) -> Predictor:
        """Load a run folder, a ``.keras`` file, or an https URL (``sha256`` required).

        A ``.keras`` file next to a ``model_card.json`` is read as its run folder. A
        bare ``.keras`` file gets its image size from the model's input, thresholds of
        0.5, no calibration and no OOD warning.

        Raises:
            ModelNotFoundError: nothing loadable there, a checksum mismatch, a download
                failure, or a run folder whose files disagree.
        """
        text = os.fspath(source)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
            path = fetch_model(text, sha256, cache_dir)
        else:
            path = Path(text)
            model_path = path / MODEL_FILE if path.is_dir() else path
            if sha256 is not None and model_path.is_file():
                got = file_sha256(model_path)
                if got != _check_sha256(text, sha256):
                    raise ModelNotFoundError(
                        f"'{model_path}' has sha256 {got}, expected {sha256.lower()}; "
                        "refusing to load it"
                    )
        if path.is_file() and (path.parent / CARD_FILE).is_file():
            path = path.parent
        if path.is_dir():
            return cls._load_run(path, text, with_ood=with_ood, jit_compile=jit_compile)
        if path.is_file():
            return cls._load_bare(path, text, jit_compile=jit_compile)
        raise ModelNotFoundError(
            f"no model at '{path}': expected a run folder holding {MODEL_FILE}, a .keras "
            "file, or an https:// URL with --sha256"
        )

    @classmethod
    def _load_bare(cls, path: Path, source: str, *, jit_compile: bool) -> Predictor:
        from scalpnet.learn.model import load_model

        model = load_model(path)
        return cls(model, image_size=_input_size(model, path), source=source,
                   jit_compile=jit_compile)  # fmt: skip

    @classmethod
    def _load_run(cls, run_dir: Path, source: str, *, with_ood: bool, jit_compile: bool):
        from scalpnet.judge.calibration import Calibration
        from scalpnet.judge.evaluation import THRESHOLDS_FILE, load_thresholds
        from scalpnet.judge.ood import OODModel
        from scalpnet.learn.model import load_model

        if not (run_dir / MODEL_FILE).is_file():
            raise ModelNotFoundError(
                f"'{run_dir}' holds no {MODEL_FILE}; train one with 'python train.py --demo' "
                "or 'python train.py --data ...'"
            )
        card = _read_card(run_dir / CARD_FILE)
        model = load_model(run_dir / MODEL_FILE)
        size = _input_size(model, run_dir / MODEL_FILE)
        if card is not None and int(card.get("image_size", size)) != size:
            raise ModelNotFoundError(
                f"'{run_dir / CARD_FILE}' says image_size {card['image_size']} but the model "
                f"takes {size}x{size} images"
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
            model,
            image_size=size,
            thresholds=thresholds,
            calibration=Calibration.load_or_identity(run_dir),
            ood=ood,
            card=card,
            source=source,
            jit_compile=jit_compile,
        )
        predictor.run_dir = run_dir
        return predictor

    @property
    def name(self) -> str:
        """The run's name from its card, else the model file's name."""
        if self.card and self.card.get("name"):
            return str(self.card["name"])
        return Path(self.source).stem or self.model.name

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

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 -> ((B, 2048) features, (B, 10) raw probabilities), float32."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"expected (batch, {self.image_size}, {self.image_size}, 3) uint8, "
                f"got {pixels.shape}"
            )
        features, probs = self._forward(pixels)
        return features.numpy(), probs.numpy()

    def predict_prepared(self, items: Sequence[Prepared], tta: bool = False) -> list[Prediction]:
        """Predictions for images already made ready by :meth:`prepare`, in one batch."""
        if not items:
            return []
        pixels = np.stack([item.pixels for item in items])  # (B, S, S, 3)
        views = _flip_views(pixels) if tta else pixels[None]  # (V, B, S, S, 3)
        n_views, batch = views.shape[:2]
        started = time.perf_counter()
        features, raw = self.forward(views.reshape(n_views * batch, *pixels.shape[1:]))
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

    def explain(self, image, prediction: Prediction | None = None, classes=None):
        """Grad-CAM heatmaps: {condition index: (S, S) float32 in [0, 1]}.

        Default ``classes``: the top condition and every condition above its threshold.
        """
        from scalpnet.serve.explain import GradCam

        prepared = self.prepare(image)
        if classes is None:
            if prediction is None:
                prediction = self.predict_prepared([prepared])[0]
            classes = [prediction.top, *(i for i in prediction.positives if i != prediction.top)]
        with self._lock:
            if self._gradcam is None:
                self._gradcam = GradCam(self.model)
            gradcam = self._gradcam
        heats = gradcam(prepared.pixels, list(classes))
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
        }


def _flip_views(pixels: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) -> (4, B, S, S, 3): original, left-right, up-down, both."""
    return np.stack([pixels, pixels[:, :, ::-1], pixels[:, ::-1, :], pixels[:, ::-1, ::-1]])


def _input_size(model, path: Path) -> int:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None or shape[3] != 3:
        raise ModelNotFoundError(
            f"'{path}' takes inputs of shape {shape}; expected (batch, S, S, 3) square RGB"
        )
    return int(shape[1])


def _read_card(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"'{path}' is not valid JSON: {exc}") from None
    keys = [entry.get("key") for entry in card.get("labels", [])] if isinstance(card, dict) else []
    if keys and keys != [c.key for c in CONDITIONS]:
        raise ModelNotFoundError(
            f"'{path}' lists the conditions {keys}; this ScalpNet expects "
            f"{[c.key for c in CONDITIONS]} in that order"
        )
    return card


# ----------------------------------------------------------------------------- the predict verb
@dataclass(frozen=True)
class PredictConfig:
    """What ``python -m scalpnet predict`` does."""

    images: tuple[Path, ...]
    run: str  # a run folder, a .keras file, or an https URL (then sha256 is required)
    sha256: str | None = None
    tta: bool = False
    gradcam: Path | None = None  # overlay PNG of the top condition (others: <stem>_<key>.png)
    batch_size: int = 16


@dataclass(frozen=True)
class ImageResult:
    image: str
    prediction: Prediction
    gradcam: tuple[Path, ...] = ()
    ood_threshold: float | None = None


@dataclass(frozen=True)
class PredictReport:
    """The predictions that worked and one error line for each image that did not."""

    model: dict
    results: tuple[ImageResult, ...]
    errors: tuple[tuple[str, str], ...]  # (image, message)

    def text(self) -> str:
        """Human-readable: per image, every probability, the positives, the top, any warning."""
        m = self.model
        lines = [
            f"model: {m['name']} ({m['image_size']} px"
            + (", DEMO model trained on synthetic data" if m.get("demo") else "")
            + ("" if m["calibrated"] else ", uncalibrated")
            + ("" if m["ood"] else ", no out-of-distribution check")
            + ")"
        ]
        for result in self.results:
            lines += ["", *_describe_prediction(result)]
        return "\n".join(lines)

    def to_json(self) -> str:
        """A JSON document: model, results (condition keys), errors."""
        results = []
        for result in self.results:
            data = {"image": result.image, **result.prediction.to_dict()}
            data["top_name"] = CONDITIONS[result.prediction.top].english
            data["ood_threshold"] = result.ood_threshold
            data["gradcam"] = [os.fspath(p) for p in result.gradcam]
            results.append(data)
        errors = [{"image": image, "error": message} for image, message in self.errors]
        return json.dumps({"model": self.model, "results": results, "errors": errors}, indent=2)


def _describe_prediction(result: ImageResult) -> list[str]:
    p = result.prediction
    width = max(len(c.english) for c in CONDITIONS)
    lines = [result.image, f"  top: {CONDITIONS[p.top].english} ({p.probabilities[p.top]:.1%})"]
    positives = ", ".join(CONDITIONS[i].english for i in p.positives) or "none"
    lines.append(f"  above threshold: {positives}")
    lines.append(
        f"  {'condition':<{width}}  probability  threshold" + ("  ± (TTA)" if p.uncertainty else "")
    )
    for i, condition in enumerate(CONDITIONS):
        mark = "*" if i in p.positives else " "
        row = (
            f" {mark}{condition.english:<{width}}  {p.probabilities[i]:>10.1%}"
            f"  {p.thresholds[i]:>9.1%}"
        )
        if p.uncertainty:
            row += f"  {p.uncertainty[i]:>8.1%}"
        lines.append(row)
    if p.is_ood:
        lines.append(
            f"  warning: this photo does not look like the scalp close-ups the model was trained "
            f"on (OOD score {p.ood_score:.1f} > {result.ood_threshold:.1f}); treat the result "
            "with caution"
        )
    lines.extend(f"  Grad-CAM: {path}" for path in result.gradcam)
    return lines


def gradcam_paths(base: Path, index: int, image: Path, n_images: int, keys) -> list[Path]:
    """Overlay file names: ``base`` for the top condition of a single image, suffixed otherwise."""
    stem = base.stem if n_images == 1 else f"{base.stem}_{index + 1:02d}_{Path(image).stem}"
    suffix = base.suffix or ".png"
    return [
        base.with_name(f"{stem}{'' if i == 0 else '_' + key}{suffix}") for i, key in enumerate(keys)
    ]


def run_predict(config: PredictConfig) -> PredictReport:
    """Load the model once, predict every readable image, collect one line per bad one."""
    from scalpnet.serve import explain

    predictor = Predictor.load(config.run, sha256=config.sha256)
    prepared, errors = [], []
    for index, image in enumerate(config.images):
        try:
            prepared.append((index, image, predictor.prepare(image)))
        except InvalidImageError as exc:
            errors.append((os.fspath(image), str(exc)))
    results = []
    for start in range(0, len(prepared), max(1, config.batch_size)):
        chunk = prepared[start : start + config.batch_size]
        predictions = predictor.predict_prepared([item for *_, item in chunk], tta=config.tta)
        for (index, image, _), prediction in zip(chunk, predictions, strict=True):
            written = ()
            if config.gradcam is not None:
                heats = predictor.explain(image, prediction)
                keys = [CONDITIONS[c].key for c in heats]
                paths = gradcam_paths(config.gradcam, index, image, len(config.images), keys)
                photo = preprocess.load_image(image)
                written = tuple(
                    explain.save_png(path, explain.overlay(photo, heat))
                    for path, heat in zip(paths, heats.values(), strict=True)
                )
            threshold = predictor.ood.threshold if predictor.ood is not None else None
            results.append(ImageResult(os.fspath(image), prediction, written, threshold))
    return PredictReport(predictor.describe(), tuple(results), tuple(errors))
