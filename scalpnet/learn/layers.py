"""Keras layers that live inside saved ScalpNet models (registered for safe-mode reload)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# ResNet50 "caffe" preprocessing: RGB -> BGR, subtract the ImageNet BGR means, no scaling.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
# The channel flip as a (1, 1, 3, 3) convolution kernel: ones on the anti-diagonal.
BGR_FROM_RGB = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)


@keras.saving.register_keras_serializable(package="scalpnet")
class ResNetPreprocess(keras.layers.Layer):
    """RGB pixels 0-255 -> ResNet50's input: channels flipped to BGR, ImageNet mean removed.

    Input (batch, H, W, 3) in 0-255, any numeric dtype; output the same shape in
    the layer's compute dtype. Equivalent to
    ``keras.applications.resnet50.preprocess_input`` on float input.

    The flip is a 1x1 convolution with a 0/1 kernel, then the negated means are added: the
    same numbers as indexing the channels backwards (each output is one input times 1
    plus two times 0), but the ONNX export gets one small Conv with a bias instead of a
    reversal, which tf2onnx writes as two transposes of the whole image (1.0-1.5 ms of the
    int8 forward of the 256 px ResNet50 in ONNX Runtime's profile). A one-off probe on this
    2-core VM (2026-12-03, the model exported both ways, sessions timed in turn): int8
    forward 8.96 -> 8.24 ms, fp32 22.6 -> 22.4 ms.
    """

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        flip = ops.convert_to_tensor(BGR_FROM_RGB, dtype=self.compute_dtype)
        shift = ops.convert_to_tensor([-m for m in IMAGENET_BGR_MEAN], dtype=self.compute_dtype)
        return ops.conv(x, flip, data_format="channels_last") + shift

    def compute_output_shape(self, input_shape):
        return input_shape
