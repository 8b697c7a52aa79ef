"""Per-condition temperature scaling: fit on validation, apply at inference, save and load.

A sigmoid output p is recalibrated as ``sigmoid(logit(p) / T)``, one temperature T per
condition. T > 1 softens an over-confident condition, T < 1 sharpens an under-confident
one. Because logit(0.5) = 0 for every T, the decisions at threshold 0.5 and the ranking
within a condition (hence ROC AUC and average precision) never change; only how far the
probabilities sit from 0 and 1 does, and therefore which condition is the most probable.

``calibration.json`` (in the run folder)::

    {"method": "temperature", "fitted_on": "val", "temperature": {"<key>": T, ...}}

Importing this module costs numpy only (inference loads it); fitting also uses scipy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalpnet.errors import ModelNotFoundError
from scalpnet.files import write_json_atomic
from scalpnet.labels import KEYS, NUM_CLASSES

FILENAME = "calibration.json"
METHOD = "temperature"
# Probabilities are clipped to [EPS, 1 - EPS] before the logit: a float32 sigmoid
# saturates at exactly 0.0 or 1.0 for confident outputs.
EPS = 1e-7
# Search range of T; wide enough for any sane model, bounded so a degenerate
# validation set cannot push T to 0 or infinity.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def logit(probs: np.ndarray) -> np.ndarray:
    """Inverse sigmoid of probabilities, clipped away from 0 and 1. Same shape, float64."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large |z|, float64."""
    # 1 / (1 + e^-z) = exp(-log(1 + e^-z)); logaddexp never overflows.
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def apply_temperature(probs: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` with T broadcast over the last axis.

    Args:
        probs: (..., 10) probabilities (or any shape that broadcasts with ``temperatures``).
        temperatures: (10,) positive temperatures, one per condition.

    Returns:
        Calibrated probabilities, same shape as ``probs``, float64.
    """
    t = np.asarray(temperatures, dtype=np.float64)
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"temperatures must be finite and > 0, got {t.tolist()}")
    return sigmoid(logit(probs) / t)


def binary_nll(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of labels (N,) given logits (N,), computed stably."""
    y = np.asarray(y_true, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the NLL of one condition.

    Args:
        y_true: (N,) 0/1 labels.
        probs: (N,) uncalibrated probabilities.

    Returns:
        The temperature; 1.0 (no change) when the labels hold only one class, since the
        NLL then falls without bound as T shrinks and says nothing about calibration.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, dtype=np.float64).ravel()
    z = logit(probs).ravel()
    if y.size == 0 or y.min() == y.max():
        return 1.0
    result = minimize_scalar(
        lambda log_t: binary_nll(y, z / math.exp(log_t)),
        bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


@dataclass(frozen=True)
class Calibration:
    """One temperature per condition, in label order (``labels.KEYS``)."""

    temperatures: tuple[float, ...] = (1.0,) * NUM_CLASSES
    method: str = METHOD
    fitted_on: str = "val"

    def __post_init__(self):
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))
        if len(self.temperatures) != NUM_CLASSES:
            raise ValueError(f"expected {NUM_CLASSES} temperatures, got {len(self.temperatures)}")
        if any(not math.isfinite(t) or t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be finite and > 0, got {self.temperatures}")

    @classmethod
    def identity(cls) -> Calibration:
        """T = 1 everywhere: probabilities pass through unchanged."""
        return cls()

    @classmethod
    def fit(cls, y_true: np.ndarray, probs: np.ndarray, fitted_on: str = "val") -> Calibration:
        """Fit one temperature per condition on labels (N, 10) and probabilities (N, 10)."""
        y, p = _check_pair(y_true, probs)
        temps = tuple(fit_temperature(y[:, k], p[:, k]) for k in range(NUM_CLASSES))
        return cls(temperatures=temps, fitted_on=fitted_on)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrate probabilities of shape (10,) or (N, 10); returns float64, same shape."""
        p = np.asarray(probs)
        if p.shape[-1:] != (NUM_CLASSES,):
            raise ValueError(f"expected probabilities with last axis {NUM_CLASSES}, got {p.shape}")
        return apply_temperature(p, np.asarray(self.temperatures))

    def to_dict(self) -> dict:
        """The calibration.json payload."""
        return {
            "method": self.method,
            "fitted_on": self.fitted_on,
            "temperature": dict(zip(KEYS, (float(t) for t in self.temperatures), strict=True)),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "calibration data") -> Calibration:
        """Parse a calibration.json payload; conditions are read by key, not position.

        Raises:
            ModelNotFoundError: wrong method, missing conditions or bad values.
        """
        if not isinstance(data, dict) or data.get("method") != METHOD:
            method = data.get("method") if isinstance(data, dict) else type(data).__name__
            raise ModelNotFoundError(f"{source}: expected method '{METHOD}', got {method!r}")
        temps = data.get("temperature")
        if not isinstance(temps, dict):
            raise ModelNotFoundError(f"{source}: 'temperature' must map condition keys to numbers")
        missing = [k for k in KEYS if k not in temps]
        if missing:
            raise ModelNotFoundError(f"{source}: no temperature for {', '.join(missing)}")
        try:
            return cls(
                temperatures=tuple(float(temps[k]) for k in KEYS),
                fitted_on=str(data.get("fitted_on", "val")),
            )
        except (TypeError, ValueError) as exc:
            raise ModelNotFoundError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write calibration.json atomically (a run folder or a file path)."""
        path = _file_path(path)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        """Read calibration.json from a run folder or a file path.

        Raises:
            ModelNotFoundError: the file is missing, not JSON, or not a calibration.
        """
        path = _file_path(path)
        if not path.is_file():
            raise ModelNotFoundError(
                f"no calibration file at '{path}' (run 'python -m scalpnet evaluate' first)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelNotFoundError(f"'{path}' is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=f"'{path}'")

    @classmethod
    def load_or_identity(cls, path: str | os.PathLike) -> Calibration:
        """Like :meth:`load`, but a run that was never evaluated gets the identity."""
        path = _file_path(path)
        return cls.load(path) if path.exists() else cls.identity()


def _file_path(path: str | os.PathLike) -> Path:
    """A run folder -> its calibration.json; a file path stays as it is."""
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def _check_pair(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != NUM_CLASSES or y.shape != p.shape:
        raise ValueError(
            f"expected labels and probabilities of shape (N, {NUM_CLASSES}), "
            f"got {y.shape} and {p.shape}"
        )
    return y, p
