"""`python -m scalpnet predict`: output, exit codes, and a corpus of awkward and broken files."""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import THRESHOLDS, add_onnx, jpeg_bytes, make_run, photo
from PIL import Image

from scalpnet import cli, files
from scalpnet.errors import InvalidImageError
from scalpnet.labels import CONDITIONS, KEYS
from scalpnet.serve.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """{"good": name -> path, "bad": name -> path}: every kind of file issue 5 lists."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    d = tmp_path_factory.mktemp("corpus")
    rgb = photo(10, shape=(90, 120))
    data = jpeg_bytes(rgb)
    good, bad = {}, {}
    (d / "plain.jpg").write_bytes(data)
    good["plain"] = d / "plain.jpg"
    frames = [Image.fromarray(photo(11 + i, shape=(70, 70))) for i in range(3)]
    good["animated_gif"] = _save(
        d / "animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=80, loop=0
    )
    good["cmyk_jpeg"] = _save(d / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), format="JPEG")
    sixteen = (np.linspace(0, 65535, 80 * 80).reshape(80, 80)).astype(np.uint16)
    good["png_16bit"] = _save(d / "sixteen.png", Image.fromarray(sixteen))
    alpha = np.full((90, 120, 1), 128, np.uint8)
    good["rgba_png"] = _save(d / "alpha.png", Image.fromarray(np.concatenate([rgb, alpha], 2)))
    rotated = Image.open(io.BytesIO(data))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    good["exif_rotated"] = _save(d / "rotated.jpg", rotated, exif=exif, quality=95)
    good["heic"] = _save(d / "photo.heic", Image.fromarray(rgb), format="HEIF")

    (d / "empty.jpg").write_bytes(b"")
    bad["empty"] = d / "empty.jpg"
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad["truncated"] = d / "truncated.jpg"
    (d / "notes.jpg").write_text("shopping list: eggs, milk\n" * 20)
    bad["not_an_image"] = d / "notes.jpg"
    (d / "huge.png").write_bytes(_png_header_only(8000, 7000))  # 56 MP declared
    bad["huge_dimensions"] = d / "huge.png"
    (d / "bomb.png").write_bytes(_png_header_only(30000, 30000))  # 900 MP declared
    bad["bomb"] = d / "bomb.png"
    bad["missing"] = d / "does_not_exist.jpg"
    return {"good": good, "bad": bad}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("cli") / "run")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_corpus_through_the_cli(corpus, run_dir, capsys):
    """Good files are predicted, each bad file is one error line, and the exit code is 2."""
    good, bad = corpus["good"], corpus["bad"]
    pairs = itertools.zip_longest(good.values(), bad.values())  # good and bad interleaved
    files = [str(path) for pair in pairs for path in pair if path is not None]
    code = cli.main(["predict", *files, "--run", str(run_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    lines = _error_lines(err)
    assert len(lines) == len(bad)
    for path in bad.values():
        assert sum(path.name in line for line in lines) == 1, (path.name, lines)
    document = json.loads(out)
    assert [r["image"] for r in document["results"]] == [str(p) for p in good.values()]
    assert len(document["errors"]) == len(bad)
    for result in document["results"]:
        assert list(result["probabilities"]) == list(KEYS)
        assert result["top"] in KEYS and set(result["positives"]) <= set(KEYS)
        assert list(result["thresholds"].values()) == pytest.approx(THRESHOLDS)


def test_awkward_files_predict_like_their_plain_equivalents(corpus, run_dir):
    """EXIF rotation is applied, a GIF is its first frame, bad files poison nothing."""
    predictor = Predictor.load(run_dir)
    plain = predictor.predict(corpus["good"]["plain"])
    stored = np.asarray(Image.open(corpus["good"]["exif_rotated"]).convert("RGB"))  # as stored
    upright = predictor.predict(np.rot90(stored, k=-1).copy())  # what orientation 6 displays
    rotated = predictor.predict(corpus["good"]["exif_rotated"])
    np.testing.assert_allclose(rotated.probabilities, upright.probabilities, atol=1e-6)
    assert rotated.probabilities != predictor.predict(stored).probabilities
    first = np.asarray(Image.open(corpus["good"]["animated_gif"]).convert("RGB"))
    gif = predictor.predict(corpus["good"]["animated_gif"])
    np.testing.assert_allclose(gif.probabilities, predictor.predict(first).probabilities, atol=1e-6)
    for path in corpus["bad"].values():
        with pytest.raises(InvalidImageError):
            predictor.predict(path)
        assert predictor.predict(corpus["good"]["plain"]).probabilities == plain.probabilities


def test_a_folder_stands_for_the_images_in_it(corpus, run_dir, tmp_path, capsys):
    """Every image under a named folder, sorted, nested folders included; hidden files and
    other files skipped; a folder with no image is one error line, the others still run."""
    photos = tmp_path / "photos"
    (photos / "later").mkdir(parents=True)
    (photos / ".thumbnails").mkdir()
    plain = corpus["good"]["plain"].read_bytes()
    for name in ("b.jpg", "a.JPG", "later/c.jpeg", ".hidden.jpg", ".thumbnails/d.jpg"):
        (photos / name).write_bytes(plain)
    (photos / "notes.txt").write_text("not a photo")
    empty = tmp_path / "no_photos"
    empty.mkdir()
    code = cli.main(["predict", str(photos), "--run", str(run_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and _error_lines(err) == []
    names = [Path(r["image"]).relative_to(photos).as_posix() for r in json.loads(out)["results"]]
    assert names == ["a.JPG", "b.jpg", "later/c.jpeg"]

    code = cli.main(["predict", str(empty), str(photos / "b.jpg"), "--run", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert _error_lines(err) == [
        f"error: the folder '{empty}' holds no image files (JPEG, PNG, WebP, BMP, TIFF, GIF or "
        "HEIC)"
    ]
    assert "b.jpg" in out and "top:" in out


def test_images_go_through_in_batches_in_order_whatever_fails(corpus, run_dir):
    """Pixels are prepared one batch at a time; a bad file in a batch costs only itself."""
    from scalpnet.serve import predict_verb

    good, bad = list(corpus["good"].values())[:5], corpus["bad"]["truncated"]
    images = (*good[:2], bad, *good[2:])
    at_once = predict_verb.run_predict(predict_verb.PredictConfig(images=images, run=run_dir))
    in_twos = predict_verb.run_predict(
        predict_verb.PredictConfig(images=images, run=run_dir, batch_size=2)
    )
    for report in (at_once, in_twos):
        assert [r.image for r in report.results] == [str(p) for p in good]
        assert [image for image, _ in report.errors] == [str(bad)]
    for a, b in zip(at_once.results, in_twos.results, strict=True):
        np.testing.assert_allclose(
            a.prediction.probabilities, b.prediction.probabilities, atol=1e-5
        )


def test_text_output_names_conditions_and_exit_code_zero(corpus, run_dir, capsys, tmp_path):
    cam = tmp_path / "cam.png"
    code = cli.main(
        ["predict", str(corpus["good"]["plain"]), "--run", str(run_dir), "--gradcam", str(cam),
         "--tta"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and _error_lines(err) == []
    for condition in CONDITIONS:
        assert condition.english in out
    assert "top:" in out and "above threshold:" in out and "Grad-CAM:" in out
    assert cam.is_file()
    assert Image.open(cam).size == Image.open(corpus["good"]["plain"]).size


def test_a_full_disk_or_an_unusable_cam_path_is_one_line_and_exit_2(
    corpus, run_dir, tmp_path, capsys, monkeypatch
):
    def predict_with_cam(cam: Path) -> tuple[int, str]:
        argv = ["predict", str(corpus["good"]["plain"]), "--run", str(run_dir), "--gradcam"]
        code = cli.main([*argv, str(cam)])
        err = capsys.readouterr().err
        assert _error_lines(err) == [err.strip()] and "Traceback" not in err
        return code, err

    monkeypatch.setenv(files.FAULT_ENV, "enospc:cam:1")  # the first overlay meets a full disk
    monkeypatch.setattr(files, "_fault_counts", {})
    code, err = predict_with_cam(tmp_path / "cam.png")
    assert code == 2 and "the disk is full" in err and f"'{tmp_path}'" in err and "free" in err
    assert list(tmp_path.iterdir()) == []  # no half-written overlay, no temporary
    monkeypatch.delenv(files.FAULT_ENV)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, err = predict_with_cam(blocker / "cam.png")
    assert code == 2 and str(blocker) in err


def test_model_problems_are_one_line_and_exit_2(corpus, tmp_path, capsys):
    image = str(corpus["good"]["plain"])
    for argv in (
        ["predict", image, "--run", str(tmp_path / "no_such_run")],
        ["predict", image, "--run", "https://127.0.0.1:9/model.keras"],  # no --sha256
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(_error_lines(err)) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_corpus_in_a_real_process(corpus, run_dir):
    """The same corpus through `python -m scalpnet` in a fresh process: no traceback."""
    files = [str(p) for p in (*corpus["good"].values(), *corpus["bad"].values())]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "scalpnet", "predict", *files, "--run", str(run_dir)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(_error_lines(proc.stderr)) == len(corpus["bad"])
    assert proc.stdout.count("top:") == len(corpus["good"])


def test_out_of_distribution_warning_in_text_and_json(corpus, tmp_path, capsys):
    from scalpnet.judge import ood

    run = make_run(tmp_path / "run")
    predictor = Predictor.load(run)
    pixels = np.stack([predictor.prepare(photo(seed)).pixels for seed in range(8)])
    labels = np.eye(len(KEYS))[np.arange(8) % 2]
    fitted = ood.fit(predictor.runtime.forward(pixels)[0], labels)
    image = str(corpus["good"]["plain"])
    fitted.with_threshold(-1.0).save(run / "ood.npz")  # everything is out of distribution
    assert cli.main(["predict", image, "--run", str(run)]) == 0
    assert "does not look like the scalp close-ups" in capsys.readouterr().out
    fitted.with_threshold(1e30).save(run / "ood.npz")  # nothing is
    assert cli.main(["predict", image, "--run", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["is_ood"] is False and result["ood_threshold"] == 1e30
    assert result["ood_score"] > 0


def _imported(stderr: str) -> set[str]:
    """Top-level package names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.slow
