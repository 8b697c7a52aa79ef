"""The network: outputs, in-model normalisation, save/load in a fresh process, weights errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from scalpnet.errors import ModelNotFoundError, WeightsUnavailableError  # noqa: E402
from scalpnet.labels import NUM_CLASSES  # noqa: E402
from scalpnet.learn import model as model_module  # noqa: E402
from scalpnet.learn.layers import ResNetPreprocess  # noqa: E402

SIZE = 32
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(0)
    return model_module.build_model(SIZE, weights=None)


def pixels(n: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_output_is_batch_by_ten_probabilities(net):
    probs = np.asarray(net.predict(pixels(), verbose=0))
    assert probs.shape == (4, NUM_CLASSES)
    assert probs.dtype == np.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    assert net.input_shape == (None, SIZE, SIZE, 3)


def test_layers_that_inference_and_grad_cam_rely_on(net):
    assert net.get_layer(model_module.LAST_CONV_LAYER).output.shape[-1] == 2048
    features, probs = model_module.features_model(net).predict(pixels(2), verbose=0)
    assert features.shape == (2, 2048) and probs.shape == (2, NUM_CLASSES)
    backbone = model_module.backbone_layers(net)
    names = {layer.name for layer in backbone}
    assert model_module.LAST_CONV_LAYER in names and "predictions" not in names
    assert not names & set(model_module.HEAD_LAYERS)


def test_features_model_takes_a_bare_batch_without_warnings(net):
    """The OOD fit calls it with a (B, S, S, 3) array; no Keras input-structure warning."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features, _ = model_module.features_model(net)(pixels(2).astype("float32"))
    assert features.shape == (2, 2048)
    assert [str(w.message) for w in caught if "structure" in str(w.message)] == []


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_normalisation_layer_equals_resnet50_preprocess_input(dtype):
    x = pixels(3, 8).astype(dtype)
    ours = np.asarray(ResNetPreprocess()(x))
    theirs = keras.applications.resnet50.preprocess_input(x.astype("float32"))
    # Exactly: the flip is a 0/1 convolution, each output one input times 1 plus zeros.
    np.testing.assert_array_equal(ours, theirs)


def test_the_model_starts_with_the_normalisation(net):
    assert isinstance(net.layers[1], ResNetPreprocess)
    assert net.layers[1].input is net.inputs[0]


def test_save_then_load_in_a_fresh_process_gives_identical_predictions(net, tmp_path):
    path = model_module.save_model(net, tmp_path / "model.keras")
    x = pixels(5, seed=1)
    np.save(tmp_path / "x.npy", x)
    expected = np.asarray(net.predict(x, verbose=0))
    # Nothing but `import scalpnet` and Keras's own loader, in safe mode.
    script = (
        "import sys, numpy as np, scalpnet, keras\n"
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
        "x = np.load('x.npy')\n"
        "np.save('y.npy', m.predict(x, verbose=0))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=0, atol=1e-6)
    again = model_module.load_model(path)
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), expected, rtol=0, atol=1e-6)


def test_a_model_saved_before_the_package_moved_to_stages_still_loads(tmp_path):
    # Files saved when the layer lived in `scalpnet.layers` name that module in their
    # config; the registered name "scalpnet>ResNetPreprocess" is what loading resolves.
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2)(ResNetPreprocess()(inputs))
    small = keras.Model(inputs, outputs)
    new_path = tmp_path / "new.keras"
    small.save(new_path)
    old_path = tmp_path / "old.keras"
    with zipfile.ZipFile(new_path) as src, zipfile.ZipFile(old_path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                text = data.decode("utf-8")
                assert '"module": "scalpnet.learn.layers"' in text
                data = text.replace('"scalpnet.learn.layers"', '"scalpnet.layers"').encode()
            dst.writestr(item, data)
    x = pixels(2, size=8, seed=3)
    loaded = keras.saving.load_model(old_path, safe_mode=True)
    assert isinstance(loaded.layers[1], ResNetPreprocess)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), small.predict(x, verbose=0), atol=1e-6)


def test_saved_file_has_no_optimizer_state(net, tmp_path):
    trained = keras.models.clone_model(net)
    trained.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy")
    trained.optimizer.build(trained.trainable_variables)  # moments exist, as after training
    assert len(trained.optimizer.variables) > 100
    path = model_module.save_model(trained, tmp_path / "m.keras")
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    assert not config.get("compile_config")
    assert b"optimizer" not in weights
    assert not list(tmp_path.glob("*.tmp*")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "m.keras"
    ]


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model file"):
        model_module.load_model(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelNotFoundError, match="not a loadable"):
        model_module.load_model(tmp_path / "junk.keras")


def test_offline_imagenet_gives_a_clear_error(tmp_path, monkeypatch):
    """Simulate no network: the download itself fails, as it does on this machine."""
    from keras.src.utils import file_utils

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setattr(file_utils.config, "keras_home", lambda: str(tmp_path / "keras-home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    with pytest.raises(WeightsUnavailableError) as err:
        model_module.build_model(SIZE, weights="imagenet")
    message = str(err.value)
    expected = tmp_path / "keras-home" / "models" / model_module.IMAGENET_WEIGHTS_FILE
    assert str(expected) in message
    assert "--weights none" in message and "--weights PATH" in message


def test_weights_from_a_local_file(tmp_path):
    keras.utils.set_random_seed(3)
    backbone = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    path = tmp_path / "resnet50_notop.weights.h5"
    backbone.save_weights(path)
    built = model_module.build_model(SIZE, weights=path)
    np.testing.assert_array_equal(
        built.get_layer("conv1_conv").get_weights()[0],
        backbone.get_layer("conv1_conv").get_weights()[0],
    )
    with pytest.raises(WeightsUnavailableError, match="not found"):
        model_module.build_model(SIZE, weights=tmp_path / "nope.h5")


def test_mixed_precision_keeps_the_head_in_float32_and_restores_the_policy():
    before = keras.config.dtype_policy().name
    net = model_module.build_model(SIZE, weights=None, dtype_policy="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before
    assert net.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert net.get_layer("predictions").compute_dtype == "float32"
    assert net.predict(pixels(2), verbose=0).dtype == np.float32


def test_a_model_trained_in_mixed_precision_is_saved_computing_in_float32(tmp_path):
    keras.utils.set_random_seed(5)
    mixed = model_module.build_model(SIZE, weights=None, dtype_policy="mixed_bfloat16")
    path = model_module.save_model(mixed, tmp_path / "m.keras")
    loaded = model_module.load_model(path)
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    for saved, trained in zip(loaded.weights, mixed.weights, strict=True):
        np.testing.assert_array_equal(saved.numpy(), trained.numpy())
    x = pixels(2).astype(np.float32)
    float32_twin = model_module.build_model(SIZE, weights=None)
    float32_twin.set_weights(mixed.get_weights())
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), float32_twin.predict(x, verbose=0), atol=1e-6
    )


def test_too_small_image_size_is_refused():
    with pytest.raises(ValueError, match=">= 32"):
        model_module.build_model(16, weights=None)
