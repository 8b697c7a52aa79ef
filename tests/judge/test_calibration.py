"""Per-condition temperature scaling: the formula, the fit, and calibration.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit

from scalpnet.errors import ModelNotFoundError, ScalpNetError
from scalpnet.judge import calibration
from scalpnet.judge.calibration import Calibration
from scalpnet.judge.metrics import brier_score, expected_calibration_error
from scalpnet.labels import KEYS, NUM_CLASSES


def overconfident(n: int, sharpen: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities q, reported as sigmoid(sharpen * logit(q))."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.02, 0.98, size=(n, NUM_CLASSES))
    y = (rng.uniform(size=q.shape) < q).astype(np.int64)
    reported = expit(sharpen * calibration.logit(q))
    return y, reported


def test_apply_temperature_matches_hand_values():
    # logit(0.9) = ln 9; halved -> ln 3; sigmoid(ln 3) = 3/4.
    assert calibration.apply_temperature(np.array([0.9]), np.array([2.0]))[0] == pytest.approx(0.75)
    # T = 1/2 doubles the logit: ln 81 -> 81/82.
    assert calibration.apply_temperature(np.array([0.9]), np.array([0.5]))[0] == pytest.approx(
        81 / 82
    )
    # 0.5 is a fixed point for any T, so decisions at 0.5 never change.
    p = np.full((3, NUM_CLASSES), 0.5)
    temps = np.linspace(0.1, 10, NUM_CLASSES)
    np.testing.assert_allclose(calibration.apply_temperature(p, temps), 0.5)


def test_identity_and_order_preserved():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.001, 0.999, size=(50, NUM_CLASSES))
    np.testing.assert_allclose(Calibration.identity().apply(p), p, atol=1e-12)
    out = Calibration(tuple(np.linspace(0.3, 4.0, NUM_CLASSES))).apply(p)
    for k in range(NUM_CLASSES):  # monotone per condition: same ranking, same AUC
        np.testing.assert_array_equal(np.argsort(out[:, k]), np.argsort(p[:, k]))


def test_saturated_probabilities_stay_finite():
    p = np.array([[0.0, 1.0] + [0.5] * (NUM_CLASSES - 2)], dtype=np.float32)
    out = Calibration((3.0,) * NUM_CLASSES).apply(p)
    assert np.isfinite(out).all()
    assert 0.0 < out[0, 0] < 0.01 and 0.99 < out[0, 1] < 1.0


def test_fit_recovers_the_temperature_of_an_overconfident_model():
    y, p = overconfident(4000, sharpen=3.0)
    fitted = Calibration.fit(y, p)
    # The reported logits are 3x the true ones, so T should be close to 3.
    assert all(2.5 < t < 3.6 for t in fitted.temperatures), fitted.temperatures


def test_temperature_scaling_lowers_ece_and_brier_on_held_out_data():
    y_fit, p_fit = overconfident(3000, sharpen=4.0, seed=2)
    y_new, p_new = overconfident(3000, sharpen=4.0, seed=3)
    fitted = Calibration.fit(y_fit, p_fit)
    before = expected_calibration_error(y_new, p_new)
    after = expected_calibration_error(y_new, fitted.apply(p_new))
    assert before > 0.1  # deliberately over-confident
    assert after < before / 3
    assert brier_score(y_new, fitted.apply(p_new)) < brier_score(y_new, p_new)


def test_one_class_condition_keeps_temperature_one():
    y, p = overconfident(500, sharpen=3.0)
    y[:, 4] = 0  # no positives: the NLL falls forever as T -> 0, so no fit is honest
    y[:, 7] = 1  # only positives
    fitted = Calibration.fit(y, p)
    assert fitted.temperatures[4] == 1.0
    assert fitted.temperatures[7] == 1.0
    assert fitted.temperatures[0] != 1.0


def test_fit_stays_within_bounds():
    y = np.tile([0, 1], 50)
    p = np.where(y == 1, 0.9999999, 1e-7)  # perfectly separated: wants T -> 0
    t = calibration.fit_temperature(y, p)
    assert calibration.MIN_TEMPERATURE <= t <= calibration.MAX_TEMPERATURE


def test_save_load_round_trip_and_schema(tmp_path):
    cal = Calibration(tuple(float(x) for x in np.linspace(0.5, 2.5, NUM_CLASSES)))
    path = cal.save(tmp_path)  # a run folder -> calibration.json inside it
    assert path == tmp_path / "calibration.json"
    data = json.loads(path.read_text())
    assert data["method"] == "temperature"
    assert data["fitted_on"] == "val"
    assert list(data["temperature"]) == list(KEYS)
    assert Calibration.load(tmp_path) == cal
    assert Calibration.load(path) == cal
    assert not list(tmp_path.glob(".calibration*"))  # no temp file left behind


def test_load_reads_conditions_by_key_not_position(tmp_path):
    temps = {k: 1.0 + i for i, k in enumerate(KEYS)}
    shuffled = dict(reversed(list(temps.items())))
    path = tmp_path / "calibration.json"
    path.write_text(
        json.dumps({"method": "temperature", "fitted_on": "val", "temperature": shuffled})
    )
    assert Calibration.load(path).temperatures == tuple(temps[k] for k in KEYS)


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"method": "platt", "temperature": {}}),
        json.dumps({"method": "temperature", "temperature": {"alopecia_areata": 1.0}}),
        json.dumps({"method": "temperature", "temperature": dict.fromkeys(KEYS, -1.0)}),
        json.dumps({"method": "temperature", "temperature": dict.fromkeys(KEYS, "x")}),
        json.dumps([1, 2]),
    ],
)
def test_bad_files_raise_a_user_error(tmp_path, content):
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(ModelNotFoundError, match=r"calibration\.json"):
        Calibration.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ScalpNetError, match="no calibration file"):
        Calibration.load(tmp_path)
    assert Calibration.load_or_identity(tmp_path) == Calibration.identity()


def test_shape_checks():
    with pytest.raises(ValueError, match="temperatures"):
        Calibration((1.0,) * 3)
    with pytest.raises(ValueError, match="> 0"):
        Calibration((0.0,) * NUM_CLASSES)
    with pytest.raises(ValueError, match="last axis"):
        Calibration.identity().apply(np.zeros((2, 3)))
    single = Calibration((2.0,) * NUM_CLASSES).apply(np.full(NUM_CLASSES, 0.9))
    assert single.shape == (NUM_CLASSES,)
    assert single[0] == pytest.approx(0.75)


def test_binary_nll_matches_the_textbook_formula():
    y = np.array([1, 0, 1, 0])
    z = np.array([2.0, -1.0, -0.5, 8.0])
    s = 1 / (1 + np.exp(-z))
    expected = -np.mean(y * np.log(s) + (1 - y) * np.log(1 - s))
    assert calibration.binary_nll(y, z) == pytest.approx(expected, rel=1e-9)
    assert math.isfinite(calibration.binary_nll(np.array([0]), np.array([1000.0])))


def test_sigmoid_is_stable_and_exact():
    from scipy.special import expit

    z = np.array([-800.0, -30.0, -5.0, 0.0, 3.0, 40.0, 800.0])
    np.testing.assert_allclose(calibration.sigmoid(z), expit(z), rtol=1e-12)
    p = np.array([1e-6, 1e-3, 0.5, 0.9])
    np.testing.assert_allclose(calibration.sigmoid(calibration.logit(p)), p, rtol=1e-12)
