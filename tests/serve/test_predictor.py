"""Predictor: schema, train/serve parity, run-folder settings, URL loading, threads, TTA."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.server
import io
import json
import os
import re
import socket
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import SIZE, THRESHOLDS, jpeg_bytes, make_run, model_file, photo, sha256

from scalpnet.data.preprocess import preprocess_image
from scalpnet.errors import DiskFullError, InvalidImageError, ModelNotFoundError
from scalpnet.judge.calibration import Calibration
from scalpnet.labels import KEYS, NUM_CLASSES
from scalpnet.serve.fetch import fetch_model
from scalpnet.serve.predictor import Predictor


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "runs" / "test-run")


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.load(run_dir)


def _model_probs(predictor: Predictor, pixels: np.ndarray) -> np.ndarray:
    """The Keras model's own forward pass on (B, S, S, 3) uint8 pixels -> (B, 10)."""
    return np.asarray(
        predictor.runtime.model(pixels.astype(np.float32), training=False), np.float64
    )


def _assert_same(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol)


# ----------------------------------------------------------------------------- schema and parity
def test_prediction_schema(predictor):
    data = jpeg_bytes(photo(1))
    p = predictor.predict(data)
    assert len(p.probabilities) == len(p.raw_probabilities) == len(p.thresholds) == NUM_CLASSES
    assert all(0.0 <= v <= 1.0 for v in p.probabilities + p.raw_probabilities)
    assert p.image_sha256 == hashlib.sha256(data).hexdigest()
    assert p.ood_score is None and p.is_ood is False and p.uncertainty is None
    assert {"preprocess", "forward", "total", "end_to_end"} <= set(p.timings_ms)
    assert p.top == int(np.argmax(p.probabilities))
    expected = sorted((i for i in range(NUM_CLASSES) if p.probabilities[i] >= THRESHOLDS[i]),
                      key=lambda i: -p.probabilities[i])  # fmt: skip
    assert list(p.positives) == expected
    data = json.loads(json.dumps(p.to_dict()))
    assert list(data["probabilities"]) == list(KEYS)
    assert "class_maps" not in data and p.class_maps is not None  # kept for the CAM only
    assert "class_maps" not in repr(p)
    assert predictor.describe()["name"] == "test-run"


