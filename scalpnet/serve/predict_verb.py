"""``python -m scalpnet predict``: many photos through one Predictor, a text or JSON report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from scalpnet.data import preprocess
from scalpnet.data.layouts import images_in
from scalpnet.errors import InvalidImageError
from scalpnet.labels import CONDITIONS
from scalpnet.serve.prediction import Prediction
from scalpnet.serve.predictor import Predictor


@dataclass(frozen=True)
class PredictConfig:
    """What ``python -m scalpnet predict`` does."""

    images: tuple[Path, ...]  # photos, or folders: each stands for the image files in it
    run: str  # a run folder, a .keras file, or an https URL (then sha256 is required)
    sha256: str | None = None
    tta: bool = False
    gradcam: Path | None = None  # overlay PNG of the top condition (others: <stem>_<key>.png)
    batch_size: int = 16
    runtime: str | None = None  # auto | onnx | int8 | keras; None: $SCALPNET_RUNTIME or auto


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
            + f", runtime {m['runtime']})"
        ]
        if m.get("runtime_note"):
            lines.append(f"note: {m['runtime_note']}")
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


def expand_folders(paths: tuple[Path, ...]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Named paths -> the images to predict (each folder replaced by the image files in it,
    ``layouts.images_in``) and one error for each folder that holds none."""
    images, errors = [], []
    for path in paths:
        if not Path(path).is_dir():
            images.append(Path(path))
        elif found := images_in(Path(path)):
            images += found
        else:
            message = f"the folder '{path}' holds no image files ({preprocess.IMAGE_KINDS})"
            errors.append((os.fspath(path), message))
    return images, errors


def run_predict(config: PredictConfig) -> PredictReport:
    """Load the model once, predict every readable image, collect one line per bad one."""
    from scalpnet.serve import explain

    predictor = Predictor.load(config.run, sha256=config.sha256, runtime=config.runtime)
    images, errors = expand_folders(config.images)
    results, step = [], max(1, config.batch_size)
    for start in range(0, len(images), step):  # one batch of pixels in memory at a time
        chunk = []
        for index, image in enumerate(images[start : start + step], start):
            try:
                chunk.append((index, image, predictor.prepare(image)))
            except InvalidImageError as exc:
                errors.append((os.fspath(image), str(exc)))
        if not chunk:
            continue
        predictions = predictor.predict_prepared([item for *_, item in chunk], tta=config.tta)
        for (index, image, _), prediction in zip(chunk, predictions, strict=True):
            written = ()
            if config.gradcam is not None:
                heats = predictor.explain_prediction(prediction)
                keys = [CONDITIONS[c].key for c in heats]
                paths = gradcam_paths(config.gradcam, index, image, len(images), keys)
                photo = preprocess.load_image(image)
                written = tuple(
                    explain.save_png(path, explain.overlay(photo, heat))
                    for path, heat in zip(paths, heats.values(), strict=True)
                )
            threshold = predictor.ood.threshold if predictor.ood is not None else None
            results.append(ImageResult(os.fspath(image), prediction, written, threshold))
    return PredictReport(predictor.describe(), tuple(results), tuple(errors))
