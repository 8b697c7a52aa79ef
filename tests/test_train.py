"""train.py end to end: flags, user errors, the demo recipe, kill and resume, faults."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from scalpnet.files import FAULT_ENV, TEMP_PATTERN  # noqa: E402
from scalpnet.learn import checkpoints  # noqa: E402
from scalpnet.learn.model import load_model  # noqa: E402
from scalpnet.learn.resume import RESUME_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# Bounds for a hung subprocess only, never a measure: generous for a busy 2-core machine.
TIMEOUT = 900


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(FAULT_ENV, None)
    return {**env, **extra}


def run_train_py(args, cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_help_documents_every_flag():
    sys.path.insert(0, str(REPO))
    try:
        import train as train_script
    finally:
        sys.path.remove(str(REPO))
    parser = train_script.build_parser()
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {f.dest for f in flags} >= {
        "data", "demo", "out", "weights", "image_size", "epochs", "batch_size", "precision",
        "jit", "seed", "split",
    }  # fmt: skip
    assert all(f.help and len(f.help) > 10 for f in flags)
    text = parser.format_help()
    assert "same command" in text and "--out" in text


def test_user_errors_are_one_line_and_exit_code_2(tmp_path):
    done = run_train_py(["--data", str(tmp_path / "nowhere")], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no dataset at" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "batch size must be at least 1, got 0"),
        (["--head-lr", "0"], "the head learning rate must be in (0, 1), got 0.0"),
        (["--image-size", "0"], "image size must be between 16 and 4096 pixels, got 0"),
    ],
)
def test_a_zero_is_a_value_checked_before_any_data_is_made(
    train_script, tmp_path, flags, message, capsys
):
    (tmp_path / "data").mkdir()
    processed = tmp_path / "processed"
    argv = ["--data", str(tmp_path / "data"), "--processed", str(processed), "--weights", "none"]
    assert train_script.main([*argv, *flags]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not processed.exists()


# --------------------------------------------------------------------------- the demo recipe
@pytest.fixture(scope="module")
def train_script():
    sys.path.insert(0, str(REPO))
    try:
        import train
    finally:
        sys.path.remove(str(REPO))
    return train


def test_demo_data_is_written_once_per_recipe(train_script, tmp_path):
    folder = tmp_path / "synthetic"
    train_script.make_demo_data(folder, per_class=2, sides=(64, 96))
    first = {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")}
    assert len(first) == 20
    train_script.make_demo_data(folder, per_class=2, sides=(64, 96))  # same recipe: untouched
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.jpg")} == first
    train_script.make_demo_data(folder, per_class=3, sides=(64, 96))  # another: rewritten
    assert len(list(folder.rglob("*.jpg"))) == 30
    assert json.loads((folder / "recipe.json").read_text())["per_class"] == 3


def test_the_demo_recipe_goes_into_the_config_and_the_card(train_script, tmp_path):
    args = train_script.build_parser().parse_args(["--demo"])
    config = train_script.train_config(args, train_script.DEMO_SIZE, tmp_path / "run")
    assert (config.image_size, config.batch_size) == (
        train_script.DEMO_SIZE,
        train_script.DEMO_BATCH,
    )
    assert (config.head_epochs, config.finetune_epochs) == train_script.DEMO_EPOCHS
    assert config.head_lr == train_script.DEMO_LR and config.weights == "none" and config.demo
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model_card.json").write_text(json.dumps({"name": "run"}))
    train_script.record_demo_recipe(tmp_path / "run", args)
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["name"] == "run"
    recipe = card["demo_recipe"]
    assert recipe["synthetic_images_per_condition"] == train_script.DEMO_PER_CLASS
    assert recipe["drawn_longer_side_px"] == list(train_script.DEMO_SIDES)


def start_train_py(args, cwd, log: Path, **env: str) -> subprocess.Popen:
    """train.py in the background, its output in ``log`` (a pipe nobody reads could fill
    up and stall it)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=cwd,
            env=_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_when(process: subprocess.Popen, ready, log: Path) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` is true (fail if it ends or hangs first)."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"training ended before it could be killed:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"training never got there:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)


@pytest.mark.slow
def test_killed_in_either_phase_the_same_command_resumes_and_finishes(tmp_path):
    """SIGKILL during the head phase, then during fine-tuning; the same command finishes."""
    from scalpnet.data import synthetic_dataset

    synthetic_dataset.write_dataset(tmp_path / "raw", per_class=10, seed=1)
    # A local weights file stands in for ImageNet, so the run has both phases.
    keras.utils.set_random_seed(0)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    command = [
        "--data", str(tmp_path / "raw"), "--image-size", "32", "--epochs", "2", "2",
        "--batch-size", "16", "--weights", str(tmp_path / "backbone.weights.h5"),
        "--no-augment", "--verbose", "2",
    ]  # fmt: skip

    def state():
        found = list((tmp_path / "runs").glob(f"*/{RESUME_DIR}/state.json"))
        return json.loads(found[0].read_text()) if found else None

    def backup_exists(phase):
        pattern = f"*/{RESUME_DIR}/backup_{phase}/epoch-*.json"
        return any((tmp_path / "runs").glob(pattern))

    log = tmp_path / "train.log"
    kill_when(start_train_py(command, tmp_path, log), lambda: backup_exists("head"), log)
    assert state() is not None and state()["phases"] == {}
    kill_when(
        start_train_py(command, tmp_path, log),
        lambda: backup_exists("finetune") and "head" in (state() or {}).get("phases", {}),
        log,
    )
    done = run_train_py(command, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming the unfinished run" in done.stdout

    (run,) = (tmp_path / "runs").iterdir()  # all three starts used the same folder
    assert {"model.keras", "model_card.json", "history.csv", "curves.png", "logs"} <= {
        p.name for p in run.iterdir()
    }
    # train.py's export step: both ONNX models and their check on the test split.
    assert {"model.onnx", "model.int8.onnx", "onnx_check.json"} <= {p.name for p in run.iterdir()}
    check = json.loads((run / "onnx_check.json").read_text())
    assert check["fp32"]["passed"] and check["int8"] is not None
    assert "served by default:" in done.stdout
    assert not (run / RESUME_DIR).exists()
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["phase"].tolist() == ["head", "head", "finetune", "finetune"]
    card = json.loads((run / "model_card.json").read_text())
    assert [p["name"] for p in card["training"]["phases"]] == ["head", "finetune"]
    assert card["demo"] is False and card["weights"] == str(tmp_path / "backbone.weights.h5")
    assert f"run folder: {run.relative_to(tmp_path)}" in done.stdout
    load_model(run / "model.keras")


# --------------------------------------------------------------------------- faults
# pytest's per-test limit (900 s) also counts the fixtures' killed run and six concurrent
# resumes, paid by the first test that uses them: these tests get twice that on a busy
# machine (hangs are bounded by TIMEOUT per subprocess anyway).
FAULT_LIMIT = pytest.mark.timeout(1800)
# A tiny run (32 px, 60 training images, 3 epochs of 4 steps) killed while it writes the
# backup after its last epoch; each test below reads the resume of a copy damaged in its
# own way.
FAULT_EPOCHS = 3
RUN_FILES = {"model.keras", "model_card.json", "history.csv", "curves.png", "logs"}
RUN_FILES |= {"metrics.json", "report.md", "thresholds.json", "calibration.json", "ood.npz"}


def fault_args(root: Path, run: Path) -> list[str]:
    return [
        "--data", str(root / "raw"), "--processed", str(root / "processed"), "--out", str(run),
        "--image-size", "32", "--weights", "none", "--epochs", "0", str(FAULT_EPOCHS),
        "--batch-size", "16", "--no-augment", "--verbose", "2",
        "--no-export",  # the ONNX export is tested once, by the kill-and-resume test above
    ]  # fmt: skip


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """The root of a run folder ``run`` whose train.py was SIGKILLed while writing the
    backup after epoch 3: backups after epochs 1 and 2 are complete."""
    from scalpnet.data import synthetic_dataset

    root = tmp_path_factory.mktemp("killed")
    synthetic_dataset.write_dataset(root / "raw", per_class=8, seed=0)
    log = root / "killed.log"
    process = start_train_py(
        fault_args(root, root / "run"),
        root,
        log,
        **{FAULT_ENV: f"pause:epoch-{FAULT_EPOCHS:04d}:1"},
    )
    kill_when(process, lambda: "fault: paused" in log.read_text(), log)
    return root


def backups(run: Path) -> Path:
    return run / RESUME_DIR / "backup_scratch"


# Each fault: what it does to a copy of the killed run, and its resume's environment.
def damage_newest_backup(how: str):
    def damage(run: Path) -> None:
        newest = backups(run) / "epoch-0002.weights.h5"
        data = newest.read_bytes()
        newest.unlink()  # a new file: the fixture's is shared by a hard link
        newest.write_bytes(data[: len(data) // 3] if how == "truncated" else b"")

    return damage


def remove_state_json(run: Path) -> None:
    (run / RESUME_DIR / "state.json").unlink()


def swap_in_a_backup_of_another_size(run: Path) -> None:
    """The backup after epoch 2 is replaced by one a 48-px run of the same model wrote
    (ResNet50's weights have the same shapes at any size: only the record tells)."""
    from scalpnet.learn.model import build_model

    for path in backups(run).glob("epoch-0002.*"):
        path.unlink()
    other = build_model(48, weights=None)
    other.compile(optimizer="adam", loss="binary_crossentropy")
    other.optimizer.build(other.trainable_variables)
    series = checkpoints.CheckpointSet(backups(run), "epoch")
    series.save(other, 2, {**checkpoints.identity(other, "a-48-px-run", 48), "phase": "scratch"})


FAULTS = {
    "killed": (None, {}),
    "truncated": (damage_newest_backup("truncated"), {}),
    "empty": (damage_newest_backup("empty"), {}),
    "no_state": (remove_state_json, {}),
    "other_size": (swap_in_a_backup_of_another_size, {}),
    "disk_full": (None, {FAULT_ENV: "enospc:epoch-0003:1"}),
}


class Resumed(NamedTuple):
    run: Path
    names_before: list[str]  # the backup folder's files before the resume
    done: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def resumed(killed_run, tmp_path_factory) -> dict[str, Resumed]:
    """Each fault of :data:`FAULTS` on its own copy of the killed run (hard links: nothing
    here changes a file in place), then all of them resumed with the same command at once:
    most of a resume is single-threaded tracing and start-up, so six side by side take
    about twice one, not six times (the tests only read files and output)."""
    root = tmp_path_factory.mktemp("resumed")
    started = {}
    for name, (damage, env) in FAULTS.items():
        run = root / name / "run"
        shutil.copytree(killed_run / "run", run, copy_function=os.link)
        if damage is not None:
            damage(run)
        names = sorted(p.name for p in backups(run).iterdir())
        out, err = root / name / "stdout.txt", root / name / "stderr.txt"
        with out.open("w") as stdout, err.open("w") as stderr:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "train.py"), *fault_args(killed_run, run)],
                cwd=killed_run, env=_env(**env), stdout=stdout, stderr=stderr, text=True,
            )  # fmt: skip
        started[name] = (run, names, process, out, err)
    results = {}
    try:
        for name, (run, names, process, out, err) in started.items():
            code = process.wait(timeout=TIMEOUT)
            done = subprocess.CompletedProcess(process.args, code, out.read_text(), err.read_text())
            results[name] = Resumed(run, names, done)
    finally:
        for _, _, process, _, _ in started.values():
            if process.poll() is None:
                process.kill()
    return results


def assert_finished(run: Path, done: subprocess.CompletedProcess) -> None:
    """A complete run folder, each epoch once in history.csv, the best epoch the best row."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "resuming the unfinished run" in done.stdout
    assert {p.name for p in run.iterdir()} >= RUN_FILES
    assert not (run / RESUME_DIR).exists()
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == list(range(1, FAULT_EPOCHS + 1))
    card = json.loads((run / "model_card.json").read_text())
    assert card["best_epoch"] == int(history.loc[history["val_auc"].idxmax(), "epoch"])
    load_model(run / "model.keras")


@pytest.mark.slow
@FAULT_LIMIT
def test_killed_while_writing_a_backup_resumes_from_the_last_complete_one(resumed):
    run, names, done = resumed["killed"]
    assert any(TEMP_PATTERN.fullmatch(n) for n in names), names  # the cut-short write
    assert "epoch-0003.weights.h5" not in names and "epoch-0002.json" in names
    assert "continuing phase scratch after epoch 2 (from its backup)" in done.stdout
    assert_finished(run, done)


@pytest.mark.slow
@FAULT_LIMIT
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_backup_falls_back_to_the_previous_one(resumed, damage):
    run, _, done = resumed[damage]
    # One line about the damaged checkpoint (the progress lines say "epoch 2/3" too).
    lines = [line for line in done.stdout.splitlines() if "checkpoint after epoch 2" in line]
    assert len(lines) == 1 and damage in lines[0] and "unusable" in lines[0], done.stdout
    # Epoch 2 runs again, and epoch 3, whose backup the kill cut short.
    assert "falling back to the backup after epoch 1: 2 epoch(s) to run again" in done.stdout
    assert_finished(run, done)


@pytest.mark.slow
@FAULT_LIMIT
def test_a_missing_state_json_is_rebuilt_from_the_checkpoints(resumed):
    run, _, done = resumed["no_state"]
    assert "rebuilt from the checkpoints' records" in done.stdout
    assert "continuing phase scratch after epoch 2 (from its backup)" in done.stdout
    assert_finished(run, done)


@pytest.mark.slow
@FAULT_LIMIT
def test_a_backup_of_another_image_size_is_refused(resumed):
    run, _, done = resumed["other_size"]
    assert "belongs to another image size (image_size 48, not 32)" in done.stdout
    # Epoch 2 runs again, and epoch 3, whose backup the kill cut short.
    assert "falling back to the backup after epoch 1: 2 epoch(s) to run again" in done.stdout
    assert_finished(run, done)


@pytest.mark.slow
@FAULT_LIMIT
def test_a_full_disk_is_one_clear_message_and_the_last_checkpoint_stays_usable(resumed):
    run, _, done = resumed["disk_full"]
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert f"the disk is full: saving in '{backups(run)}' needs about 2" in line  # ~283 MB
    assert " MB (" in line and "the checkpoint after epoch 2" in line
    assert "run the same command again" in line
    assert sorted(p.name for p in backups(run).iterdir()) == [
        "epoch-0001.json", "epoch-0001.weights.h5", "epoch-0002.json", "epoch-0002.weights.h5",
    ]  # fmt: skip
    newest = backups(run) / "epoch-0002.weights.h5"
    record = json.loads(checkpoints.record_path(newest).read_text())
    assert checkpoints.problem(newest, record) is None
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]  # each epoch once (0-based while training)


def test_auto_precision_is_bfloat16_only_for_the_demo_on_a_cpu_with_bfloat16(
    train_script, monkeypatch
):
    from scalpnet.learn import config as config_module

    assert train_script.resolve_precision("none", demo=True) is None
    assert train_script.resolve_precision("mixed_float16", demo=False) == "mixed_float16"
    monkeypatch.setattr(config_module, "cpu_has_bfloat16", lambda: True)
    assert train_script.resolve_precision("auto", demo=False) is None
    import tensorflow as tf

    expected = None if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    assert train_script.resolve_precision("auto", demo=True) == expected
    monkeypatch.setattr(config_module, "cpu_has_bfloat16", lambda: False)
    assert train_script.resolve_precision("auto", demo=True) is None
