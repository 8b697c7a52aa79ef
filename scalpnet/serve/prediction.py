"""`Prediction`: the plain value inference hands to the advisor, the CLI and the app."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from scalpnet.labels import CONDITIONS, NUM_CLASSES, Condition


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image. Every tuple is in label order (``labels.CONDITIONS``).

    Attributes:
        probabilities: (10,) calibrated probabilities in [0, 1].
        thresholds: (10,) decision thresholds from the run folder.
        raw_probabilities: (10,) the sigmoid outputs before calibration.
        ood_score: distance of the photo from the training images (higher = stranger),
            or None when the run folder has no out-of-distribution model.
        is_ood: True when ``ood_score`` is above the run's threshold.
        uncertainty: (10,) spread of the probability across test-time-augmented views,
            or None without augmentation.
        image_sha256: hash of the input bytes when they were given, else None.
        timings_ms: wall time of each stage (e.g. ``{"preprocess": 4.1, "forward": 61.0}``).
        class_maps: (h, w, 10) float32, each condition's map over the last convolution's
            grid (8x8 at 256 px) from the forward pass that made this prediction (the
            un-augmented view): what ``Predictor.explain_prediction`` draws the CAM from,
            with no second forward pass. None when not made by a Predictor. Not compared,
            not printed, not in :meth:`to_dict`.
    """

    probabilities: tuple[float, ...]
    thresholds: tuple[float, ...]
    raw_probabilities: tuple[float, ...]
    ood_score: float | None = None
    is_ood: bool = False
    uncertainty: tuple[float, ...] | None = None
    image_sha256: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    class_maps: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        for name in ("probabilities", "thresholds", "raw_probabilities"):
            if len(getattr(self, name)) != NUM_CLASSES:
                raise ValueError(f"{name} must have {NUM_CLASSES} values")

    @property
    def positives(self) -> tuple[int, ...]:
        """Indices of conditions at or above their threshold, most probable first."""
        above = [
            i
            for i, (p, t) in enumerate(zip(self.probabilities, self.thresholds, strict=True))
            if p >= t
        ]
        return tuple(sorted(above, key=lambda i: -self.probabilities[i]))

    @property
    def top(self) -> int:
        """Index of the most probable condition."""
        return max(range(NUM_CLASSES), key=lambda i: self.probabilities[i])

    @property
    def top_condition(self) -> Condition:
        return CONDITIONS[self.top]

    def ranked(self) -> list[tuple[Condition, float]]:
        """(condition, probability) pairs, most probable first."""
        order = sorted(range(NUM_CLASSES), key=lambda i: -self.probabilities[i])
        return [(CONDITIONS[i], self.probabilities[i]) for i in order]

    def to_dict(self) -> dict:
        """JSON-ready dict with condition keys, for `--json`, downloads and logs."""
        keys = [c.key for c in CONDITIONS]
        data = asdict(self)
        del data["class_maps"]
        for name in ("probabilities", "thresholds", "raw_probabilities", "uncertainty"):
            if data[name] is not None:
                data[name] = dict(zip(keys, data[name], strict=True))
        data["positives"] = [keys[i] for i in self.positives]
        data["top"] = keys[self.top]
        return data
