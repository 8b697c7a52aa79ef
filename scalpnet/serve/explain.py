"""Class activation maps (where in the photo the model looked) and overlays on the photo.

Served maps come from :func:`cam`: with global average pooling then one Dense layer, the
gradient of class c's logit with respect to the last conv map A is ``w_c / (h w)`` in every
cell, so Grad-CAM is CAM, ``ReLU(sum_k w_kc A_k)`` up to a constant, which the runtimes
compute in their forward pass (``runtimes.serving_model``); no gradients, no TensorFlow.
:class:`GradCam` keeps the gradient version, the reference the tests hold CAM to.

Grad-CAM (Selvaraju et al., 2017): weight each channel of the last convolutional
block's output by the mean gradient of the class score over the spatial grid, sum,
keep the positive part, upsample to the image. The class score is the LOGIT of the
sigmoid head (its pre-activation), not the probability: a confident sigmoid
saturates and its gradient vanishes, which would blank the map exactly when the
model is surest.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from scalpnet.files import AGAIN, disk_full_as_error, write_bytes_atomic


def cam(maps: np.ndarray, classes, size: int) -> np.ndarray:
    """(h, w, 10) class maps of one image -> (len(classes), size, size) float32 heat in [0, 1].

    ReLU, bilinear upsampling to the model's input side, then scaled by the maximum.
    """
    maps = np.asarray(maps, np.float32)
    return np.stack([_normalise(_upsample(np.maximum(maps[..., c], 0.0), size)) for c in classes])


class GradCam:
    """Grad-CAM for one model, traced once; call it with (S, S, 3) uint8 pixels.

    The gradient of every class logit is taken in one pass (a batch Jacobian through
    the head only), so asking for several conditions costs one forward pass.
    """

    def __init__(self, model, layer: str | None = None):
        import keras
        import tensorflow as tf

        from scalpnet.learn.model import LAST_CONV_LAYER

        self.size = int(model.input_shape[1])
        head = model.layers[-1]
        linear_head = isinstance(head, keras.layers.Dense)
        # Outputs: the conv block's activations and what the score is computed from.
        score_source = head.input if linear_head else model.output
        conv_output = model.get_layer(layer or LAST_CONV_LAYER).output
        probe = keras.Model(model.input, [conv_output, score_source])  # one tensor in

        @tf.function(
            input_signature=[tf.TensorSpec((None, self.size, self.size, 3), tf.float32)],
            autograph=False,  # the only branch is on a Python constant
        )
        def maps(images):
            with tf.GradientTape() as tape:
                # Watching the input records every op after it (even with frozen layers).
                tape.watch(images)
                conv, source = probe(images, training=False)
                conv = tf.cast(conv, tf.float32)  # (B, h, w, K)
                source = tf.cast(source, tf.float32)
                if linear_head:
                    kernel = tf.cast(head.kernel, tf.float32)
                    scores = tf.matmul(source, kernel) + tf.cast(head.bias, tf.float32)
                else:
                    scores = source  # (B, 10): a non-Dense head; use its output as is
            grads = tape.batch_jacobian(scores, conv)  # (B, 10, h, w, K)
            weights = tf.reduce_mean(grads, axis=[2, 3])  # (B, 10, K)
            cams = tf.einsum("bck,bhwk->bchw", weights, conv)  # (B, 10, h, w)
            return tf.nn.relu(cams)

        self._maps = maps.get_concrete_function()

    def __call__(self, pixels: np.ndarray, classes) -> np.ndarray:
        """(S, S, 3) uint8 model input -> (len(classes), S, S) float32 heat in [0, 1]."""
        if pixels.shape != (self.size, self.size, 3):
            raise ValueError(f"expected ({self.size}, {self.size}, 3) pixels, got {pixels.shape}")
        cams = self._maps(pixels[None].astype(np.float32)).numpy()[0]  # (10, h, w)
        return np.stack([_normalise(_upsample(cams[c], self.size)) for c in classes])


def _upsample(cam: np.ndarray, size: int) -> np.ndarray:
    """(h, w) -> (size, size); bilinear, so a coarse grid becomes a smooth map."""
    return cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def _normalise(heat: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the maximum; an all-zero map stays zero."""
    heat = np.maximum(heat, 0.0)
    peak = float(heat.max())
    return (heat / peak if peak > 0 else heat).astype(np.float32)


def gradcam(model, image: np.ndarray, class_index: int, layer: str | None = None) -> np.ndarray:
    """Grad-CAM of one condition on one model-ready image.

    Args:
        model: a ScalpNet model (``model.build_model`` or loaded).
        image: (S, S, 3) uint8, as ``preprocess.preprocess_image`` returns it.
        class_index: index into ``labels.CONDITIONS``.
        layer: the convolutional layer to explain (default ``conv5_block3_out``).

    Returns:
        (S, S) float32 in [0, 1]. For many calls on one model, keep a :class:`GradCam`.
    """
    return GradCam(model, layer)(np.asarray(image, np.uint8), [class_index])[0]


def overlay(photo_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a heatmap (JET colours) over a photo of any size.

    Args:
        photo_rgb: (H, W, 3) uint8 RGB, e.g. ``preprocess.load_image(...)``.
        heat: (h, w) float in [0, 1]; resized to (H, W).
        alpha: weight of the heat colours (0: photo only, 1: colours only).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = photo_rgb.shape[:2]
    heat = cv2.resize(np.asarray(heat, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    levels = np.clip(np.rint(heat * 255.0), 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * photo_rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB array as a PNG, whole or not at all.

    Raises:
        DiskFullError: the disk is full (the overlays written before stay whole).
        OSError: the folder cannot be made or written to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} {rgb.dtype} array as PNG")
    kept = "the overlays written before this one are whole"
    with disk_full_as_error(path.parent, len(png), kept, AGAIN):
        return write_bytes_atomic(path, png.tobytes())
