"""Keras layers that live inside saved ScalpNet models (registered for safe-mode reload)."""

from __future__ import annotations

import keras
from keras import ops

# ResNet50 "caffe" preprocessing: RGB -> BGR, subtract the ImageNet BGR means, no scaling.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="scalpnet")
class ResNetPreprocess(keras.layers.Layer):
    """RGB pixels 0-255 -> ResNet50's input: channels flipped to BGR, ImageNet mean removed.

    Input (batch, H, W, 3) in 0-255, any numeric dtype; output the same shape in
    the layer's compute dtype. Equivalent to
    ``keras.applications.resnet50.preprocess_input`` on float input.
    """

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        bgr = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)
        return bgr - mean

    def compute_output_shape(self, input_shape):
        return input_shape
