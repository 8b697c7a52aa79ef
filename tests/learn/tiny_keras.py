"""A tiny compiled Keras model and a file-damaging helper for the checkpoint tests."""

from __future__ import annotations

from pathlib import Path

import keras


def tiny_model(units: int = 4, seed: int = 0) -> keras.Model:
    """Dense(5) -> Dense(units) on 3 inputs, compiled with Adam, optimizer built."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(units)(keras.layers.Dense(5)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)  # as after the first training step
    return model


def rewrite(path: Path, data: bytes) -> None:
    """Replace a file by a new one (never in place: fixtures may share it by a hard link)."""
    path.unlink()
    path.write_bytes(data)
