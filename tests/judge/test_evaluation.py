"""Evaluation of a run: thresholds and metrics.json files, calibration and report, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from judge_arrays import fixed_arrays

from scalpnet import cli, files
from scalpnet.judge import evaluation
from scalpnet.judge.calibration import Calibration
from scalpnet.judge.metrics import (
    brier_score,
    compute_metrics,
    expected_calibration_error,
    tune_thresholds,
)
from scalpnet.judge.report import PLOT_FILES
from scalpnet.labels import ENGLISH_NAMES, KEYS, NUM_CLASSES


def test_thresholds_round_trip(tmp_path):
    t = np.linspace(0.1, 0.9, NUM_CLASSES)
    path = evaluation.save_thresholds(tmp_path, t)
    data = json.loads(path.read_text())
    assert (data["method"], data["fitted_on"]) == ("max_f1", "val")
    assert list(data["thresholds"]) == list(KEYS)
    np.testing.assert_allclose(evaluation.load_thresholds(tmp_path), t)
    with pytest.raises(evaluation.ModelNotFoundError):
        evaluation.load_thresholds(tmp_path / "nope")
    path.write_text('{"thresholds": {"alopecia_areata": 0.5}}')
    with pytest.raises(evaluation.ModelNotFoundError, match="every condition"):
        evaluation.load_thresholds(path)


def test_merge_json_keeps_other_sections(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"ood": {"auroc": 0.97}, "split": "val"}))
    merged = evaluation.merge_json(path, {"split": "test", "at_0.5": {}})
    assert merged == json.loads(path.read_text())
    assert merged == {"ood": {"auroc": 0.97}, "split": "test", "at_0.5": {}}
    path.write_text("{ broken")
    assert evaluation.merge_json(path, {"a": 1}) == {"a": 1}


def test_evaluate_predictions_fits_on_val_and_thresholds_apply_to_calibrated_probs():
    y_val, p_val = fixed_arrays(n=80, seed=11)
    y, p = fixed_arrays(n=40, seed=12)
    sections, cal, t = evaluation.evaluate_predictions(y_val, p_val, y, p)
    assert cal == Calibration.fit(y_val, p_val)
    np.testing.assert_allclose(t, tune_thresholds(y_val, cal.apply(p_val)))
    assert sections["at_tuned"] == compute_metrics(y, cal.apply(p), t)
    # Temperature scaling leaves every decision at 0.5 as it was.
    assert sections["at_0.5"]["per_condition"] == compute_metrics(y, p, 0.5)["per_condition"]
    before, after = sections["calibration"]["before"], sections["calibration"]["after"]
    assert before["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert after["brier"] == pytest.approx(brier_score(y, cal.apply(p)))
    json.dumps(sections, allow_nan=False)


# --------------------------------------------------------------------------- a whole run
def _write_tiny_run(root: Path, image_size: int = 32) -> Path:
    """A run folder with an UNTRAINED model and a processed dataset of random PNGs.

    test: one image per condition (balanced, single-label); val: two per condition.
    """
    import cv2

    from scalpnet.learn.model import build_model, save_model

    rng = np.random.default_rng(0)
    data = root / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for split, per_class in (("train", 1), ("val", 2), ("test", 1)):
        for k, key in enumerate(KEYS):
            for i in range(per_class):
                name = f"images/{split}_{key}_{i}.png"
                pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                pixels[..., k % 3] //= 2  # a faint per-class tint
                cv2.imwrite(str(data / name), pixels)
                labels = [int(j == k) for j in range(NUM_CLASSES)]
                rows.append([name, split, f"{key}_{i}.jpg", *labels])
    header = ["path", "split", "source", *KEYS]
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    (data / "labels.csv").write_text("\n".join(lines) + "\n")

    run = root / "runs" / "tiny"
    save_model(build_model(image_size=image_size, weights=None), run / "model.keras")
    card = {
        "name": "tiny",
        "demo": True,
        "image_size": image_size,
        "dataset": {"csv": str((data / "labels.csv").resolve()), "split_scheme": "grouped"},
        "training": {"command": "python train.py --demo"},
    }
    (run / "model_card.json").write_text(json.dumps(card))
    # A section another module owns; evaluation must keep it.
    (run / "metrics.json").write_text(json.dumps({"ood": {"auroc": 0.5}, "split": "stale"}))
    return run


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """The tiny run evaluated through the real CLI; (run folder, printed summary)."""
    run = _write_tiny_run(tmp_path_factory.mktemp("evaluation"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["evaluate", "--run", str(run), "--no-progress", "--batch-size", "10"])
    assert code == 0
    return run, out.getvalue()


@pytest.mark.slow
def test_evaluate_writes_every_file(evaluated_run):
    run, _ = evaluated_run
    for name in (
        "metrics.json",
        "report.md",
        "thresholds.json",
        "calibration.json",
        *PLOT_FILES.values(),
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    for name in PLOT_FILES.values():
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluation.load_thresholds(run).shape == (NUM_CLASSES,)
    Calibration.load(run)  # parses
    assert not list(run.glob(".*"))  # no temp files left


@pytest.mark.slow
def test_evaluate_metrics_json(evaluated_run):
    run, _ = evaluated_run
    m = json.loads((run / "metrics.json").read_text())
    assert m["ood"] == {"auroc": 0.5}  # another module's section survived
    assert set(m) == {"ood", *evaluation.OWNED_KEYS}
    assert m["split"] == "test" and m["split_scheme"] == "grouped" and m["demo"] is True
    assert m["n_images"] == {"test": 10, "val": 20}
    assert m["conditions"] == list(KEYS)
    # Balanced 10-class single-label test set: the all-negative predictor gets exactly 90%.
    assert m["at_0.5"]["all_negative_elementwise_accuracy"] == 0.9
    assert m["at_tuned"]["all_negative_elementwise_accuracy"] == 0.9
    assert m["thresholds"] == json.loads((run / "thresholds.json").read_text())["thresholds"]
    assert m["temperature"] == json.loads((run / "calibration.json").read_text())["temperature"]
    for section in ("at_0.5", "at_tuned"):
        assert set(m[section]["per_condition"]) == set(KEYS)
    assert {"before", "after", "n_bins"} <= set(m["calibration"])
    assert np.array(m["confusion_matrix"]["matrix"]).sum() == 10
    assert m["commands"]["train"] == "python train.py --demo"


@pytest.mark.slow
def test_evaluate_report_and_summary(evaluated_run):
    run, printed = evaluated_run
    report = (run / "report.md").read_text()
    assert "Demo model on synthetic data" in report
    assert "the original project's metric" in report
    assert "all-negative predictor" in report and "90.00%" in report
    assert "Split scheme: **grouped**" in report
    assert "## Most confused pairs" in report
    assert f"python -m scalpnet evaluate --run {run} --split test --batch-size 10" in report
    assert "python train.py --demo" in report
    for name in PLOT_FILES.values():
        assert f"]({name})" in report
    for name in ENGLISH_NAMES:
        assert name in report
    assert "DEMO MODEL" in printed and "all-negative" in printed and "90.00%" in printed
    assert "Hamming loss" in printed and "ECE" in printed


def test_evaluate_run_passes_its_arguments(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(
        evaluation,
        "evaluate",
        lambda run, config, command=None: seen.update(run=run, config=config, command=command),
    )
    evaluation.evaluate_run(tmp_path, "val", batch_size=4, progress=False, command="x")
    assert seen["config"] == evaluation.EvaluationConfig(split="val", batch_size=4, progress=False)
    assert seen["command"] == "x"


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_every_file_whole(tmp_path, capsys, monkeypatch):
    run = _write_tiny_run(tmp_path)
    monkeypatch.setenv(files.FAULT_ENV, "enospc:report.md:1")  # the last file written
    monkeypatch.setattr(files, "_fault_counts", {})
    argv = ["evaluate", "--run", str(run), "--no-progress", "--batch-size", "10"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the disk is full: saving in '{run}'") and "\n" not in err
    assert not (run / "report.md").exists() and not list(run.glob("*.tmp*"))
    assert json.loads((run / "metrics.json").read_text())["ood"] == {"auroc": 0.5}  # whole


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model_card.json" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_card.json").write_text(json.dumps({"image_size": 32}))
    assert cli.main(["evaluate", "--run", str(run)]) == 2
    assert "dataset.csv" in capsys.readouterr().err
    with pytest.raises(evaluation.DatasetError, match="unknown split"):
        evaluation.EvaluationConfig(split="holdout")


def test_report_from_arrays_labels_threshold_dependent_notes(tmp_path):
    from scalpnet.judge import report as evaluation_report

    y_val, p_val = fixed_arrays(n=80, seed=21)
    y, p = fixed_arrays(n=40, seed=22)
    sections, _, _ = evaluation.evaluate_predictions(y_val, p_val, y, p)
    sections["at_0.5"]["notes"].append("Psoriasis: nothing predicted positive")
    metrics = {
        "run": "arrays",
        "demo": False,
        "split": "test",
        "split_scheme": "shipped",
        "dataset_csv": "labels.csv",
        "n_images": {"test": 40, "val": 80},
        **sections,
        "commands": {"evaluate": "python -m scalpnet evaluate --run runs/arrays", "train": None},
        "evaluated": "now",
    }
    text = evaluation_report.render_report(metrics, {})
    assert "Demo model" not in text
    assert "copies of the same photo in train and test" in text  # shipped split warning
    assert "- Tinea Capitis: no positive image" in text  # true at any threshold: no prefix
    assert "at 0.5: Psoriasis: nothing predicted positive" in text
    assert text.rstrip().endswith("```")
    path = evaluation_report.write_report(tmp_path / "report.md", metrics, {})
    assert path.read_text(encoding="utf-8") == text


def test_runtimes_compared_on_a_split_with_one_condition_read_n_a():
    """A split holding one condition leaves ROC AUC undefined (None): its runtime notes say
    "n/a" instead of failing to format it."""
    rng = np.random.default_rng(0)
    y = np.zeros((12, NUM_CLASSES), np.uint8)
    y[:, 6] = 1
    probs = rng.uniform(0.05, 0.95, (12, NUM_CLASSES)).astype(np.float32)
    by_runtime = {"keras": probs, "onnx-int8": np.clip(probs + 0.01, 0, 1)}
    rows = evaluation.compare_runtimes(y, by_runtime, Calibration.identity(), np.full(10, 0.5))
    assert rows["keras"]["macro_roc_auc"] is None
    notes = [evaluation.runtime_note(name, row) for name, row in rows.items()]
    assert notes[0].startswith("runtime keras: top-1 ") and "macro ROC AUC n/a" in notes[0]
    assert notes[1].endswith("max |p - keras| 1.00e-02")
