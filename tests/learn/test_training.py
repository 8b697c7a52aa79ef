"""Training set-up: trainable layers per phase, initialisation, mixed precision."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from scalpnet.labels import NUM_CLASSES  # noqa: E402
from scalpnet.learn import training  # noqa: E402
from scalpnet.learn.config import SCRATCH_BN_MOMENTUM, TrainConfig, plan_phases  # noqa: E402
from scalpnet.learn.model import backbone_layers, build_model  # noqa: E402


@pytest.fixture(scope="module")
def small_model():
    return build_model(32, weights=None)


def test_head_phase_freezes_the_backbone_finetune_keeps_batchnorm_frozen(small_model):
    config = TrainConfig(weights="imagenet", head_epochs=1, finetune_epochs=1)
    head, finetune = plan_phases(config)
    backbone = backbone_layers(small_model)
    bn = [layer for layer in backbone if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in backbone if isinstance(layer, keras.layers.Conv2D)]
    training.set_trainable(small_model, head)
    assert not any(layer.trainable for layer in backbone)
    assert small_model.get_layer("predictions").trainable
    assert len(small_model.trainable_weights) == 2  # the head's kernel and bias
    training.set_trainable(small_model, finetune)
    assert all(layer.trainable for layer in convs) and not any(layer.trainable for layer in bn)
    training.set_trainable(small_model, replace(finetune, train_bn=True))
    assert all(layer.trainable for layer in bn)


def test_initialisation_for_scratch_and_pretrained():
    keras.utils.set_random_seed(0)
    net = build_model(32, weights=None)
    training.initialise_for_training(net, TrainConfig(weights="none"))
    probs = net.predict(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)), verbose=0)
    np.testing.assert_allclose(probs, 1 / NUM_CLASSES, rtol=1e-5)  # the label prior
    ends = [layer for layer in net.layers if layer.name.endswith("_3_bn")]
    assert len(ends) == 16  # one per residual block of ResNet50
    assert all(not np.any(layer.gamma.numpy()) for layer in ends)
    assert net.get_layer("conv1_bn").momentum == SCRATCH_BN_MOMENTUM

    net = build_model(32, weights=None)
    training.initialise_for_training(net, TrainConfig(weights="imagenet"))
    assert all(np.any(layer.gamma.numpy()) for layer in net.layers if layer.name.endswith("_3_bn"))
    assert net.get_layer("conv1_bn").momentum == 0.99


def test_mixed_float16_gets_loss_scaling_and_a_float32_head():
    config = TrainConfig(weights="none", precision="mixed_float16", head_epochs=0)
    net = build_model(32, weights=None, dtype_policy=config.precision)
    (phase,) = plan_phases(config)
    training.compile_for_phase(net, phase, config, steps_per_epoch=3)
    assert isinstance(net.optimizer, keras.optimizers.LossScaleOptimizer)
    assert net.get_layer("conv1_conv").compute_dtype == "float16"
    assert net.get_layer("predictions").compute_dtype == "float32"
