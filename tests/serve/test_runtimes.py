"""Runtimes: the CAM on ONNX equals Grad-CAM, the choice of runtime, bad ONNX files, and a
process serving ONNX never imports TensorFlow. (Prediction parity on real photos is in
test_onnx_export.py, on the trained tiny run.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import SIZE, add_onnx, jpeg_bytes, make_run, photo, sha256

from scalpnet.errors import ModelNotFoundError
from scalpnet.serve.predictor import Predictor

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory) -> Path:
    """model.keras + model.onnx + model.int8.onnx, thresholds, calibration (no check record)."""
    return add_onnx(make_run(tmp_path_factory.mktemp("onnx") / "run"), int8=True)


def _copy_run(run: Path, to: Path, skip=()) -> Path:
    to.mkdir(parents=True)
    for item in run.iterdir():
        if item.name not in skip:
            (to / item.name).symlink_to(item)
    return to


def test_cam_on_onnx_equals_keras_gradcam(onnx_run):
    """The CAM drawn from ONNX Runtime's class maps equals TensorFlow's gradient Grad-CAM."""
    from scalpnet.serve.explain import GradCam

    keras, onnx = Predictor.load(onnx_run, runtime="keras"), Predictor.load(onnx_run)
    classes = [0, 3, 6, 9]
    for seed in (1, 2):
        pixels = keras.prepare(photo(seed)).pixels
        expected = GradCam(keras.runtime.model)(pixels, classes)
        for name, predictor in (("keras", keras), ("onnx", onnx)):
            heats = predictor.explain(photo(seed), classes=classes)
            for c, heat in zip(classes, expected, strict=True):
                assert heats[c].shape == (SIZE, SIZE)
                np.testing.assert_allclose(heats[c], heat, atol=1e-4, err_msg=f"{name} {c}")


def _check_record(run: Path, passed: bool, probe_scale: float | None = 1.0) -> None:
    """An onnx_check.json as the export writes it; ``probe_scale``: the recorded probe
    features are what the int8 model computes here times this (None: not recorded)."""
    from scalpnet.serve import runtimes

    record = {"int8": {"passed": passed, "reasons": [] if passed else ["top-1 agreement 90%"]}}
    record["int8"]["sha256"] = sha256(run / "model.int8.onnx")
    if probe_scale is not None:
        here = runtimes.probe_features(runtimes.OnnxRuntime(run / "model.int8.onnx"))
        record["int8"]["probe_features"] = (here * probe_scale).tolist()
    (run / "onnx_check.json").write_text(json.dumps(record))


def test_auto_serves_int8_only_when_its_recorded_check_passed(onnx_run, tmp_path):
    run = _copy_run(onnx_run, tmp_path / "run")
    first = Predictor.load(run)
    assert first.runtime.name == "onnx-fp32" and "no recorded check" in first.runtime_note
    _check_record(run, passed=False)
    failed = Predictor.load(run)
    assert failed.runtime.name == "onnx-fp32" and "top-1 agreement 90%" in failed.runtime_note
    _check_record(run, passed=True)
    passed = Predictor.load(run)
    assert passed.runtime.name == "onnx-int8" and passed.runtime_note is None
    assert passed.describe()["runtime"] == "onnx-int8"
    # A record of another file does not vouch for this one.
    record = json.loads((run / "onnx_check.json").read_text())
    record["int8"]["sha256"] = "0" * 64
    (run / "onnx_check.json").write_text(json.dumps(record))
    assert Predictor.load(run).runtime.name == "onnx-fp32"
    # A check made where int8 computed other numbers (a CPU whose int8 products saturate,
    # or not) does not hold here; nor one that does not say what it computed.
    _check_record(run, passed=True, probe_scale=1.05)
    elsewhere = Predictor.load(run)
    assert elsewhere.runtime.name == "onnx-fp32"
    assert "computes other numbers on this CPU" in elsewhere.runtime_note
    _check_record(run, passed=True, probe_scale=None)
    unrecorded = Predictor.load(run)
    assert unrecorded.runtime.name == "onnx-fp32" and "export it again" in unrecorded.runtime_note
    record = json.loads((run / "onnx_check.json").read_text())
    record["int8"]["probe_features"] = ["?"] * 2048  # a damaged record: the same, no traceback
    (run / "onnx_check.json").write_text(json.dumps(record))
    assert "export it again" in Predictor.load(run).runtime_note
    # Asked for by name (argument or environment), int8 is served regardless.
    assert Predictor.load(run, runtime="int8").runtime.name == "onnx-int8"
    os.environ["SCALPNET_RUNTIME"] = "keras"
    try:
        assert Predictor.load(run).runtime.name == "keras"
    finally:
        del os.environ["SCALPNET_RUNTIME"]


def test_keras_only_run_is_served_by_keras(tmp_path):
    run = make_run(tmp_path / "run")
    predictor = Predictor.load(run)
    assert predictor.runtime.name == "keras" and predictor.runtime_note is None
    with pytest.raises(ModelNotFoundError, match=r"holds no model\.onnx"):
        Predictor.load(run, runtime="onnx")
    with pytest.raises(ModelNotFoundError, match="unknown runtime 'tpu'"):
        Predictor.load(run, runtime="tpu")


def _probs_only_onnx(path: Path) -> None:
    """A valid ONNX model that is not a ScalpNet serving model: image -> one output."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, SIZE, SIZE, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, SIZE, SIZE, 3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["out"])], "g", [image], [out]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "mismatched"])
def test_bad_onnx_file_falls_back_with_a_note_or_stops_with_one_message(onnx_run, tmp_path, damage):
    run = _copy_run(onnx_run, tmp_path / "run", skip=("model.onnx", "model.int8.onnx"))
    good = (onnx_run / "model.onnx").read_bytes()
    if damage == "truncated":
        (run / "model.onnx").write_bytes(good[: len(good) // 3])
    elif damage == "garbage":
        (run / "model.onnx").write_bytes(b"not an onnx model at all")
    else:
        _probs_only_onnx(run / "model.onnx")
    predictor = Predictor.load(run)
    assert predictor.runtime.name == "keras"
    assert "model.onnx" in predictor.runtime_note
    assert predictor.predict(photo(0)).probabilities
    with pytest.raises(ModelNotFoundError) as caught:
        Predictor.load(run, runtime="onnx")
    message = str(caught.value)
    assert "model.onnx" in message and "\n" not in message and "Traceback" not in message
    # Without model.keras to fall back to, loading stops with the same clear message.
    (run / "model.keras").unlink()
    with pytest.raises(ModelNotFoundError, match=r"model\.onnx"):
        Predictor.load(run)


SERVE_WITHOUT_TF = """
import sys
from scalpnet.serve.predictor import Predictor
from scalpnet.serve.explain import overlay
predictor = Predictor.load(sys.argv[1])
data = open(sys.argv[2], "rb").read()
prediction = predictor.predict(data, tta=True)
heats = predictor.explain_prediction(prediction)
overlay(predictor.prepare(data).pixels, next(iter(heats.values())))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
print(predictor.runtime.name, heavy)
"""


def test_a_process_serving_onnx_imports_no_tensorflow(onnx_run, tmp_path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg_bytes(photo(6)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SCALPNET_RUNTIME", None)
    done = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TF, str(onnx_run), str(image)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "onnx-fp32" and done.stdout.strip().endswith("[]"), done.stdout
