"""Quiet tools: no TensorFlow start-up notices unless --verbose or TF_CPP_MIN_LOG_LEVEL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from inference_helpers import jpeg_bytes, make_run, photo

from scalpnet.quiet import NOISE, drop_noise, filtered_stderr, quiet_tensorflow

REPO = Path(__file__).resolve().parents[1]
# What TensorFlow 2.21 printed on this 2-core CPU machine at start-up (one line of each).
TF_221_STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795967415.839964   12635 port.cc:153] oneDNN custom operations are on. You may see \
slightly different numerical results due to floating-point round-off errors.
I0000 00:00:1795967415.840334   12635 cudart_stub.cc:31] Could not find cuda drivers on your \
machine, GPU will not be used.
I0000 00:00:1795967415.953311   12635 cpu_feature_guard.cc:227] This TensorFlow binary is \
optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow \
with the appropriate compiler flags.
E0000 00:00:1795967425.700202   12635 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA \
error: Failed call to cuInit: UNKNOWN ERROR (303)
"""


def run(args: list[str], **env_changes: str | None) -> subprocess.CompletedProcess:
    """``args`` in a fresh Python process; ``None`` removes a variable from its environment."""
    env = {**os.environ, **{k: v for k, v in env_changes.items() if v is not None}}
    for name in [k for k, v in env_changes.items() if v is None]:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


def noise_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.search(line)]


def test_every_startup_line_is_noise_and_other_lines_stay():
    assert drop_noise(TF_221_STARTUP) == ""
    kept = "UserWarning: the photo is small\nerror: no run folder at 'x'\n"
    assert drop_noise(TF_221_STARTUP + kept) == kept


def test_filtered_stderr_drops_noise_written_to_the_file_descriptor(capfd):
    with filtered_stderr():
        os.write(2, TF_221_STARTUP.encode())
        os.write(2, b"W0000 something the user needs to see\n")
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "something the user needs to see" in err and "a Python warning" in err
    assert noise_lines(err) == []


def test_quiet_only_when_nobody_asked_for_the_messages():
    env: dict[str, str] = {}
    assert quiet_tensorflow(verbose=True, environ=env) is False and env == {}
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert quiet_tensorflow(environ=env) is False
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0"}  # the user's choice is kept


def test_help_prints_nothing_on_stderr():
    proc = run(["train.py", "--help"], TF_CPP_MIN_LOG_LEVEL=None)
    assert proc.returncode == 0 and "--verbose" in proc.stdout
    assert proc.stderr == ""


@pytest.fixture(scope="module")
def predict_args(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("quiet")
    run_dir = make_run(folder / "run")
    image = folder / "scalp.jpg"
    image.write_bytes(jpeg_bytes(photo()))
    return ["-m", "scalpnet", "predict", str(image), "--run", str(run_dir)]


@pytest.mark.slow
def test_predict_loads_tensorflow_without_startup_noise(predict_args):
    quiet = run(predict_args, TF_CPP_MIN_LOG_LEVEL=None)
    assert quiet.returncode == 0, quiet.stderr
    assert "top:" in quiet.stdout  # the model ran: TensorFlow was imported
    assert noise_lines(quiet.stderr) == []
    # The control: the same command with --verbose shows what was hidden.
    verbose = run(["-m", "scalpnet", "--verbose", *predict_args[2:]], TF_CPP_MIN_LOG_LEVEL=None)
    assert verbose.returncode == 0, verbose.stderr
    assert noise_lines(verbose.stderr), "TensorFlow printed no start-up notice here"


@pytest.mark.slow
def test_an_explicit_log_level_is_respected():
    code = "from scalpnet.quiet import quiet_tensorflow; quiet_tensorflow(); import tensorflow"
    assert noise_lines(run(["-c", code], TF_CPP_MIN_LOG_LEVEL="0").stderr)
    assert noise_lines(run(["-c", code], TF_CPP_MIN_LOG_LEVEL=None).stderr) == []
