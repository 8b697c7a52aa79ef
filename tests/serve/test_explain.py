"""Grad-CAM: shape and range, the maths against CAM, overlays, and where a trained model looks."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
from inference_helpers import SIZE, model_file, photo

from scalpnet.learn.model import LAST_CONV_LAYER
from scalpnet.serve import explain
from scalpnet.serve.predictor import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(model_file())


def test_heatmap_shape_range_and_dtype(predictor):
    pixels = predictor.prepare(photo(0)).pixels
    # The top class has the largest logit, > 0 for an untrained model with zero bias, so its
    # CAM (whose mean is the logit) has a positive part to normalise.
    top = predictor.predict(photo(0)).top
    heat = explain.gradcam(predictor.runtime.model, pixels, class_index=top)
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)


def test_gradcam_equals_cam_for_a_pooled_linear_head(predictor):
    """With global average pooling + one Dense layer, Grad-CAM's channel weights are the
    Dense kernel column (over h*w), so the map must equal CAM computed by hand."""
    model = predictor.runtime.model
    pixels = predictor.prepare(photo(1)).pixels
    classes = [0, 4, 9]
    heats = explain.GradCam(model)(pixels, classes)
    conv = keras.Model(model.inputs, model.get_layer(LAST_CONV_LAYER).output)
    activations = np.asarray(conv([pixels[None].astype(np.float32)], training=False))[0]
    kernel = np.asarray(model.layers[-1].kernel)  # (2048, 10)
    for heat, c in zip(heats, classes, strict=True):
        cam = np.maximum(activations @ kernel[:, c], 0)  # (h, w)
        cam = cv2.resize(cam.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        cam = np.maximum(cam, 0)
        expected = cam / cam.max() if cam.max() > 0 else cam
        np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_predictor_explains_the_top_condition_and_each_positive(predictor):
    rgb = photo(2)
    prediction = predictor.predict(rgb)
    heats = predictor.explain(rgb)
    assert next(iter(heats)) == prediction.top
    assert set(heats) == {prediction.top, *prediction.positives}
    chosen = predictor.explain(rgb, classes=[5])
    assert list(chosen) == [5] and chosen[5].shape == (SIZE, SIZE)


class CountingRuntime:
    """A runtime that counts its forward passes."""

    def __init__(self, runtime):
        self.runtime, self.calls = runtime, 0
        self.image_size, self.name = runtime.image_size, runtime.name

    def forward(self, pixels):
        self.calls += 1
        return self.runtime.forward(pixels)


@pytest.mark.parametrize("tta", [False, True])
def test_a_prediction_is_explained_from_its_own_forward_pass(predictor, tta):
    """explain_prediction draws the CAM from the class maps the prediction carries: no
    second forward pass, and the same maps as explaining the image afresh (with test-time
    augmentation, those of the un-augmented view)."""
    counting = CountingRuntime(predictor.runtime)
    plain = Predictor(counting)
    prediction = plain.predict(photo(7), tta=tta)
    assert counting.calls == 1
    assert prediction.class_maps.shape[-1] == 10 and prediction.class_maps.dtype == np.float32
    classes = [prediction.top, *[c for c in (3, 8, 1) if c != prediction.top][:2]]
    heats = plain.explain_prediction(prediction, classes)
    assert counting.calls == 1
    fresh = plain.explain(photo(7), classes=classes)
    assert counting.calls == 2
    assert list(heats) == classes
    for c in classes:  # a batch of four views rounds otherwise than a batch of one
        np.testing.assert_allclose(heats[c], fresh[c], atol=1e-4)
    assert set(plain.explain_prediction(prediction)) == {prediction.top, *prediction.positives}


def test_a_prediction_without_class_maps_is_a_clear_error(predictor):
    from dataclasses import replace

    bare = replace(predictor.predict(photo(2)), class_maps=None)
    with pytest.raises(ValueError, match="carries no class maps"):
        predictor.explain_prediction(bare)


def test_overlay_resizes_the_heat_onto_the_photo():
    rgb = photo(3, shape=(120, 200))
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[: SIZE // 2, : SIZE // 2] = 1.0  # hot top-left quadrant
    out = explain.overlay(rgb, heat, alpha=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(explain.overlay(rgb, heat, alpha=0.0), rgb)
    colours = explain.overlay(rgb, heat, alpha=1.0)
    assert colours[10, 10, 0] > 100 and colours[10, 10, 2] < 50  # JET: hot is red
    assert colours[110, 190, 2] > 100 and colours[110, 190, 0] < 50  # cold is blue
    with pytest.raises(ValueError, match="alpha"):
        explain.overlay(rgb, heat, alpha=1.5)


def test_save_png(tmp_path):
    from PIL import Image

    rgb = photo(4)
    path = explain.save_png(tmp_path / "sub" / "cam.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)


def _quadrant_means(heat: np.ndarray) -> np.ndarray:
    h, w = heat.shape
    return np.array(
        [
            heat[: h // 2, : w // 2].mean(),
            heat[: h // 2, w // 2 :].mean(),
            heat[h // 2 :, : w // 2].mean(),
            heat[h // 2 :, w // 2 :].mean(),
        ]
    )


CORNERS = ((0.2, 0.2), (0.8, 0.2), (0.2, 0.8), (0.8, 0.8))  # (x, y) of quadrants 0..3


def _best_learned_conditions(predictor: Predictor, k: int, seed: int = 7) -> list[int]:
    """The k conditions the model tells apart best: own-class minus other-class probability."""
    from scalpnet.data.synthetic import make_image

    rng = np.random.default_rng(seed)
    probs = np.zeros((10, 4, 10))  # (drawn condition, image, output)
    for c in range(10):
        images = [make_image(c, rng, size=(240, 320)) for _ in range(4)]
        probs[c] = [p.raw_probabilities for p in predictor.predict_batch(images)]
    separation = [probs[c, :, c].mean() - np.delete(probs[:, :, c], c, 0).mean() for c in range(10)]
    return [int(c) for c in np.argsort(separation)[::-1][:k]]


@pytest.mark.slow
def test_heat_follows_the_condition_to_the_corner_it_is_drawn_in(tiny_run):
    """On the trained tiny run, for one of the three conditions it has learned best, the
    heat is highest in whichever quadrant the signature was drawn: at least 13 of 16 images
    (4 per quadrant). Chance is 4 of 16; a heat map transposed scores at most 8, one
    flipped upside down 0.

    Only the best of three is asked to localise, because which conditions the model finds
    by where they are, rather than by colour anywhere in the photo, depends on the CPU it
    was trained on. Measured: the tiny run trained on the usual CI VM scored 16, 16 and 7
    (the two red-blob patterns, and the purple one, which it finds by its colour); on a
    2-core AVX2 EPYC, 16, 15 and 5 trained with Eigen's kernels (conditions 1, 2, 4) and
    16, 5 and 4 with oneDNN's (conditions 1, 4, 3), which failed the earlier bar of 15 of
    24 over all three."""
    from scalpnet.data.synthetic import make_image

    predictor = Predictor.load(tiny_run)
    hits = {}
    for condition in _best_learned_conditions(predictor, k=3):
        hits[condition] = 0
        for quadrant, where in enumerate(CORNERS):
            for seed in range(4):
                rng = np.random.default_rng(1000 * condition + 10 * quadrant + seed)
                image = make_image(condition, rng, size=(240, 320), where=where)
                heat = predictor.explain(image, classes=[condition])[condition]
                hits[condition] += int(np.argmax(_quadrant_means(heat)) == quadrant)
    print(f"heat in the drawn quadrant, of 16, by condition: {hits}")
    assert max(hits.values()) >= 13, f"heat in the drawn quadrant, of 16: {hits}"


def test_explain_from_several_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    predictor = Predictor.load(model_file())
    rgb = photo(5)
    with ThreadPoolExecutor(max_workers=4) as pool:
        heats = list(pool.map(lambda _: predictor.explain(rgb, classes=[2])[2], range(4)))
    for heat in heats[1:]:
        np.testing.assert_allclose(heat, heats[0], atol=1e-6)
