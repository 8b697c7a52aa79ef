"""Out-of-distribution model: Mahalanobis maths, threshold, save/load, probes, a fitted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scalpnet.errors import ScalpNetError
from scalpnet.judge import ood


def _clusters(n_per_class=200, dim=16, classes=3, seed=0):
    """Gaussian features around well separated class means, with one-hot labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, dim))
    mixing = rng.normal(0, 1, (dim, dim))  # a shared, correlated covariance
    features, labels = [], []
    for c in range(classes):
        features.append(centres[c] + rng.normal(0, 1, (n_per_class, dim)) @ mixing)
        onehot = np.zeros((n_per_class, 10))
        onehot[:, c] = 1
        labels.append(onehot)
    return np.concatenate(features), np.concatenate(labels), centres, mixing


def test_score_is_the_mahalanobis_distance_to_the_nearest_class():
    features, labels, _, _ = _clusters()
    model = ood.fit(features, labels)
    assert model.classes.tolist() == [0, 1, 2]
    # Recompute by the textbook formula with the covariance the whitener encodes.
    precision = model.whitener.astype(np.float64) @ model.whitener.T.astype(np.float64)
    means = np.stack([features[labels[:, c] == 1].mean(axis=0) for c in range(3)])
    x = features[:7]
    d = np.sqrt(np.einsum("bcd,de,bce->bc", x[:, None] - means, precision, x[:, None] - means))
    np.testing.assert_allclose(model.score(x), d.min(axis=1), rtol=1e-3)


def test_far_points_score_higher_and_threshold_passes_the_requested_share():
    features, labels, _, _ = _clusters(seed=1)
    model = ood.fit(features, labels)
    val, _, _, _ = _clusters(n_per_class=300, seed=1)  # same distribution, fresh draws
    val = val + np.random.default_rng(9).normal(0, 0.01, val.shape)
    model = ood.choose_threshold(model, model.score(val), pass_rate=0.95)
    assert np.mean(model.score(val) <= model.threshold) == pytest.approx(0.95, abs=0.005)
    far = np.random.default_rng(2).normal(0, 100, (50, features.shape[1]))
    assert model.is_ood(far).mean() > 0.9
    assert ood.auroc(model.score(val), model.score(far)) > 0.95


def test_multi_label_images_count_towards_each_class():
    features, labels, _, _ = _clusters(classes=2)
    labels[:5, 1] = 1  # five images of class 0 also carry class 1
    model = ood.fit(features, labels)
    assert model.classes.tolist() == [0, 1]
    with pytest.raises(ValueError, match="no image has any label"):
        ood.fit(features, np.zeros_like(labels))


def test_save_and_load_round_trip(tmp_path):
    features, labels, _, _ = _clusters()
    model = ood.fit(features, labels).with_threshold(12.5)
    path = model.save(tmp_path / "ood.npz")
    loaded = ood.OODModel.load(path)
    assert loaded.threshold == 12.5 and loaded.classes.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(loaded.score(features[:10]), model.score(features[:10]))
    (tmp_path / "broken.npz").write_bytes(b"not a npz")
    with pytest.raises(ScalpNetError, match="not a readable OOD model"):
        ood.OODModel.load(tmp_path / "broken.npz")
    with pytest.raises(ValueError, match="features"):
        model.score(np.zeros((2, 3)))


def test_probe_images_cover_every_kind_without_downloads():
    probes = ood.probe_images(64, per_kind=2, seed=0)
    names = [name for name, _ in probes]
    for kind in ("uniform_noise", "gaussian_noise", "flat_colour", "gradient", "text_screenshot"):
        assert sum(name.startswith(kind) for name in names) == 2
    assert any(name.startswith("sklearn:china") for name in names)
    assert any(name.startswith("skimage:astronaut") for name in names)
    for name, image in probes:
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, name
    text = dict(probes)["text_screenshot_0"]
    assert text.std() > 10  # there is text on the page, not a blank canvas
    again = ood.probe_images(64, per_kind=2, seed=0)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(probes, again, strict=True))


@pytest.mark.slow
def test_fit_run_flags_non_scalp_images_far_more_often_than_validation(tiny_run, tmp_path):
    """On the trained tiny run: probes are OOD far more often than validation images."""
    tiny_run = Path(shutil.copytree(tiny_run, tmp_path / "run"))  # leave the shared run as is
    metrics_path = tiny_run / "metrics.json"
    before = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    config = ood.OODConfig(max_train_images=400, probes_per_kind=3)
    summary = ood.fit_run(tiny_run, config)
    metrics = json.loads(metrics_path.read_text())
    assert metrics["ood"] == json.loads(json.dumps(summary))
    assert {k: v for k, v in metrics.items() if k != "ood"} == {
        k: v for k, v in before.items() if k != "ood"
    }  # other sections kept
    assert summary["val_pass_rate"] >= 0.9
    assert summary["probe_flagged_rate"] >= 0.5
    assert summary["probe_flagged_rate"] > 5 * (1 - summary["val_pass_rate"])
    assert summary["auroc_val_vs_probes"] > 0.8
    assert (tiny_run / "ood.npz").is_file()

    from scalpnet.serve.predictor import Predictor

    # The app's path (Predictor: bytes or arrays -> Prediction.is_ood) flags the same
    # probes as fit_run measured. (Which kinds a tiny model flags varies with its
    # training: uniform noise was flagged by some seeds' runs and not by others.)
    predictor = Predictor.load(tiny_run)
    assert predictor.ood is not None
    card = json.loads((tiny_run / "model_card.json").read_text())
    probes = ood.probe_images(card["image_size"], config.probes_per_kind, config.seed)
    flags = [r.is_ood for r in predictor.predict_batch([image for _, image in probes])]
    assert len(flags) == summary["probes"]
    assert np.mean(flags) == pytest.approx(summary["probe_flagged_rate"], abs=1.5 / len(flags))


def test_whitener_inverts_the_covariance_and_survives_a_singular_one():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    covariance = a @ a.T + np.eye(6)
    w = ood._whitener(covariance)
    np.testing.assert_allclose(w @ w.T, np.linalg.inv(covariance), atol=1e-8)
    singular = ood._whitener(np.diag([1.0, 4.0, 0.0]))  # Cholesky fails: eigenvalue fallback
    assert np.all(np.isfinite(singular))
    np.testing.assert_allclose(np.diag(singular @ singular.T)[:2], [1.0, 0.25], atol=1e-9)
