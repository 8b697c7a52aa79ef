"""The run folder's ONNX models on the trained tiny run: the same Prediction as Keras on the
real photos, int8 close to fp32 and served only through its gate, the record in
onnx_check.json, what auto then serves, the evaluation of every runtime, and the gate's
arithmetic."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from scalpnet import files
from scalpnet.errors import DiskFullError
from scalpnet.judge.calibration import Calibration
from scalpnet.progress import PROGRESS_FILE_ENV, read_status
from scalpnet.serve import onnx_export, runtimes
from scalpnet.serve.predictor import Predictor

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic"}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny run exported; its progress went to ``<run>/../progress.json``."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_run, run)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PROGRESS_FILE_ENV, str(run.parent / "progress.json"))
        return run, onnx_export.export_run(run)


def real_photos() -> list[Path]:
    photos = sorted(
        p
        for folder in ("real_photos", "real_scalp")
        for p in (FIXTURES / folder).rglob("*")
        if p.suffix.lower() in PHOTO_SUFFIXES
    )
    if not photos:
        pytest.skip(f"no real photos under {FIXTURES}")
    return photos


def _write_trivial_ood(run: Path, photos, keras: Predictor) -> float:
    """An OOD model (distance to the origin) whose threshold sits in the widest gap between
    the middle scores of ``photos``, so some photos are flagged and some are not."""
    from scalpnet.judge.ood import OODModel

    features, _, _ = keras.runtime.forward(np.stack([keras.prepare(p).pixels for p in photos]))
    model = OODModel(
        means=np.zeros((1, 2048), np.float32),
        whitener=np.eye(2048, dtype=np.float32),
        classes=np.array([0]),
        threshold=0.0,
    )
    scores = np.sort(model.score(features))
    middle = scores[len(scores) // 4 : 3 * len(scores) // 4 + 1]
    gap = int(np.argmax(np.diff(middle)))
    threshold = float((middle[gap] + middle[gap + 1]) / 2)
    dataclasses.replace(model, threshold=threshold).save(run / "ood.npz")
    return threshold


@pytest.mark.slow
def test_onnx_gives_the_keras_prediction_on_real_photos(exported, tmp_path):
    photos = real_photos()
    run = tmp_path / "run"
    shutil.copytree(exported[0], run, ignore=shutil.ignore_patterns("model.int8.onnx"))
    keras = Predictor.load(run, runtime="keras")
    _write_trivial_ood(run, photos, keras)
    keras = Predictor.load(run, runtime="keras")
    onnx = Predictor.load(run)
    assert (keras.runtime.name, onnx.runtime.name) == ("keras", "onnx-fp32")
    expected, got = keras.predict_batch(photos), onnx.predict_batch(photos)
    flagged = [p.is_ood for p in expected]
    assert 0 < sum(flagged) < len(flagged)  # the OOD flag is really compared
    for path, a, b in zip(photos, expected, got, strict=True):
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-4, err_msg=path.name)
        assert b.positives == a.positives, path.name
        assert b.is_ood == a.is_ood, path.name
        assert b.ood_score == pytest.approx(a.ood_score, rel=1e-4)
    tta_a, tta_b = keras.predict(photos[0], tta=True), onnx.predict(photos[0], tta=True)
    np.testing.assert_allclose(tta_b.uncertainty, tta_a.uncertainty, atol=1e-4)


@pytest.mark.slow
def test_export_run_writes_both_models_and_their_check(exported):
    run, record = exported
    assert json.loads((run / runtimes.CHECK_FILE).read_text()) == record
    fp32, int8 = record["fp32"], record["int8"]
    assert fp32["passed"] and fp32["max_raw_diff"] <= onnx_export.FP32_TOLERANCE
    assert fp32["n"] == 200 and fp32["top1_agreement"] == 1.0  # the tiny run's test split
    assert int8["bytes"] < 0.4 * fp32["bytes"]
    assert _float_pads(run / runtimes.INT8_FILE) == []  # ResNet50's pool1_pad pads integers
    umask = os.umask(0)
    os.umask(umask)
    for name in (runtimes.FP32_FILE, runtimes.INT8_FILE):  # as readable as any other file
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no scratch left
    # int8 is a working quantisation of this model: far from a broken one (agreement near
    # chance), but whether it is inside the serving gate varies from one training to the
    # next, since training is not bit-repeatable here. Top-1 agreement with fp32 measured:
    # tiny runs 0.995 (2026-11-29) and 0.975 (CI, 2026-12-02); three demo models 0.980,
    # 0.990, 0.982 with largest calibrated differences 0.16, 0.15, 0.06: the gate refused
    # all three. So the test checks that the gate decides by all three conditions and
    # that serving obeys it, not that this run passes.
    assert int8["top1_agreement"] >= 0.9 and int8["max_prob_diff"] <= 0.3, int8
    gate = (
        int8["top1_agreement"] >= 0.99
        and int8["max_prob_diff"] <= 0.05
        and int8["max_flip_rate"] <= 0.01
    )
    assert int8["passed"] == gate, int8
    assert bool(int8["reasons"]) == (not gate)
    served = "onnx-int8" if gate else "onnx-fp32"
    assert record["served_by_default"] == served
    predictor = Predictor.load(run)
    assert predictor.runtime.name == served
    assert (predictor.runtime_note is None) == gate


def test_a_full_disk_is_one_line_and_leaves_the_run_as_it_was(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.onnx", runtimes.CHECK_FILE))
    before = sorted(p.name for p in run.iterdir())
    monkeypatch.setenv(files.FAULT_ENV, f"enospc:{runtimes.FP32_FILE}:1")
    monkeypatch.setattr(files, "_fault_counts", {})
    with pytest.raises(DiskFullError, match=r"model\.keras and the rest of the run are whole"):
        onnx_export.export_run(run)
    assert sorted(p.name for p in run.iterdir()) == before  # no half-written model


def test_the_export_reports_its_progress_for_the_app(exported):
    run, _ = exported
    status = read_status(run.parent / "progress.json")
    total = sum(onnx_export.STAGE_SECONDS.values())
    assert status["step"] == "export" and status["done"] == status["total"] == total
    assert status["left_s"] == 0.0


@pytest.mark.slow
def test_evaluate_scores_every_runtime_side_by_side(exported, tmp_path):
    from scalpnet.judge import evaluation

    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    others = runtimes.onnx_probability_fns(run)
    assert list(others) == ["onnx-fp32", "onnx-int8"]
    config = evaluation.EvaluationConfig(progress=False)
    metrics = evaluation.evaluate(run, config, runtimes=others).metrics
    table = metrics["runtimes"]
    assert list(table) == ["keras", "onnx-fp32", "onnx-int8"]
    assert table["onnx-fp32"]["max_prob_diff_vs_keras"] <= 1e-4
    assert table["onnx-fp32"]["top1_accuracy"] == table["keras"]["top1_accuracy"]
    # A working quantisation, as in the export's test above: how close int8 comes varies
    # with the training and with the CPU (x86 without VNNI saturates int8 products: 0.100
    # on an AVX2-only EPYC, 2026-12-04; docs/deploy.md).
    assert table["onnx-int8"]["max_prob_diff_vs_keras"] <= 0.3
    assert any(note.startswith("runtime onnx-int8:") for note in metrics["notes"])


def _float_pads(path: Path) -> list[str]:
    """Pad nodes of an ONNX model that pad a DequantizeLinear's float output."""
    import onnx

    graph = onnx.load(os.fspath(path)).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "Pad" and n.input[0] in dequantised]


