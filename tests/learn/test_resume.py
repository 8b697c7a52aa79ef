"""Resume state: history.csv bookkeeping and falling back from damaged backups."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from tiny_keras import rewrite, tiny_model  # noqa: E402

from scalpnet.errors import RunFolderError  # noqa: E402
from scalpnet.learn import checkpoints, resume  # noqa: E402
from scalpnet.learn.config import Phase, TrainConfig  # noqa: E402

SCRATCH = Phase("scratch", 10, 1e-3, True, True)


# --------------------------------------------------------------------------- history
def test_history_reading_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    (tmp_path / "history.csv").write_text(
        "epoch,loss,val_auc\n0,0.9,0.5\n1,0.8,0.6\n1,0.7,0.7\n2,0.6,0.65\n3,0.5"
    )
    history = resume.read_history(tmp_path)
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history.loc[1, "val_auc"] == 0.7
    config = TrainConfig(patience=2)
    # From epoch 0: best 0.7 at index 1, then 0.65 and a row without val_auc.
    assert resume.phase_progress(history.iloc[:3], 0, config) == (3, 0.7, 1, 1)
    assert not resume.phase_finished(history.iloc[:3], SCRATCH, 0, config)
    assert resume.phase_finished(history.iloc[:3], replace(SCRATCH, epochs=3), 0, config)
    longer = pd.concat([history.iloc[:3], pd.DataFrame({"epoch": [3], "val_auc": [0.6]})])
    assert resume.phase_finished(longer, SCRATCH, 0, config)  # patience 2 used up


def test_a_finished_history_is_read_back_zero_based(tmp_path):
    """A kill after history.csv was rewritten (1-based, with phases) must not shift it again."""
    (tmp_path / "history.csv").write_text("epoch,phase,loss\n1,head,0.9\n2,finetune,0.8\n")
    history = resume.read_history(tmp_path)
    assert history["epoch"].tolist() == [0, 1] and "phase" not in history


def test_history_logger_writes_each_epoch_once_in_order(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss\n0,0.9\n1,0.8\n2,0.7\n")
    # Resumed at epoch 1: the old rows 1 and 2 are replaced by the new ones.
    logger = resume.HistoryLogger(tmp_path, resume.read_history(tmp_path).iloc[:1])
    logger.on_epoch_end(1, {"loss": 0.5, "auc": 0.6})
    logger.on_epoch_end(2, {"loss": 0.4, "auc": 0.7})
    written = pd.read_csv(tmp_path / "history.csv")
    assert written["epoch"].tolist() == [0, 1, 2]
    assert written["loss"].tolist() == [0.9, 0.5, 0.4]
    assert list(written.columns) == ["epoch", "loss", "auc"]
    assert not [p for p in tmp_path.iterdir() if p.name != "history.csv"]  # no temp left


# --------------------------------------------------------------------------- resuming
@pytest.fixture
def run(tmp_path):
    """A run folder with backups after epochs 2 and 3 (kernel = 2.0, 3.0), bests after 1 and
    3, and history rows for epochs 0-3 (0-based) of the phase starting at epoch 0."""
    state = resume.RunState(tmp_path)
    model = tiny_model()
    expected = checkpoints.identity(model, "abc", 32)
    meta = {**expected, "phase": "scratch"}
    for epoch in (1, 3):
        model.layers[1].kernel.assign(np.full((3, 5), 10.0 + epoch, dtype="float32"))
        state.bests.save(model, epoch, {**meta, "monitor": "val_auc", "value": 0.5 + epoch / 10})
    for epoch in (2, 3):
        model.layers[1].kernel.assign(np.full((3, 5), float(epoch), dtype="float32"))
        state.backups(SCRATCH).save(model, epoch, meta)
    pd.DataFrame({"epoch": [0, 1, 2, 3], "val_auc": [0.6, 0.55, 0.8, 0.7]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    model.layers[1].kernel.assign(np.zeros((3, 5), dtype="float32"))  # the phase's start
    return state, model, expected


def test_resume_continues_from_the_newest_backup(run):
    state, model, expected = run
    lines = []
    at, best = resume.resume_phase(
        model, state, SCRATCH, 0, expected, TrainConfig(), None, lines.append
    )
    assert at == 3 and best == pytest.approx(0.8)
    assert np.all(model.layers[1].kernel.numpy() == 3.0)
    assert lines == ["continuing phase scratch after epoch 3 (from its backup)"]
    # The row of the epoch that was running when the run was killed goes: it runs again.
    assert resume.read_history(state.run_dir)["epoch"].tolist() == [0, 1, 2]


def test_a_truncated_backup_falls_back_to_the_previous_one_and_says_what_it_costs(run):
    state, model, expected = run
    newest = state.backups(SCRATCH).path(3)
    rewrite(newest, newest.read_bytes()[:1000])
    lines = []
    at, best = resume.resume_phase(
        model, state, SCRATCH, 0, expected, TrainConfig(), None, lines.append
    )
    assert at == 2 and np.all(model.layers[1].kernel.numpy() == 2.0)
    assert "epoch 3" in lines[0] and "truncated" in lines[0]
    assert lines[1] == "falling back to the backup after epoch 2: 2 epoch(s) to run again"
    # Epochs 2 and 3 (0-based) will run again: their rows go, and the best of epoch 3.
    assert resume.read_history(state.run_dir)["epoch"].tolist() == [0, 1]
    assert state.bests.numbers() == [1] and best == pytest.approx(0.6)
    assert state.backups(SCRATCH).numbers() == [2]


def test_no_usable_backup_falls_back_to_the_start_of_the_phase(run):
    state, model, expected = run
    for epoch in (2, 3):
        rewrite(state.backups(SCRATCH).path(epoch), b"")
    restart_optimizer = int(model.optimizer.iterations.numpy())
    lines = []
    at, best = resume.resume_phase(
        model, state, SCRATCH, 0, expected, TrainConfig(), None, lines.append
    )
    assert at == 0 and best is None
    assert np.all(model.layers[1].kernel.numpy() == 0.0)  # the start weights, untouched
    assert int(model.optimizer.iterations.numpy()) == restart_optimizer
    assert lines[-1] == "falling back to the start of phase scratch: 4 epoch(s) to run again"
    assert resume.read_history(state.run_dir).empty and state.bests.numbers() == []


def test_a_lost_state_is_rebuilt_from_the_checkpoints_records(run):
    state, model, expected = run
    after = state.phase_weights(Phase("head", 2, 1e-3, False, False))
    checkpoints.save(
        model,
        after,
        {**expected, "phase": "head", "phase_start": 0, "phase_end": 2, "epochs_done": 2},
        "",
    )
    lines = []
    state.rebuild("abc", {"fingerprint": "abc", "phases": {}}, lines.append)
    assert json.loads(state.path.read_text())["phases"] == {"head": {"start": 0, "end": 2}}
    assert "rebuilt" in lines[0] and "1 finished phase" in lines[0]
    with pytest.raises(RunFolderError, match="another training"):
        state.rebuild("other", {"fingerprint": "other", "phases": {}}, lines.append)


def test_a_lost_state_without_checkpoints_starts_over(tmp_path):
    state = resume.RunState(tmp_path)
    state.dir.mkdir()
    (tmp_path / "history.csv").write_text("epoch,loss\n0,0.9\n1,0.8\n")
    lines = []
    state.rebuild("abc", {"fingerprint": "abc", "phases": {}}, lines.append)
    assert "starting the run over (2 epoch(s) to run again)" in lines[0]
    assert resume.read_history(tmp_path).empty and state.exists()


def test_best_checkpoint_saves_only_improvements(tmp_path):
    model = tiny_model()
    bests = checkpoints.CheckpointSet(tmp_path, "best")
    callback = resume.BestCheckpoint(bests, checkpoints.identity(model, "abc", 32), "val_loss", 0.5)
    callback.set_model(model)
    for epoch, value in enumerate([0.6, 0.4, float("nan"), 0.45, 0.3]):
        callback.on_epoch_end(epoch, {"val_loss": value})
    assert bests.numbers() == [5, 2]  # epochs 2 and 5 (counted from 1) improved
    assert json.loads(checkpoints.record_path(bests.path(5)).read_text())["value"] == 0.3