def test_parity_with_model_forward_and_run_calibration(predictor, run_dir, tmp_path):
    """Probabilities = calibration.json applied to the model's own forward on the same pixels."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(photo(2)))
    p = predictor.predict(path)
    raw = _model_probs(predictor, preprocess_image(path, SIZE)[None])[0]
    _assert_same(p.raw_probabilities, raw, atol=1e-5)
    calibrated = Calibration.load(run_dir).apply(raw)
    _assert_same(p.probabilities, calibrated, atol=1e-5)
    assert np.max(np.abs(calibrated - raw)) > 1e-3  # the temperatures really changed something
    _assert_same(p.thresholds, THRESHOLDS, atol=0)
    assert p.image_sha256 == sha256(path)


def test_every_source_kind_gives_the_same_prediction(predictor, tmp_path):
    rgb = photo(3)
    data = jpeg_bytes(rgb)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    upload = io.BytesIO(data)
    upload.name = "upload.jpg"
    by_bytes, by_path, by_file = (predictor.predict(s) for s in (data, path, upload))
    assert by_bytes.probabilities == by_path.probabilities == by_file.probabilities
    assert by_bytes.image_sha256 == by_path.image_sha256 == by_file.image_sha256
    from_array = predictor.predict(rgb)  # decoded already: no bytes, no hash
    assert from_array.image_sha256 is None
    with pytest.raises(TypeError):
        predictor.predict(12345)


def test_run_without_calibration_or_thresholds(tmp_path):
    run = make_run(tmp_path / "plain", calibrated=False)
    (run / "thresholds.json").unlink()
    p = Predictor.load(run).predict(photo(4))
    assert p.probabilities == p.raw_probabilities  # identity calibration, exactly
    assert p.thresholds == (0.5,) * NUM_CLASSES


def test_bare_keras_file_gets_defaults():
    bare = Predictor.load(model_file())
    assert bare.card is None and bare.ood is None and bare.run_dir is None
    assert bare.image_size == SIZE
    p = bare.predict(photo(4))
    assert p.probabilities == p.raw_probabilities and p.thresholds == (0.5,) * NUM_CLASSES


def test_keras_file_inside_a_run_folder_uses_the_folder(run_dir):
    p = Predictor.load(run_dir / "model.keras")
    assert p.card is not None and p.thresholds.tolist() == list(THRESHOLDS)
    assert p.run_dir == run_dir
    assert Predictor.load(run_dir, sha256=sha256(run_dir / "model.keras")).run_dir == run_dir


def test_missing_or_inconsistent_models_are_clear_errors(tmp_path, run_dir):
    with pytest.raises(ModelNotFoundError, match="no model at"):
        Predictor.load(tmp_path / "nowhere")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"train\.py"):
        Predictor.load(tmp_path / "empty_run")
    bad = make_run(tmp_path / "bad")
    card = json.loads((bad / "model_card.json").read_text())
    card["image_size"] = 128
    (bad / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelNotFoundError, match="image_size 128"):
        Predictor.load(bad)
    for source in (run_dir, run_dir / "model.keras"):
        with pytest.raises(ModelNotFoundError, match="sha256"):
            Predictor.load(source, sha256="0" * 64)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "it holds a JSON list, not an object"),
        ('{"image_size": "x"}', "image_size is 'x', not a positive whole number"),
        ('{"image_size": 0}', "image_size is 0, not a positive whole number"),
        ('{"labels": 5}', "labels is not a list of conditions"),
        ('{"labels": [{"key": "psoriasis"}]}', "it lists the conditions ['psoriasis']"),
    ],
)
def test_a_broken_model_card_is_one_clear_error(tmp_path, text, problem):
    run = make_run(tmp_path / "run")
    (run / "model_card.json").write_text(text)
    with pytest.raises(ModelNotFoundError, match=re.escape(problem)) as caught:
        Predictor.load(run)
    message = str(caught.value)
    assert message.startswith(f"'{run / 'model_card.json'}' ") and "\n" not in message


# ----------------------------------------------------------------------------- bad input
def test_bad_image_raises_and_leaves_the_predictor_usable(predictor):
    good = jpeg_bytes(photo(5))
    before = predictor.predict(good)
    for bad in (b"", b"not an image at all", good[: len(good) // 3]):
        with pytest.raises(InvalidImageError):
            predictor.predict(bad)
    assert predictor.predict(good).probabilities == before.probabilities


def test_predict_batch_matches_single_predictions(predictor):
    images = [jpeg_bytes(photo(seed)) for seed in range(5)]
    batch = predictor.predict_batch(images, batch_size=2)
    assert len(batch) == 5
    for image, p in zip(images, batch, strict=True):
        single = predictor.predict(image)
        _assert_same(p.probabilities, single.probabilities, atol=1e-5)
        assert p.image_sha256 == single.image_sha256
    with pytest.raises(InvalidImageError):
        predictor.predict_batch([images[0], b"garbage"])


# ----------------------------------------------------------------------------- threads
def test_eight_threads_give_the_same_results_as_one(predictor):
    images = [jpeg_bytes(photo(seed)) for seed in range(16)]
    sequential = [predictor.predict(image).probabilities for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda image: predictor.predict(image).probabilities, images))
    _assert_same(concurrent, sequential, atol=1e-6)


# ----------------------------------------------------------------------------- TTA
def test_tta_mean_and_spread_of_flipped_views(predictor, run_dir):
    rgb = photo(6, shape=(SIZE, SIZE))
    p = predictor.predict(rgb, tta=True)
    pixels = predictor.prepare(rgb).pixels  # (S, S, 3) uint8
    views = np.stack([pixels, pixels[:, ::-1], pixels[::-1], pixels[::-1, ::-1]])
    raw = _model_probs(predictor, views)  # (4, 10)
    calibration = Calibration.load(run_dir)
    _assert_same(p.raw_probabilities, raw.mean(axis=0), atol=1e-5)
    _assert_same(p.probabilities, calibration.apply(raw.mean(axis=0)), atol=1e-5)
    _assert_same(p.uncertainty, calibration.apply(raw).std(axis=0), atol=1e-5)
    assert max(p.uncertainty) > 1e-4  # a random photo is not flip-symmetric


def test_tta_on_a_flip_symmetric_image_has_no_spread(predictor):
    quarter = photo(7, shape=(SIZE // 2, SIZE // 2))
    half = np.concatenate([quarter, quarter[:, ::-1]], axis=1)
    symmetric = np.concatenate([half, half[::-1]], axis=0)  # (S, S, 3), symmetric both ways
    plain, tta = predictor.predict(symmetric), predictor.predict(symmetric, tta=True)
    assert max(tta.uncertainty) < 1e-5
    _assert_same(tta.probabilities, plain.probabilities, atol=1e-5)


# ----------------------------------------------------------------------------- URL loading
class _Server:
    def __init__(self, folder: Path):
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    srv = _Server(folder)
    srv.folder = folder
    yield srv
    srv.close()


def test_url_with_good_hash_is_downloaded_once(server, tmp_path):
    (server.folder / "model.keras").write_bytes(model_file().read_bytes())
    digest, cache = sha256(model_file()), tmp_path / "cache"
    url = f"{server.url}/model.keras"
    p = Predictor.load(url, sha256=digest, cache_dir=cache)
    assert p.image_size == SIZE and p.thresholds.tolist() == [0.5] * NUM_CLASSES
    assert server.hits == ["/model.keras"]
    again = fetch_model(url, digest.upper(), cache)  # cached: no second request
    assert server.hits == ["/model.keras"] and sha256(again) == digest


def test_url_with_wrong_hash_is_refused_and_not_cached(server, tmp_path):
    (server.folder / "model.keras").write_bytes(model_file().read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(ModelNotFoundError, match="sha256") as info:
        Predictor.load(f"{server.url}/model.keras", sha256="ab" * 32, cache_dir=cache)
    assert sha256(model_file()) in str(info.value)  # says what it got
    assert not any(cache.glob("*.keras"))


def test_a_full_disk_while_downloading_is_one_line_and_caches_nothing(
    server, tmp_path, monkeypatch
):
    from scalpnet.serve import fetch

    small = b"bytes of a model" * 64  # sent whole before the client gives up: no reset
    (server.folder / "model.keras").write_bytes(small)
    cache, opened = tmp_path / "cache", os.fdopen

    class FullDisk:  # the download's file, on a disk with no room left
        def __init__(self, fd: int, mode: str):
            self.file = opened(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fetch.os, "fdopen", FullDisk)
    url = f"{server.url}/model.keras"
    with pytest.raises(DiskFullError) as caught:
        Predictor.load(url, sha256=hashlib.sha256(small).hexdigest(), cache_dir=cache)
    text = str(caught.value)
    assert text.startswith(f"the disk is full: saving in '{cache}'") and "\n" not in text
    assert list(cache.iterdir()) == []  # no partial download


def test_url_needs_a_sha256_and_https(server, tmp_path):
    with pytest.raises(ModelNotFoundError, match="sha256"):
        Predictor.load(f"{server.url}/model.keras", cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="https"):
        Predictor.load("http://example.com/model.keras", sha256="0" * 64, cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="404"):
        Predictor.load(f"{server.url}/missing.keras", sha256="0" * 64, cache_dir=tmp_path)


def test_a_cache_that_cannot_be_written_is_a_clear_error(server, tmp_path):
    (server.folder / "model.keras").write_bytes(model_file().read_bytes())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelNotFoundError, match="point SCALPNET_CACHE at a writable folder"):
        fetch_model(f"{server.url}/model.keras", sha256(model_file()), blocker / "cache")


def test_url_with_the_server_down_is_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ModelNotFoundError, match="could not download"):
        Predictor.load(f"http://127.0.0.1:{port}/model.keras", sha256="0" * 64, cache_dir=tmp_path)


def test_url_of_a_zipped_run_folder(server, run_dir, tmp_path):
    archive = server.folder / "run.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in run_dir.iterdir():
            zipped.write(path, f"test-run/{path.name}")
    p = Predictor.load(f"{server.url}/run.zip", sha256=sha256(archive), cache_dir=tmp_path)
    assert p.card["name"] == "test-run" and p.thresholds.tolist() == list(THRESHOLDS)
    assert p.run_dir.is_relative_to(tmp_path) and (p.run_dir / "calibration.json").is_file()


# ----------------------------------------------------------------------------- OOD in predictions
def test_ood_model_in_the_run_folder_scores_every_prediction(predictor, run_dir, tmp_path):
    from scalpnet.judge import ood

    pixels = np.stack([predictor.prepare(photo(seed)).pixels for seed in range(20, 32)])
    features = predictor.runtime.forward(pixels)[0]
    labels = np.eye(NUM_CLASSES)[np.arange(len(features)) % 3]
    fitted = ood.fit(features, labels)
    scores = fitted.score(features)
    run = make_run(tmp_path / "with_ood")
    fitted.with_threshold(float(np.median(scores))).save(run / "ood.npz")
    with_ood = Predictor.load(run)
    assert with_ood.describe()["ood"] is True
    predictions = with_ood.predict_batch([photo(seed) for seed in range(20, 32)])
    got = np.array([p.ood_score for p in predictions])
    np.testing.assert_allclose(got, scores, rtol=1e-4)
    assert [p.is_ood for p in predictions] == list(scores > np.median(scores))
    assert Predictor.load(run, with_ood=False).predict(photo(20)).ood_score is None
    (run / "ood.npz").write_bytes(b"garbage")
    with pytest.raises(ModelNotFoundError, match="OOD"):
        Predictor.load(run)