def _qdq_pad_model(
    path: Path, *, mode: str = "constant", value: float = 0.0, after_scale: float = 0.5
) -> Path:
    """x (1, 3, 3, 2) float -> Q -> DQ -> Pad (H and W by 1, 2) -> Q -> DQ -> y, scale 0.5
    and zero point 3 (the Q after the Pad: ``after_scale``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
        helper.make_node("Pad", ["xf", "pads", "value"], ["padded"], name="pad", mode=mode),
        helper.make_node("QuantizeLinear", ["padded", "s2", "z"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "s2", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_pad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 7, 2])],
        [
            const("s", 0.5, np.float32),
            const("s2", after_scale, np.float32),
            const("z", 3, np.uint8),
            const("pads", [0, 1, 2, 0, 0, 1, 2, 0], np.int64),
            const("value", value, np.float32),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, os.fspath(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_pad_integers_pads_the_quantised_tensor_with_the_same_result(tmp_path):
    import onnx

    path = _qdq_pad_model(tmp_path / "qdq.onnx")
    x = np.random.default_rng(0).uniform(-1.5, 100, (1, 3, 3, 2)).astype(np.float32)
    before = _run(path, x)
    model = onnx.load(os.fspath(path))
    assert onnx_export.pad_integers(model) == 1
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(tmp_path / "rewritten.onnx"))
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    assert _float_pads(tmp_path / "rewritten.onnx") == []
    after = _run(tmp_path / "rewritten.onnx", x)
    assert after.shape == (1, 5, 7, 2)
    np.testing.assert_array_equal(after, before)
    assert (after[:, 0] == 0).all() and (after[:, :, :2] == 0).all()  # the border is zero


@pytest.mark.parametrize(
    "change",
    [{"mode": "reflect"}, {"value": 1.0}, {"after_scale": 0.25}],
    ids=["not-zeros", "another-fill", "another-scale"],
)
def test_pad_integers_leaves_pads_that_would_change_the_numbers(tmp_path, change):
    import onnx

    model = onnx.load(os.fspath(_qdq_pad_model(tmp_path / "qdq.onnx", **change)))
    assert onnx_export.pad_integers(model) == 0
    assert len(model.graph.node) == 5


def test_gate_reasons_name_each_failed_condition():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.05, 0.95, (200, 10))
    identity, half = Calibration.identity(), np.full(10, 0.5)
    same = onnx_export.compare(reference, reference.copy(), identity, half)
    assert onnx_export.gate_reasons(same) == []
    assert same["top1_agreement"] == 1.0 and same["max_prob_diff"] == 0.0
    shifted = reference.copy()
    shifted[:, 0] += 0.06  # one condition moves by more than 0.05 everywhere
    measured = onnx_export.compare(reference, np.clip(shifted, 0, 1), identity, half)
    reasons = onnx_export.gate_reasons(measured)
    assert any("calibrated-probability difference" in r for r in reasons)
    assert any("flips" in r for r in reasons)  # values near 0.5 cross the threshold
    assert any("top-1 agreement" in r for r in reasons)


class _Cycle:
    """An object in a reference cycle: only the cycle collector frees it."""

    def __init__(self):
        self.me = self


def test_collecting_cycles_frees_cycles_while_the_body_runs():
    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collection: only the collector's can free the cycle
    try:
        before = gc.get_freeze_count()
        with onnx_export.collecting_cycles(every_s=0.02):
            assert gc.get_freeze_count() > before  # what existed before is not walked
            cycle = _Cycle()
            alive = weakref.ref(cycle)
            del cycle
            deadline = time.monotonic() + 10
            while alive() is not None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert alive() is None
        assert gc.get_freeze_count() == 0
        assert "collect-cycles" not in {t.name for t in threading.enumerate()}
        left = _Cycle()
        kept = weakref.ref(left)
        del left
        time.sleep(0.1)
        assert kept() is not None  # the collector stopped with the body
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()
