"""The app builds the demo model itself when there is none: ``train.py --demo`` in a child.

The child runs in its own process (TensorFlow trains there, the app stays responsive) and
reports through ``SCALPNET_PROGRESS_FILE`` (:mod:`scalpnet.progress`); its output goes to
a log file. Everything lives in ``<runs>/.demo-build/``, so an app restarted while a build
runs finds it again instead of starting a second one. Never on Streamlit Community Cloud:
a shared cloud box is no place for minutes of training (the page says how to point the
app at a model instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scalpnet.files import disk_full_as_error, process_alive, write_json_atomic
from scalpnet.progress import PROGRESS_FILE_ENV, read_status

BUILD_DIR = ".demo-build"
# Set to 1/0 to allow or forbid the app building the demo (default: allowed unless the
# app looks like it runs on Community Cloud).
BUILD_SETTING = "SCALPNET_BUILD_DEMO"
SEED_SETTING = "SCALPNET_DEMO_SEED"
# The steps of train.py --demo in order, as scalpnet.progress names them (a prefix).
STEPS = (
    ("synthetic images", "generating synthetic images"),
    ("prepare", "preparing them"),
    ("scratch", "training"),
    ("evaluate", "evaluating on the test split"),
    ("OOD fit", "fitting the out-of-distribution check"),
    ("export", "exporting the ONNX models the app serves"),
)
# The children this process started, by build folder. Streamlit makes a new DemoBuild on
# every rerun; asking the Popen (not only the pid) keeps a child that has just ended, but
# whose exit code the reaping thread has not written yet, from reading as "failed".
_CHILDREN: dict[Path, subprocess.Popen] = {}


def on_community_cloud(environ: Mapping[str, str], app_dir: Path) -> bool:
    """Whether the app seems to run on Streamlit Community Cloud.

    Heuristic (Community Cloud documents no marker): it clones the repository under
    ``/mount/src/`` and runs the app as the user ``appuser``.
    """
    return str(app_dir).startswith("/mount/src/") or environ.get("HOME") == "/home/appuser"


def may_build(environ: Mapping[str, str], app_dir: Path) -> bool:
    """``SCALPNET_BUILD_DEMO`` if set (1/true/yes or 0/false/no), else not on the cloud."""
    value = environ.get(BUILD_SETTING, "").strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return not on_community_cloud(environ, app_dir)


def demo_command(app_dir: Path, runs_dir: Path, environ: Mapping[str, str]) -> list[str]:
    """``python train.py --demo`` (with ``--out`` when runs are kept elsewhere, and
    ``--seed`` from ``SCALPNET_DEMO_SEED``, for measuring the recipe's spread)."""
    command = [sys.executable, str(app_dir / "train.py"), "--demo", "--verbose", "2"]
    if environ.get(SEED_SETTING, "").strip():
        command += ["--seed", environ[SEED_SETTING].strip()]
    if runs_dir.resolve() != (app_dir / "runs").resolve():
        command += ["--out", str(runs_dir / time.strftime("demo-%Y%m%d-%H%M%S"))]
    return command


@dataclass(frozen=True)
class BuildState:
    """What the page shows: ``phase`` is "running", "exporting", "done" or "failed".

    "exporting": the last step; the model is trained, evaluated and has its OOD check, so
    the app serves it (through Keras) while its ONNX models are written.
    """

    phase: str
    step: str = ""  # the current step, in words
    step_index: int = 0  # 1-based position in STEPS (0: not known yet)
    fraction: float = 0.0  # of the current step
    left_s: float | None = None  # time left in the current step
    elapsed_s: float = 0.0  # since the build started
    log_tail: str = ""  # the child's last output lines (for a failure)


def step_of(name: str) -> tuple[int, str]:
    """(1-based index, words) of a progress step name; (0, name) when unknown."""
    for index, (prefix, words) in enumerate(STEPS, start=1):
        if name.startswith(prefix):
            return index, words + name[len(prefix) :]
    return 0, name


class DemoBuild:
    """One build of the demo model, in ``<runs_dir>/.demo-build``."""

    def __init__(self, app_dir: Path, runs_dir: Path):
        self.app_dir, self.runs_dir = Path(app_dir), Path(runs_dir)
        self.folder = self.runs_dir / BUILD_DIR
        self.progress_file = self.folder / "progress.json"
        self.log_file = self.folder / "log.txt"
        self.info_file = self.folder / "build.json"

    def start(self) -> None:
        """Start the child unless one is already running (this or an earlier app).

        Raises:
            DiskFullError: no room for the build's record (then no child is left running).
        """
        if self._running_pid() is not None:
            return
        with disk_full_as_error(self.folder, None, "no build was started", "start it again"):
            child, info = self._spawn()
        _CHILDREN[self.folder] = child
        # Reaps the child and records how it ended, whichever page or session asks later.
        threading.Thread(target=self._wait, args=(child, info), daemon=True).start()

    def _spawn(self) -> tuple[subprocess.Popen, dict]:
        """(the child, running, its record as written), or neither: a record that cannot
        be written ends the child, which nothing could follow."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.progress_file.unlink(missing_ok=True)
        env = {**os.environ, PROGRESS_FILE_ENV: str(self.progress_file)}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with open(self.log_file, "wb") as log:
            child = subprocess.Popen(
                demo_command(self.app_dir, self.runs_dir, os.environ),
                cwd=self.app_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the app does not kill it half-way
            )
        info = {"pid": child.pid, "started": time.time(), "returncode": None}
        try:
            self._write_info(info)
        except BaseException:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise
        return child, info

    def _wait(self, child: subprocess.Popen, info: dict) -> None:
        code = child.wait()
        with contextlib.suppress(OSError):  # a full disk: this app still knows (_CHILDREN)
            self._write_info({**info, "returncode": code})

    def _write_info(self, info: dict) -> None:
        write_json_atomic(self.info_file, info)

    def state(self) -> BuildState:
        """Where the build is (call :meth:`start` first)."""
        info = self._info()
        elapsed = time.time() - info.get("started", time.time())
        code = self._returncode(info)
        if code is not None:
            phase = "done" if code == 0 else "failed"
            return BuildState(phase, elapsed_s=elapsed, log_tail=self.log_tail())
        status = read_status(self.progress_file) or {}
        index, words = step_of(str(status.get("step", "")))
        total = status.get("total") or 0
        return BuildState(
            "exporting" if index == len(STEPS) else "running",
            step=words,
            step_index=index,
            fraction=min(1.0, status.get("done", 0) / total) if total else 0.0,
            left_s=status.get("left_s"),
            elapsed_s=elapsed,
        )

    def stop(self) -> None:
        """End the child (its process group); train.py resumes it when started again."""
        pid = self._running_pid()
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    # ------------------------------------------------------------------ the child
    def _info(self) -> dict:
        try:
            return json.loads(self.info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _returncode(self, info: dict) -> int | None:
        """The child's exit code once it has ended; None while it runs (or never ran)."""
        if info.get("returncode") is not None:
            return int(info["returncode"])
        child = _CHILDREN.get(self.folder)
        if child is not None and child.pid == info.get("pid"):
            return child.poll()  # None also while the reaping thread holds it
        if info.get("pid") and not process_alive(int(info["pid"])):
            return -1  # started by an earlier app that is gone: its end is unknown
        return None

    def _running_pid(self) -> int | None:
        info = self._info()
        if info.get("pid") and self._returncode(info) is None:
            return int(info["pid"])
        return None