def test_onnx_run_predicts_in_a_process_that_imports_no_tensorflow(corpus, tmp_path):
    """A run folder with model.onnx: `predict` answers from ONNX Runtime, names it, writes
    the CAM overlay, and the process never imports TensorFlow or Keras."""
    run = add_onnx(make_run(tmp_path / "run"))
    cam = tmp_path / "cam.png"
    env = {k: v for k, v in os.environ.items() if k != "SCALPNET_RUNTIME"}
    command = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "scalpnet",
        "predict",
        str(corpus["good"]["plain"]),
        "--run",
        str(run),
        "--json",
        "--gradcam",
        str(cam),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(proc.stdout)
    assert document["model"]["runtime"] == "onnx-fp32" and cam.is_file()
    imported = _imported(proc.stderr)
    assert "onnxruntime" in imported
    assert not imported & {"tensorflow", "keras", "tf2onnx"}
    expected = Predictor.load(run, runtime="keras").predict(corpus["good"]["plain"])
    got = [document["results"][0]["probabilities"][k] for k in KEYS]
    # An untrained model's huge logits magnify float32 rounding; the 1e-4 parity is held on
    # the trained tiny run (tests/serve/test_onnx_export.py).
    np.testing.assert_allclose(got, expected.probabilities, atol=1e-3)


def test_broken_onnx_asked_for_by_name_is_one_line_and_exit_2(corpus, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "model.onnx").write_bytes(b"\x08\x07broken")
    image = str(corpus["good"]["plain"])
    assert cli.main(["predict", image, "--run", str(run), "--runtime", "onnx"]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "model.onnx" in err and "Traceback" not in err
    assert cli.main(["predict", image, "--run", str(run)]) == 0  # auto: falls back to Keras
    out = capsys.readouterr().out
    assert "runtime keras" in out and "note: " in out and "model.onnx" in out
