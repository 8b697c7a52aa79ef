"""The Streamlit app through ``streamlit.testing.v1.AppTest`` (no browser).

A 64-px untrained model with its own thresholds, temperatures and OOD model stands in
for a trained run: the app's job is to draw what the Predictor returns, and these tests
check it draws exactly that.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from scalpnet.app.text import text
from scalpnet.labels import CONDITIONS, KEYS
from tests.app_fixtures import jpeg, write_run

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
TIMEOUT = 180  # the first run imports TensorFlow and loads the model
EN, KO = text("en"), text("ko")
KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
APP_VARS = (
    *KEY_VARS,
    "SCALPNET_RUN",
    "SCALPNET_RUNS_DIR",
    "SCALPNET_MODEL_URL",
    "SCALPNET_MODEL_SHA256",
    "SCALPNET_RUNTIME",
    "GEMINI_MODEL",
    "GEMINI_BASE_URL",
    "GEMINI_API_VERSION",
    "GEMINI_TIMEOUT_S",
)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def app_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("app") / "runs" / "r64")


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory) -> Path:
    """A run folder with its fp32 model.onnx (about 40 s to export)."""
    return write_run(tmp_path_factory.mktemp("onnx") / "runs" / "onnx-run", onnx=True)


@pytest.fixture(scope="module")
def reference(app_run):
    """An independent Predictor on the same run: what the app must show."""
    from scalpnet.serve.predictor import Predictor

    return Predictor.load(app_run)


@pytest.fixture
def env(monkeypatch, app_run):
    """The app's environment: the test run, no Gemini key, nothing else configured."""
    for name in APP_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCALPNET_RUN", str(app_run))
    return monkeypatch


@pytest.fixture(scope="module")
def synthetic_jpeg() -> bytes:
    from scalpnet.data.synthetic import make_image

    return jpeg(make_image(4, np.random.default_rng(3), size=(240, 320)))


@pytest.fixture(scope="module")
def real_photo(real_scalp_dir) -> Path:
    return sorted(real_scalp_dir.glob("*.jpg"))[0]


def new_app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    # A non-empty st.secrets stops AppTest from reading a developer's secrets.toml.
    at.secrets["SCALPNET_TEST"] = "1"
    return at.run()


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    at.file_uploader(key="upload").set_value((name, data, mime))
    return at.run()


def chart_rows(at: AppTest) -> list[dict]:
    """The rows behind the probability chart (Streamlit ships them as an Arrow table)."""
    import pyarrow as pa

    charts = at.get("vega_lite_chart")
    assert len(charts) == 1
    return pa.ipc.open_stream(charts[0].proto.data.data).read_all().to_pylist()


def all_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [a.value for kind in ("info", "warning", "error", "success") for a in at.get(kind)]
    return "\n".join(parts)


