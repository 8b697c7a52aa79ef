"""TensorFlow's oneDNN kernels are asked for, unless the user chose, before TF starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalpnet.cpu_kernels import ONEDNN_ENV, use_onednn

REPO = Path(__file__).resolve().parents[1]
# Which kernels the TensorFlow that starts after use_onednn() runs (a private but stable
# switch: it reads TF_ENABLE_ONEDNN_OPTS, or the CPU's features when that is unset).
REPORT_KERNELS = """\
from scalpnet.cpu_kernels import use_onednn
use_onednn()
from tensorflow.python.util import _pywrap_util_port
print(_pywrap_util_port.IsMklEnabled())
"""


def test_asks_for_onednn_before_tensorflow_starts(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    environ: dict[str, str] = {}
    assert use_onednn(environ) is True and environ == {ONEDNN_ENV: "1"}


def test_a_users_choice_or_a_started_tensorflow_is_left_alone(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    environ = {ONEDNN_ENV: "0"}
    assert use_onednn(environ) is False and environ == {ONEDNN_ENV: "0"}

    monkeypatch.setitem(sys.modules, "tensorflow", object())
    environ = {}
    assert use_onednn(environ) is False and environ == {}


@pytest.mark.parametrize(("chosen", "expected"), [(None, "True"), ("0", "False")])
def test_tensorflow_runs_the_kernels_asked_for(chosen, expected):
    # On an AVX2-only CPU TensorFlow's own default is Eigen's kernels ("False" unasked).
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_ENV}
    if chosen is not None:
        env[ONEDNN_ENV] = chosen
    env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", REPORT_KERNELS],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
