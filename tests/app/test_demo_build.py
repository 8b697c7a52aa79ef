"""DemoBuild: the app's child train.py --demo, its progress, its end (with a fake train.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from scalpnet import files
from scalpnet.app import demo_build
from scalpnet.app.demo_build import DemoBuild, may_build, on_community_cloud, step_of
from scalpnet.errors import DiskFullError

# Stands in for train.py: reports two steps through scalpnet.progress, then ends.
FAKE_TRAIN = """
import sys, time
sys.path.insert(0, {repo!r})
from scalpnet.progress import Progress
print("args", sys.argv[1:], flush=True)
with Progress("prepare", total=4, show=False) as bar:
    bar.update()
    time.sleep(0.3)  # past the status file's throttle
    bar.update()
    time.sleep({pause})
    bar.update(2)
print("the end of the output", flush=True)
sys.exit({code})
"""
REPO = Path(__file__).resolve().parents[2]


def fake_app(tmp_path: Path, code: int = 0, pause: float = 0.0) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "train.py").write_text(FAKE_TRAIN.format(repo=str(REPO), code=code, pause=pause))
    return app


def wait_end(build: DemoBuild, timeout_s: float = 60) -> demo_build.BuildState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = build.state()
        if state.phase != "running":
            return state
        time.sleep(0.1)
    pytest.fail("the child did not end")


def wait_recorded(build: DemoBuild, timeout_s: float = 60) -> dict:
    """The build's info once the reaping thread has written the child's exit code."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = build._info()
        if info.get("returncode") is not None:
            return info
        time.sleep(0.05)
    pytest.fail("the exit code was never recorded")


def test_community_cloud_and_the_setting():
    local = Path("/home/me/scalpnet")
    assert not on_community_cloud({"HOME": "/home/me"}, local)
    assert on_community_cloud({}, Path("/mount/src/scalpnet"))
    assert on_community_cloud({"HOME": "/home/appuser"}, local)
    assert may_build({}, local)
    assert not may_build({}, Path("/mount/src/scalpnet"))
    assert may_build({"SCALPNET_BUILD_DEMO": "1"}, Path("/mount/src/scalpnet"))
    assert not may_build({"SCALPNET_BUILD_DEMO": "no"}, local)


def test_demo_command(tmp_path):
    app = tmp_path / "app"
    command = demo_build.demo_command(app, app / "runs", {})
    assert command[0] == sys.executable and command[1:3] == [str(app / "train.py"), "--demo"]
    assert "--out" not in command and "--seed" not in command
    elsewhere = demo_build.demo_command(app, tmp_path / "other", {"SCALPNET_DEMO_SEED": "2"})
    assert elsewhere[elsewhere.index("--seed") + 1] == "2"
    assert Path(elsewhere[elsewhere.index("--out") + 1]).parent == tmp_path / "other"


def test_step_names_in_words():
    assert step_of("scratch: epoch 2/3") == (3, "training: epoch 2/3")
    assert step_of("evaluate: predict test")[0] == 4
    assert step_of("export") == (6, "exporting the ONNX models the app serves")
    assert step_of("something else") == (0, "something else")


def test_a_build_reports_progress_then_done(tmp_path):
    app = fake_app(tmp_path, pause=1.5)
    build = DemoBuild(app, app / "runs")
    build.start()
    build.start()  # a second click while it runs starts nothing
    deadline = time.monotonic() + 60
    while (state := build.state()).phase == "running" and state.fraction < 0.5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if state.phase == "running":
        assert (state.step_index, state.step) == (2, "preparing them")
        assert state.fraction == 0.5
    assert wait_end(build).phase == "done"
    assert "args ['--demo', '--verbose', '2']" in build.log_tail()
    # An app started later finds the same finished build.
    assert DemoBuild(app, app / "runs").state().phase == "done"


def test_a_failed_build_shows_the_end_of_its_output_and_can_start_again(tmp_path):
    app = fake_app(tmp_path, code=3)
    build = DemoBuild(app, app / "runs")
    build.start()
    state = wait_end(build)
    assert state.phase == "failed" and "the end of the output" in state.log_tail
    (app / "train.py").write_text(FAKE_TRAIN.format(repo=str(REPO), code=0, pause=0))
    build.start()
    assert wait_end(build).phase == "done"


def test_a_full_disk_at_the_start_is_one_line_and_leaves_no_child_running(tmp_path, monkeypatch):
    app = fake_app(tmp_path, pause=60)
    build = DemoBuild(app, app / "runs")
    started, popen = [], demo_build.subprocess.Popen

    def recorded(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(demo_build.subprocess, "Popen", recorded)
    monkeypatch.setenv(files.FAULT_ENV, "enospc:build.json:1")
    monkeypatch.setattr(files, "_fault_counts", {})
    with pytest.raises(DiskFullError, match=r"no build was started\. Free some space and start"):
        build.start()
    assert len(started) == 1 and started[0].poll() is not None  # ended, and reaped
    assert build._running_pid() is None and not build.info_file.exists()
    monkeypatch.delenv(files.FAULT_ENV)
    (app / "train.py").write_text(FAKE_TRAIN.format(repo=str(REPO), code=0, pause=0))
    build.start()  # with room again, it starts
    assert wait_end(build).phase == "done"


def test_a_build_whose_app_went_away_is_not_running(tmp_path, monkeypatch):
    app = fake_app(tmp_path)
    build = DemoBuild(app, app / "runs")
    build.start()
    wait_end(build)
    info = wait_recorded(build)  # else the reaping thread could write its code after ours
    info["returncode"] = None  # the app that started it ended before it did
    build.info_file.write_text(__import__("json").dumps(info))
    monkeypatch.setattr(demo_build, "_CHILDREN", {})  # a new app process knows no child
    assert DemoBuild(app, app / "runs").state().phase == "failed"


def test_a_child_just_reaped_but_not_yet_recorded_is_done(tmp_path, monkeypatch):
    """The race CI met: the reaping thread has the exit code but has not written it."""
    reaped, recorded = __import__("threading").Event(), __import__("threading").Event()

    def slow_wait(self, child, info):
        code = child.wait()
        reaped.set()
        recorded.wait(60)  # held until the test has looked
        self._write_info({**info, "returncode": code})

    monkeypatch.setattr(DemoBuild, "_wait", slow_wait)
    app = fake_app(tmp_path)
    DemoBuild(app, app / "runs").start()
    assert reaped.wait(60)
    fresh = DemoBuild(app, app / "runs")  # as a Streamlit rerun makes
    try:
        assert fresh._info()["returncode"] is None
        assert fresh.state().phase == "done"
    finally:
        recorded.set()


def test_a_build_in_its_export_step_is_servable(tmp_path):
    import json
    import os

    build = DemoBuild(tmp_path / "app", tmp_path / "runs")
    build.folder.mkdir(parents=True)
    # A live process (this one) stands for the child.
    build.info_file.write_text(json.dumps({"pid": os.getpid(), "started": 0}))
    build.progress_file.write_text(json.dumps({"step": "OOD fit: features", "done": 1, "total": 2}))
    assert build.state().phase == "running"
    build.progress_file.write_text(json.dumps({"step": "export", "done": 3, "total": 30}))
    state = build.state()
    assert (state.phase, state.step_index) == ("exporting", len(demo_build.STEPS))
