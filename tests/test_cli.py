"""`python -m scalpnet`: verbs listed, user mistakes are one stderr line and exit code 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from scalpnet import cli

REPO = Path(__file__).resolve().parents[1]


def scalpnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m scalpnet ARGS`` in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "scalpnet", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=300,
    )


def verbs() -> list[str]:
    _, handlers = cli.build_parser()
    return list(handlers)


def test_help_lists_every_verb():
    result = scalpnet("--help")
    assert result.returncode == 0, result.stderr
    assert "prepare" in verbs() and "synth" in verbs()
    for verb in verbs():
        assert f"    {verb} " in result.stdout


def test_version():
    result = scalpnet("--version")
    assert result.returncode == 0 and result.stdout.startswith("scalpnet ")


@pytest.mark.parametrize("verb", verbs())
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([verb, "--help"])
    assert info.value.code == 0
    assert verb in capsys.readouterr().out


def test_no_verb_is_a_usage_error():
    result = scalpnet()
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["prepare", "--data", "{tmp}/missing", "--out", "{tmp}/out"], id="prepare"),
        pytest.param(
            ["prepare", "--data", "{tmp}/data.csv", "--out", "{tmp}/a_file"], id="prepare-out"
        ),
        pytest.param(["synth", "--out", "{tmp}/a_file", "--per-class", "1"], id="synth-out"),
        pytest.param(["evaluate", "--run", "{tmp}/missing"], id="evaluate"),
        pytest.param(["audit", "--data", "{tmp}/missing", "--out", "{tmp}/o"], id="audit"),
        pytest.param(["predict", "{tmp}/missing.jpg", "--run", "{tmp}/missing"], id="predict"),
        pytest.param(["export", "--run", "{tmp}/missing"], id="export"),
    ],
)
def test_a_bad_path_is_one_line_on_stderr_and_exit_code_2(tmp_path, args):
    (tmp_path / "a_file").write_text("I am a file, not a folder\n")
    Image.new("RGB", (40, 40), (200, 120, 100)).save(tmp_path / "x.jpg")
    (tmp_path / "data.csv").write_text("path,psoriasis\nx.jpg,1\n")  # a valid dataset
    verb = args[0]
    if verb not in verbs():
        pytest.skip(f"no {verb} verb yet")
    result = scalpnet(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert str(tmp_path) in lines[0]  # it names what was wrong


@pytest.mark.parametrize(
    "args",
    [
        ["prepare", "--data", ".", "--image-size", "4"],
        ["prepare", "--data", ".", "--workers", "0"],
        ["synth", "--per-class", "0"],
    ],
)
def test_out_of_range_settings_are_one_line_and_exit_code_2(tmp_path, args):
    result = scalpnet(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")


def test_synth_then_prepare_end_to_end(tmp_path):
    synth = scalpnet("synth", "--out", str(tmp_path / "syn"), "--per-class", "2", "--seed", "1")
    assert synth.returncode == 0, synth.stderr
    assert "wrote 20 synthetic images" in synth.stdout
    assert len(list((tmp_path / "syn").rglob("*.jpg"))) == 20

    out = tmp_path / "processed"
    args = ["--data", str(tmp_path / "syn"), "--out", str(out), "--image-size", "32"]
    prepared = scalpnet("prepare", *args, "--quiet")
    assert prepared.returncode == 0, prepared.stderr
    assert "Head Lice" in prepared.stdout and "shipped" in prepared.stdout
    with (out / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20
    again = scalpnet("prepare", *args, "--split", "random", "--seed", "3")
    assert again.returncode == 0, again.stderr
    assert "0 processed, 20 already up to date" in again.stdout and "random" in again.stdout


def test_data_verbs_do_not_import_tensorflow(tmp_path):
    code = (
        "import sys; from scalpnet import cli; "
        f"cli.main(['synth', '--out', {str(tmp_path / 's')!r}, '--per-class', '1']); "
        f"cli.main(['prepare', '--data', {str(tmp_path / 's')!r}, "
        f"'--out', {str(tmp_path / 'p')!r}, '--image-size', '32', '--quiet']); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"
