"""Build, save and load the ScalpNet network.

The model takes RGB pixels 0-255 exactly as ``preprocess.preprocess_image``
returns them, shape (batch, S, S, 3); ResNet50's own input normalisation is the
first layer inside it. Output: (batch, 10) sigmoid probabilities in label order.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from scalpnet.errors import ModelNotFoundError, WeightsUnavailableError
from scalpnet.files import atomic_path
from scalpnet.labels import NUM_CLASSES
from scalpnet.learn.layers import ResNetPreprocess

IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
FEATURE_LAYER = "avg_pool"  # (batch, 2048) pooled backbone features
LAST_CONV_LAYER = "conv5_block3_out"  # (batch, S/32, S/32, 2048), for Grad-CAM
HEAD_LAYERS = ("image", "resnet_preprocess", FEATURE_LAYER, "dropout", "predictions")
MIN_IMAGE_SIZE = 32


def imagenet_weights_path() -> Path:
    """Where Keras caches the ImageNet weights (``$KERAS_HOME/models/``, default ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME") or keras.src.backend.config.keras_home()
    return Path(home) / "models" / IMAGENET_WEIGHTS_FILE


def _resolve_weights(weights: str | os.PathLike | None) -> str | None:
    """'imagenet' | 'none' | None | a local file -> the value ResNet50 accepts."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file not found: '{path}' (expected a ResNet50 no-top .h5 or .weights.h5 "
            "file, or 'imagenet', or 'none')"
        )
    return str(path)


def _resnet50(inputs, weights: str | None):
    try:
        return keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=inputs)
    except Exception as exc:
        if weights != "imagenet":
            raise WeightsUnavailableError(
                f"could not load weights from '{weights}': {exc}"
            ) from None
        raise WeightsUnavailableError(
            "could not download the ImageNet weights for ResNet50 (no network?). Keras looks for "
            f"'{imagenet_weights_path()}'. Put that file there, or train from scratch with "
            "'--weights none', or from a local file with '--weights PATH'."
        ) from None


def build_model(
    image_size: int = 256,
    weights: str | os.PathLike | None = "imagenet",
    dropout: float = 0.3,
    dtype_policy: str | None = None,
    name: str = "scalpnet_resnet50",
) -> keras.Model:
    """ResNet50 backbone + global average pooling + dropout + Dense(10, sigmoid).

    Args:
        image_size: input side S; the model takes (batch, S, S, 3) pixels 0-255.
        weights: "imagenet" (downloaded once by Keras), "none"/None, or a local weights file.
        dropout: dropout rate before the head.
        dtype_policy: e.g. "mixed_float16" or "mixed_bfloat16" for GPUs; the sigmoid head
            always computes in float32.
        name: the model's name.

    Raises:
        WeightsUnavailableError: the weights could not be downloaded or read.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} for ResNet50, got {image_size}")
    resolved = _resolve_weights(weights)
    previous = keras.config.dtype_policy()
    if dtype_policy:
        keras.config.set_dtype_policy(dtype_policy)
    try:
        inputs = keras.Input((image_size, image_size, 3), name="image")
        x = ResNetPreprocess(name="resnet_preprocess")(inputs)
        # Built on our own tensor, so every backbone layer (conv5_block3_out too)
        # sits in this model's graph: Grad-CAM can reach it.
        backbone = _resnet50(x, resolved)
        features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(backbone.output)
        x = keras.layers.Dropout(dropout, name="dropout")(features)
        outputs = keras.layers.Dense(
            NUM_CLASSES, activation="sigmoid", dtype="float32", name="predictions"
        )(x)
        return keras.Model(inputs, outputs, name=name)
    finally:
        keras.config.set_dtype_policy(previous)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The ResNet50 layers of a model from :func:`build_model` (everything but the head)."""
    return [layer for layer in model.layers if layer.name not in HEAD_LAYERS]


def features_model(model: keras.Model) -> keras.Model:
    """Same inputs -> (pooled features (batch, 2048), probabilities (batch, 10))."""
    # model.input, not model.inputs: a one-tensor structure, so calling it with a bare
    # (B, S, S, 3) tensor raises no "structure of `inputs`" warning.
    return keras.Model(model.input, [model.get_layer(FEATURE_LAYER).output, model.output])


def _float32_config(config: dict) -> dict:
    """A functional model's config with every layer computing in float32."""
    layers = [
        {**layer, "config": {**layer["config"], "dtype": "float32"}} for layer in config["layers"]
    ]
    return {**config, "layers": layers}


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Write ``model`` to a ``.keras`` file without optimizer state (~95 MB, not ~284 MB).

    The saved model computes in float32 whatever precision it was trained in (its
    variables are float32 either way): mixed precision is a way of training, and the
    ONNX export and CPU inference want float32. The file appears atomically: a crash
    mid-save leaves any previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, uncompiled twin carries the architecture and weights but no optimizer.
    twin = keras.Model.from_config(_float32_config(model.get_config()))
    twin.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        twin.save(tmp)
    return path


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a ``.keras`` file in safe mode (no arbitrary code), uncompiled.

    Raises:
        ModelNotFoundError: the file is missing or is not a loadable Keras model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no model file at '{path}'")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelNotFoundError(f"'{path}' is not a loadable ScalpNet model: {exc}") from None