def assert_no_error(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def assert_shows(at: AppTest, reference, data: bytes, language: str = "en") -> None:
    """The chart carries the 10 conditions in label order with the Predictor's numbers."""
    expected = reference.predict(data)
    rows = chart_rows(at)
    assert [r["key"] for r in rows] == list(KEYS)
    assert [r["condition"] for r in rows] == [c.name(language) for c in CONDITIONS]
    np.testing.assert_allclose([r["probability"] for r in rows], expected.probabilities, atol=1e-5)
    np.testing.assert_allclose([r["threshold"] for r in rows], expected.thresholds, atol=1e-6)
    assert [r["above"] for r in rows] == [
        p >= t for p, t in zip(expected.probabilities, expected.thresholds, strict=True)
    ]
    t = text(language)
    top = expected.top_condition.name(language)
    assert any(m.value.startswith(t["top_result"].split("**")[0]) and top in m.value
               for m in at.markdown)  # fmt: skip


# --------------------------------------------------------------------------- no model
def test_no_model_page_says_how_to_get_one(env, tmp_path):
    env.delenv("SCALPNET_RUN")
    env.setenv("SCALPNET_RUNS_DIR", str(tmp_path / "runs"))
    at = new_app()
    assert_no_error(at)
    assert at.title[0].value == EN["no_model_title"]
    page = all_text(at)
    assert "python train.py --demo" in page and "python train.py --data" in page
    assert "SCALPNET_MODEL_URL" in page
    assert EN["disclaimer"] in page
    assert not at.file_uploader


def test_no_model_page_offers_to_build_the_demo_here(env, tmp_path):
    env.delenv("SCALPNET_RUN")
    env.delenv("SCALPNET_BUILD_DEMO", raising=False)
    env.setenv("SCALPNET_RUNS_DIR", str(tmp_path / "runs"))
    at = new_app()
    assert_no_error(at)
    assert [b.label for b in at.button] == [EN["build_demo_button"]]
    assert EN["build_demo_intro"] in all_text(at)


def test_a_full_disk_when_the_build_starts_is_one_message(env, tmp_path):
    from scalpnet import files

    env.delenv("SCALPNET_RUN")
    env.delenv("SCALPNET_BUILD_DEMO", raising=False)
    env.setenv("SCALPNET_RUNS_DIR", str(tmp_path / "runs"))
    env.setenv(files.FAULT_ENV, "enospc:build.json:1")  # no room for the build's record
    env.setattr(files, "_fault_counts", {})
    at = new_app()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [at.error[0].value]
    assert at.error[0].value.startswith("the disk is full: saving in ")
    assert "no build was started" in at.error[0].value
    assert [b.label for b in at.button] == [EN["build_demo_button"]]  # it can be tried again


def test_no_model_page_on_a_shared_server_builds_nothing(env, tmp_path):
    env.delenv("SCALPNET_RUN")
    env.setenv("SCALPNET_BUILD_DEMO", "0")
    env.setenv("SCALPNET_RUNS_DIR", str(tmp_path / "runs"))
    at = new_app()
    assert_no_error(at)
    assert not at.button
    assert EN["build_demo_cloud"] in all_text(at)
    assert "SCALPNET_MODEL_URL" in all_text(at)


def test_a_running_demo_build_shows_its_progress(env, tmp_path):
    import json
    import os

    env.delenv("SCALPNET_RUN")
    env.delenv("SCALPNET_BUILD_DEMO", raising=False)
    runs = tmp_path / "runs"
    env.setenv("SCALPNET_RUNS_DIR", str(runs))
    build = runs / ".demo-build"
    build.mkdir(parents=True)
    # A live process (this one) stands for the child; the step is the third of six.
    (build / "build.json").write_text(json.dumps({"pid": os.getpid(), "started": 0}))
    (build / "progress.json").write_text(
        json.dumps({"step": "scratch: epoch 1/2", "done": 5, "total": 10, "left_s": 75.0})
    )
    at = new_app()
    assert_no_error(at)
    bars = at.get("progress")
    assert len(bars) == 1 and bars[0].proto.value == 50
    assert "step 3 of 6, training: epoch 1/2" in bars[0].proto.text
    assert "about 1 min 15 s left" in all_text(at)
    assert not at.file_uploader


def test_a_demo_build_that_is_exporting_is_served_and_then_from_onnx(
    env, tmp_path, onnx_run, synthetic_jpeg
):
    """The build's last step (the ONNX export) does not keep the model from the user: the
    run is served through Keras, and the photo after the export through ONNX Runtime."""
    import json
    import os
    import shutil

    env.delenv("SCALPNET_RUN")
    runs = tmp_path / "runs"
    run = runs / "demo-run"
    shutil.copytree(onnx_run, run, ignore=shutil.ignore_patterns("*.onnx", "onnx_check.json"))
    env.setenv("SCALPNET_RUNS_DIR", str(runs))
    build = runs / ".demo-build"
    build.mkdir()
    (build / "build.json").write_text(json.dumps({"pid": os.getpid(), "started": 0}))
    (build / "progress.json").write_text(json.dumps({"step": "export", "done": 3, "total": 30}))
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert "`keras`" in sidebar  # the run in runs/, which has no ONNX model yet
    assert EN["build_demo_exporting"] in [m.value for m in at.sidebar.info]
    assert len(chart_rows(at)) == 10
    shutil.copy(onnx_run / "model.onnx", run / "model.onnx")  # the export ends
    (build / "build.json").write_text(json.dumps({"pid": os.getpid(), "returncode": 0}))
    at = upload(at, "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert "`onnx-fp32`" in "\n".join(m.value for m in at.sidebar.markdown)
    assert EN["build_demo_exporting"] not in [m.value for m in at.sidebar.info]


def test_unloadable_model_gives_a_clear_page_not_a_traceback(env, tmp_path):
    env.setenv("SCALPNET_RUN", str(tmp_path / "no_such_run"))
    at = new_app()
    assert not at.exception
    assert at.title[0].value == EN["model_error_title"]
    assert "no_such_run" in at.error[0].value
    env.delenv("SCALPNET_RUN")
    env.setenv("SCALPNET_MODEL_URL", "https://example.com/model.keras")
    at = new_app()
    assert not at.exception
    assert "SCALPNET_MODEL_SHA256" in at.error[0].value


@pytest.fixture
def served_run(app_run, tmp_path):
    """The run folder zipped and served over HTTP on 127.0.0.1: (url, sha256)."""
    import functools
    import hashlib
    import threading
    import zipfile
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    archive = served / "r64.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for path in sorted(app_run.iterdir()):
            zipped.write(path, f"r64/{path.name}")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/r64.zip"
        yield url, hashlib.sha256(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_model_downloaded_by_url_and_checksum(env, served_run, tmp_path, reference, synthetic_jpeg):
    url, sha256 = served_run
    env.delenv("SCALPNET_RUN")
    env.setenv("SCALPNET_RUNS_DIR", str(tmp_path / "no_runs"))
    env.setenv("SCALPNET_CACHE", str(tmp_path / "cache"))
    env.setenv("SCALPNET_MODEL_URL", url)
    env.setenv("SCALPNET_MODEL_SHA256", "0" * 64)
    at = new_app()
    assert not at.exception
    assert at.title[0].value == EN["model_error_title"] and "sha256" in at.error[0].value

    env.setenv("SCALPNET_MODEL_SHA256", sha256)
    at = new_app()
    assert_no_error(at)
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert "SCALPNET_MODEL_URL" in sidebar and "top-1 accuracy: 50.0%" in sidebar
    at = upload(at, "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert_shows(at, reference, synthetic_jpeg)


def test_newest_run_in_runs_dir_is_used(env, app_run):
    env.delenv("SCALPNET_RUN")
    env.setenv("SCALPNET_RUNS_DIR", str(app_run.parent))
    at = new_app()
    assert_no_error(at)
    assert at.title[0].value == EN["title"]
    assert "r64" in all_text(at)


def test_missing_or_broken_secrets_file_does_not_break_the_app(env, tmp_path):
    env.chdir(tmp_path)  # Streamlit looks for .streamlit/secrets.toml in the working directory
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # no st.secrets at all
    assert_no_error(at)
    assert at.title[0].value == EN["title"] and not at.sidebar.warning
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('GEMINI_API_KEY = "unterminated\n')
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.title[0].value == EN["title"]
    assert "secrets.toml" in at.sidebar.warning[0].value


# --------------------------------------------------------------------------- predictions
def test_synthetic_upload_shows_the_predictors_numbers_and_fact_sheets(
    env, reference, synthetic_jpeg
):
    at = new_app()
    assert_no_error(at)
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert "r64" in sidebar and EN["model_demo"] in sidebar
    assert "top-1 accuracy: 50.0%" in sidebar
    assert EN["demo_banner"] in [w.value for w in at.warning]
    assert at.info[0].value == EN["waiting"]

    at = upload(at, "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert_shows(at, reference, synthetic_jpeg)
    assert len(at.get("image")) >= 1  # the photo
    # No key: the offline fact sheet, its label, and the advisor's reason.
    from scalpnet.serve.advisor.facts import fact_sheet

    page = all_text(at)
    top_key = KEYS[reference.predict(synthetic_jpeg).top]
    assert fact_sheet(top_key, "en")["summary"] in page
    assert EN["source_offline"] in page
    assert "no Gemini API key" in page
    assert not any(EN["ood_warning"][:40] in w.value for w in at.warning)
    labels = [b.label for b in at.get("download_button")]
    assert labels == [EN["download_json"], EN["download_md"]]


def test_real_photo_upload(env, reference, real_photo):
    data = real_photo.read_bytes()
    at = upload(new_app(), real_photo.name, data)
    assert_no_error(at)
    assert_shows(at, reference, data)


def test_camera_photo(env, reference, synthetic_jpeg):
    at = new_app()
    at.toggle(key="use_camera").set_value(True).run()
    at.camera_input(key="camera").set_value(("shot.jpg", synthetic_jpeg, "image/jpeg"))
    at.run()
    assert_no_error(at)
    assert_shows(at, reference, synthetic_jpeg)


def test_heic_upload(env, reference, synthetic_jpeg):
    pillow_heif = pytest.importorskip("pillow_heif")
    from PIL import Image

    buffer = io.BytesIO()
    try:
        pillow_heif.from_pillow(Image.open(io.BytesIO(synthetic_jpeg))).save(buffer, quality=90)
    except Exception as exc:  # an encoder-less libheif build
        pytest.skip(f"pillow-heif cannot encode HEIC here: {exc}")
    at = new_app()
    assert {".heic", ".heif"} <= set(at.file_uploader(key="upload").allowed_type)
    at = upload(at, "scalp.heic", buffer.getvalue(), "image/heic")
    assert_no_error(at)
    assert_shows(at, reference, buffer.getvalue())


def test_language_switch_changes_labels_names_and_explanation(env, synthetic_jpeg, reference):
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert at.title[0].value == EN["title"]
    at.radio(key="language").set_value("ko").run()
    assert_no_error(at)
    assert at.title[0].value == KO["title"]
    assert_shows(at, reference, synthetic_jpeg, "ko")
    from scalpnet.serve.advisor.facts import fact_sheet

    top_key = KEYS[reference.predict(synthetic_jpeg).top]
    page = all_text(at)
    assert fact_sheet(top_key, "ko")["summary"] in page
    assert KO["source_offline"] in page
    assert EN["source_offline"] not in page
    assert [b.label for b in at.get("download_button")] == [
        KO["download_json"],
        KO["download_md"],
    ]


def test_prediction_is_not_recomputed_on_widget_changes(env, synthetic_jpeg, monkeypatch):
    from scalpnet.serve.predictor import Predictor

    calls = []
    original = Predictor.predict

    def counting(self, image, tta=False):
        calls.append(1)
        return original(self, image, tta=tta)

    monkeypatch.setattr(Predictor, "predict", counting)
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert len(calls) == 1
    at.radio(key="language").set_value("ko").run()
    at.radio(key="language").set_value("en").run()
    at.toggle(key="gradcam").set_value(True).run()
    assert_no_error(at)
    assert len(calls) == 1


def test_reruns_do_not_reset_keras(env, synthetic_jpeg, monkeypatch):
    """Streamlit would call keras.backend.clear_session() after every run, emptying
    TensorFlow's kernel cache and slowing the next prediction by about a second."""
    import keras

    calls = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: calls.append(1))
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    at.radio(key="language").set_value("ko").run()
    assert_no_error(at)
    assert calls == []


def test_gradcam_overlay(env, synthetic_jpeg):
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    images_before = len(at.get("image"))
    at.toggle(key="gradcam").set_value(True).run()
    assert_no_error(at)
    assert len(at.get("image")) == images_before + 1
    captions = [img.caption for image in at.get("image") for img in image.proto.imgs]
    assert any("Grad-CAM" in caption for caption in captions)


@pytest.mark.slow
def test_onnx_run_is_served_by_onnx_runtime_and_named(env, onnx_run, synthetic_jpeg):
    """A run folder with model.onnx is served by ONNX Runtime: the same numbers as Keras,
    the CAM overlay, and the sidebar and the reports name the runtime."""
    from scalpnet.app import state
    from scalpnet.serve.predictor import Predictor

    run = onnx_run
    env.setenv("SCALPNET_RUN", str(run))
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert "`onnx-fp32`" in "\n".join(m.value for m in at.sidebar.markdown)
    keras = Predictor.load(run, runtime="keras").predict(synthetic_jpeg)
    rows = chart_rows(at)
    np.testing.assert_allclose([r["probability"] for r in rows], keras.probabilities, atol=1e-4)
    at.toggle(key="gradcam").set_value(True).run()
    assert_no_error(at)
    captions = [img.caption for image in at.get("image") for img in image.proto.imgs]
    assert any("Grad-CAM" in caption for caption in captions)
    report = state.build_report(keras, card={"name": "x"}, language="en", runtime="onnx-fp32")
    assert report["model"]["runtime"] == "onnx-fp32"
    assert "onnx-fp32" in state.report_markdown(report)
    env.setenv("SCALPNET_RUNTIME", "keras")  # the setting wins over auto
    at = new_app()
    assert_no_error(at)
    assert "`keras`" in "\n".join(m.value for m in at.sidebar.markdown)


def test_ood_photo_gets_a_warning(env, app_run, tmp_path, synthetic_jpeg):
    strict = write_run(tmp_path / "strict", model_file=app_run / "model.keras", ood_threshold=0.0)
    env.setenv("SCALPNET_RUN", str(strict))
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert any(w.value.startswith(EN["ood_warning"][:40]) for w in at.warning)


# --------------------------------------------------------------------------- bad uploads
def test_bad_upload_shows_one_message_and_the_next_upload_works(env, reference, synthetic_jpeg):
    at = upload(new_app(), "photo.jpg", b"this is not a photo at all")
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith(EN["bad_image"].split(":")[0])
    assert not at.get("vega_lite_chart")
    at = upload(at, "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert_shows(at, reference, synthetic_jpeg)


def test_bad_upload_on_the_korean_page_is_explained_in_korean(env):
    at = new_app()
    at.radio(key="language").set_value("ko").run()
    at = upload(at, "photo.jpg", b"this is not a photo at all")
    assert not at.exception and len(at.error) == 1
    message = at.error[0].value
    assert message.startswith(KO["bad_image"].split(":")[0])
    assert KO["problem_not_an_image"] in message
    # Latin letters only in format names and units, never an English reason.
    assert set(re.findall(r"[A-Za-z]+", message)) <= {"MB", "JPEG", "PNG", "WebP", "HEIC"}
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert "테스트 분할 기준" in sidebar and "유사 사진 묶음 분할" in sidebar
    assert "grouped" not in sidebar and " test " not in sidebar


def test_upload_over_the_limit_is_refused(env, synthetic_jpeg):
    from scalpnet.app.state import MAX_UPLOAD_MB

    big = synthetic_jpeg + b"\0" * (MAX_UPLOAD_MB * 1024 * 1024)
    at = upload(new_app(), "huge.jpg", big)
    assert not at.exception
    assert len(at.error) == 1 and f"{MAX_UPLOAD_MB} MB" in at.error[0].value
    at = upload(at, "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert len(chart_rows(at)) == 10


# --------------------------------------------------------------------------- Gemini
@pytest.fixture
def fake_gemini(env):
    from tests.fake_gemini import FakeGemini

    with FakeGemini(api_key="test-key") as fake:
        env.setenv("GEMINI_API_KEY", "test-key")
        env.setenv("GEMINI_BASE_URL", fake.base_url)
        env.setenv("GEMINI_API_VERSION", fake.api_version)
        env.setenv("GEMINI_TIMEOUT_S", "10")
        yield fake


def test_gemini_explanation_is_streamed_once_per_image_and_language(
    fake_gemini, synthetic_jpeg, reference
):
    from tests.fake_gemini import text_stream

    fake_gemini.enqueue(text_stream(["Likely **", "tinea**. ", "See a doctor."]))
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    page = all_text(at)
    assert "Likely **tinea**. See a doctor." in page
    assert EN["source_gemini"] in page
    assert not at.info  # no notice: the live text arrived
    assert len(fake_gemini.requests) == 1
    top = reference.predict(synthetic_jpeg).top_condition
    assert top.english in fake_gemini.requests[0].prompt_text

    at.toggle(key="gradcam").set_value(True).run()  # a rerun does not ask again
    assert len(fake_gemini.requests) == 1
    fake_gemini.enqueue(text_stream(["한국어 ", "설명"]))
    at.radio(key="language").set_value("ko").run()
    assert_no_error(at)
    assert "한국어 설명" in all_text(at)
    assert len(fake_gemini.requests) == 2
    assert "Korean" in fake_gemini.requests[1].system_text
    at.radio(key="language").set_value("en").run()
    assert len(fake_gemini.requests) == 2
    assert "Likely **tinea**. See a doctor." in all_text(at)


def test_gemini_failure_falls_back_to_the_fact_sheet_with_a_notice(fake_gemini, synthetic_jpeg):
    from tests.fake_gemini import invalid_key

    fake_gemini.enqueue(invalid_key())
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    assert_no_error(at)
    assert "rejected" in at.info[0].value
    assert EN["source_offline"] in all_text(at)


def test_follow_up_chat_keeps_the_history(fake_gemini, synthetic_jpeg):
    from tests.fake_gemini import text_stream

    fake_gemini.enqueue(text_stream(["First explanation."]), text_stream(["Not ", "contagious."]))
    at = upload(new_app(), "scalp.jpg", synthetic_jpeg)
    at.chat_input(key="question").set_value("Is it contagious?").run()
    assert_no_error(at)
    messages = at.chat_message
    assert [m.name for m in messages] == ["user", "assistant"]
    assert "Not contagious." in all_text(at)
    assert "Is it contagious?" in fake_gemini.requests[-1].prompt_text
    fake_gemini.enqueue(text_stream(["Wash ", "bedding."]))
    at.chat_input(key="question").set_value("What about pillows?").run()
    assert_no_error(at)
    assert len(at.chat_message) == 4
    sent = fake_gemini.requests[-1].prompt_text
    assert "Is it contagious?" in sent and "Not contagious." in sent
    assert len(fake_gemini.requests) == 3
