"""Out-of-distribution warning: is this photo like the scalp close-ups the model was trained on?

A Mahalanobis model on the pooled 2048-d backbone features: one mean per condition,
one covariance shared by all conditions (Ledoit-Wolf shrinkage, so 2048 dimensions
can be estimated from a couple of thousand images). A photo's score is its distance
to the nearest condition mean; the threshold lets 95% of validation images pass.
How well it works is measured against generated non-scalp probes (noise, flat
colours, gradients, natural photos shipped inside scikit-learn / scikit-image,
text screenshots), reported as an AUROC in the run's ``metrics.json``.

The fitting and scoring code uses numpy and scikit-learn only; TensorFlow is
imported by :func:`fit_run` alone, which needs the model's features.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalpnet.errors import ScalpNetError
from scalpnet.files import atomic_path

OOD_FILE = "ood.npz"
METRICS_FILE = "metrics.json"
FeatureFn = Callable[[np.ndarray], np.ndarray]  # (B, S, S, 3) uint8 -> (B, 2048) float


@dataclass(frozen=True)
class OODConfig:
    """Settings for fitting the out-of-distribution model of a run."""

    max_train_images: int = 2000  # a random subsample of the training split
    max_val_images: int = 2000
    pass_rate: float = 0.95  # share of validation images below the threshold
    batch_size: int = 32
    probes_per_kind: int = 4  # noise / flat / gradient / text probes of each kind
    seed: int = 0
    progress: bool = False  # a bar with the time left (scalpnet.progress)


@dataclass(frozen=True)
class OODModel:
    """Class-conditional Gaussians with a shared covariance, in whitened coordinates.

    Attributes:
        means: (C, D) float32 class means, already multiplied by ``whitener``.
        whitener: (D, D) float32 W with W Wᵀ = Σ⁻¹, so ‖(x - μ) W‖ is the Mahalanobis distance.
        classes: (C,) int indices into ``labels.CONDITIONS`` of the classes that had images.
        threshold: scores above it are out of distribution (NaN until chosen).
    """

    means: np.ndarray
    whitener: np.ndarray
    classes: np.ndarray
    threshold: float = float("nan")

    @property
    def dim(self) -> int:
        return int(self.whitener.shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        """(B, D) features -> (B,) float64 Mahalanobis distance to the nearest class mean."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected (batch, {self.dim}) features, got {features.shape}")
        z = features @ self.whitener  # (B, D)
        # ‖z - m‖² = ‖z‖² - 2 z·m + ‖m‖², for every (image, class) pair: (B, C)
        squared = (
            np.sum(z.astype(np.float64) ** 2, axis=1, keepdims=True)
            - 2.0 * (z @ self.means.T).astype(np.float64)
            + np.sum(self.means.astype(np.float64) ** 2, axis=1)[None, :]
        )
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def is_ood(self, features: np.ndarray) -> np.ndarray:
        """(B, D) features -> (B,) bool, True above the threshold."""
        return self.score(features) > self.threshold

    def with_threshold(self, threshold: float) -> OODModel:
        return OODModel(self.means, self.whitener, self.classes, float(threshold))

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` (atomically: a crash leaves any previous file intact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                means=self.means,
                whitener=self.whitener,
                classes=self.classes,
                threshold=np.float64(self.threshold),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> OODModel:
        """Read a file written by :meth:`save`.

        Raises:
            ScalpNetError: the file is missing or not an OOD model.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    means=data["means"].astype(np.float32),
                    whitener=data["whitener"].astype(np.float32),
                    classes=data["classes"].astype(np.int64),
                    threshold=float(data["threshold"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ScalpNetError(f"'{path}' is not a readable OOD model: {exc}") from None


def fit(features: np.ndarray, labels: np.ndarray) -> OODModel:
    """Fit class means and a shrunk shared covariance (threshold left unset).

    Args:
        features: (N, D) pooled features of training images.
        labels: (N, C) multi-hot labels; an image counts towards every class it has.

    Returns:
        An :class:`OODModel` with ``threshold`` NaN; see :func:`choose_threshold`.
    """
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    if features.ndim != 2 or labels.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features {features.shape} and labels {labels.shape} do not match")
    classes = np.flatnonzero(labels.sum(axis=0) > 0)
    if classes.size == 0:
        raise ValueError("no image has any label; cannot fit class means")
    means = np.stack([features[labels[:, c]].mean(axis=0) for c in classes])  # (C, D)
    # One residual per (image, class it has); images without labels add nothing.
    image_idx, class_idx = np.nonzero(labels[:, classes])
    residuals = features[image_idx] - means[class_idx]  # (pairs, D)
    covariance = LedoitWolf(assume_centered=True, store_precision=False).fit(residuals).covariance_
    whitener = _whitener(covariance)
    return OODModel(
        means=(means @ whitener).astype(np.float32),
        whitener=whitener.astype(np.float32),
        classes=classes.astype(np.int64),
    )


def _whitener(covariance: np.ndarray) -> np.ndarray:
    """(D, D) covariance Σ -> W with W Wᵀ = Σ⁻¹.

    Σ = L Lᵀ (Cholesky) gives W = L⁻ᵀ, ten times faster than an eigendecomposition.
    Shrinkage keeps Σ positive definite; should rounding break that, the eigenvalues
    are floored instead.
    """
    from scipy.linalg import solve_triangular

    try:
        lower = np.linalg.cholesky(covariance)
        return solve_triangular(lower, np.eye(len(covariance)), lower=True).T
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(covariance)
        floor = max(values.max(), 1e-12) * 1e-9
        return vectors / np.sqrt(np.maximum(values, floor))[None, :]


def choose_threshold(model: OODModel, val_scores: np.ndarray, pass_rate: float = 0.95) -> OODModel:
    """Threshold at the ``pass_rate`` quantile of validation scores."""
    if not 0.0 < pass_rate <= 1.0:
        raise ValueError(f"pass_rate must be in (0, 1], got {pass_rate}")
    return model.with_threshold(float(np.quantile(np.asarray(val_scores), pass_rate)))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling ``out_scores`` (positive) from ``in_scores``."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


# ----------------------------------------------------------------------------- probes
_SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field",
    "clock", "coins", "moon", "brick", "grass", "gravel", "colorwheel", "page", "text",
)  # fmt: skip
_TEXT_LINES = (
    "Quarterly report: revenue up 4% year on year",
    "def predict(image):\n    return model(image)",
    "Meeting notes - action items - follow up Friday",
    "The quick brown fox jumps over the lazy dog 0123456789",
    "ERROR 404: page not found. Please try again later.",
    "두피 사진이 아닙니다 / This is not a scalp photo",
)


def _natural_photos() -> list[tuple[str, np.ndarray]]:
    """Photos shipped inside scikit-learn and (when installed) scikit-image: no downloads."""
    photos = []
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, image in zip(sample.filenames, sample.images, strict=True):
            photos.append((f"sklearn:{Path(filename).stem}", np.asarray(image, np.uint8)))
    except Exception:  # an install without the bundled images: use what there is
        pass
    try:
        import skimage.data
    except ImportError:
        return photos
    for name in _SKIMAGE_PHOTOS:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # skip any that would need a download
            continue
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append((f"skimage:{name}", image[:, :, :3].astype(np.uint8)))
    return photos


def _text_screenshot(text: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A screenshot-like image of text on a light background, (size, size, 3) uint8."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(8, size // 14))
    y = size // 12
    while y < size:
        draw.multiline_text((size // 16, y), text, fill=(20, 20, 20), font=font)
        y += size // 4
    return np.asarray(canvas, np.uint8)


def probe_images(size: int, per_kind: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Images that are not scalp close-ups, made without any download.

    Returns:
        (name, (H, W, 3) uint8) pairs: uniform and Gaussian noise, flat colours,
        colour gradients, text screenshots (``per_kind`` of each), and every natural
        photo bundled with scikit-learn / scikit-image plus a centre crop of each.
        Feed them through ``preprocess.to_model_input`` like any user photo.
    """
    rng = np.random.default_rng(seed)
    probes: list[tuple[str, np.ndarray]] = []
    ramp = np.linspace(0.0, 1.0, size)
    for i in range(per_kind):
        probes.append((f"uniform_noise_{i}", rng.integers(0, 256, (size, size, 3), np.uint8)))
        gauss = rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (size, size, 3))
        probes.append((f"gaussian_noise_{i}", np.clip(gauss, 0, 255).astype(np.uint8)))
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        probes.append((f"flat_colour_{i}", np.broadcast_to(colour, (size, size, 3)).copy()))
        start, stop = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        line = start[None, :] + ramp[:, None] * (stop - start)[None, :]  # (size, 3)
        grad = np.broadcast_to(line[None, :, :] if i % 2 else line[:, None, :], (size, size, 3))
        probes.append((f"gradient_{i}", np.rint(grad).astype(np.uint8)))
        text = _TEXT_LINES[i % len(_TEXT_LINES)]
        probes.append((f"text_screenshot_{i}", _text_screenshot(text, max(size, 128), rng)))
    for name, photo in _natural_photos():
        probes.append((name, photo))
        h, w = photo.shape[:2]
        side = min(h, w) // 2
        top, left = (h - side) // 2, (w - side) // 2
        probes.append((f"{name}_crop", photo[top : top + side, left : left + side].copy()))
    return probes


# ----------------------------------------------------------------------------- a run folder
def _features_of_files(
    paths, feature_fn: FeatureFn, size: int, batch_size: int, bar=None
) -> np.ndarray:
    """Processed PNGs (already at ``size``) -> (N, D) features, batch by batch.

    ``bar``: a :class:`scalpnet.progress.Progress` told of every image done.
    """
    from scalpnet.data.preprocess import load_image, to_model_input

    out = []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            rgb = load_image(path)
            # Processed images are already (size, size); anything else goes through
            # the one preprocessing path like a user photo would.
            batch.append(rgb if rgb.shape[:2] == (size, size) else to_model_input(rgb, size))
        out.append(feature_fn(np.stack(batch)))
        if bar is not None:
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _features_of_arrays(images, feature_fn: FeatureFn, size: int, batch_size: int) -> np.ndarray:
    from scalpnet.data.preprocess import to_model_input

    pixels = np.stack([to_model_input(image, size) for image in images])
    return np.concatenate(
        [feature_fn(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    )


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=limit, replace=False)) if n > limit else np.arange(n)


def fit_run(run_dir: str | os.PathLike, config: OODConfig | None = None, **overrides) -> dict:
    """Fit the OOD model of a trained run, save ``ood.npz``, write metrics.json["ood"].

    Reads the training and validation splits of the dataset named in the run's
    ``model_card.json``. Returns the summary written to metrics.json: threshold,
    validation pass rate, AUROC of validation vs probes, share of probes flagged.
    ``overrides`` replace fields of ``config``, e.g. ``fit_run(run, batch_size=16)``.

    Raises:
        ModelNotFoundError / DatasetError: no model, card or dataset where the card says.
    """
    from scalpnet.data.dataset import label_matrix, read_split
    from scalpnet.judge.evaluation import merge_json, read_card
    from scalpnet.learn.model import features_model, load_model
    from scalpnet.progress import Progress

    config = dataclasses.replace(config or OODConfig(), **overrides)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    card = read_card(run_dir)
    csv_path, size = Path(card["dataset"]["csv"]), int(card["image_size"])
    two_headed = features_model(load_model(run_dir / "model.keras"))

    def feature_fn(pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) uint8 -> (n, 2048) pooled features, as the Predictor sees them."""
        # predict_on_batch runs one traced graph; calling the model eagerly costs ~4x.
        features, _ = two_headed.predict_on_batch(pixels.astype(np.float32))
        return np.asarray(features, dtype=np.float32)

    rng = np.random.default_rng(config.seed)
    frames = {split: read_split(csv_path, split) for split in ("train", "val")}
    features, labels = {}, {}
    limits = {"train": config.max_train_images, "val": config.max_val_images}
    picks = {s: frame.iloc[_subsample(len(frame), limits[s], rng)] for s, frame in frames.items()}
    total = sum(len(rows) for rows in picks.values())
    with Progress("OOD fit: features", total, unit="img", show=config.progress) as bar:
        for split, rows in picks.items():
            paths = [Path(p) for p in rows["path"]]
            features[split] = _features_of_files(paths, feature_fn, size, config.batch_size, bar)
            labels[split] = label_matrix(rows)

    model = fit(features["train"], labels["train"])
    val_scores = model.score(features["val"])
    model = choose_threshold(model, val_scores, config.pass_rate)
    probes = probe_images(size, config.probes_per_kind, config.seed)
    probe_scores = model.score(
        _features_of_arrays([image for _, image in probes], feature_fn, size, config.batch_size)
    )
    model.save(run_dir / OOD_FILE)
    kinds: dict[str, list[bool]] = {}
    for (name, _), flagged in zip(probes, probe_scores > model.threshold, strict=True):
        kind = name.split(":")[0] if ":" in name else name.rsplit("_", 1)[0]
        kinds.setdefault("natural_photo" if ":" in name else kind, []).append(bool(flagged))
    summary = {
        "method": "mahalanobis_shared_covariance_ledoit_wolf",
        "feature_layer": "avg_pool",
        "threshold": model.threshold,
        "pass_rate_target": config.pass_rate,
        "fitted_on": {"train": len(features["train"]), "val": len(features["val"])},
        "val_pass_rate": float(np.mean(val_scores <= model.threshold)),
        "probes": len(probes),
        "probe_flagged_rate": float(np.mean(probe_scores > model.threshold)),
        "probe_flagged_rate_by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())},
        "auroc_val_vs_probes": auroc(val_scores, probe_scores),
        "val_score_median": float(np.median(val_scores)),
        "probe_score_median": float(np.median(probe_scores)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    merge_json(run_dir / METRICS_FILE, {"ood": summary})
    return summary
