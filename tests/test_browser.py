"""The app in a real browser: ``streamlit run`` on 127.0.0.1 driven by Debian's Chromium.

``playwright install`` cannot download browsers here, so the ``playwright`` package drives
the system's ``/usr/bin/chromium`` (``.ci/run`` installs it with apt-get). Without it the
tests skip and say why. Gemini is the local fake server, so the explanation streams.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from scalpnet.app.text import text
from tests.app_fixtures import jpeg, write_run
from tests.fake_gemini import FakeGemini, free_port, text_stream

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("SCALPNET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EN = text("en")
EXPLANATION = ("The model ", "leans towards ", "lichen planus, ", "but this is not a diagnosis.")
START_TIMEOUT_S = 180  # streamlit start-up + TensorFlow import + model load on a busy CPU
STEP_TIMEOUT_MS = 120_000


def _chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's 'chromium' package "
            "(apt-get install chromium) or set SCALPNET_CHROMIUM"
        )
    pytest.importorskip("playwright.sync_api", reason="the 'playwright' package is not installed")
    return CHROMIUM


def start_app(
    port: int, env: dict[str, str], log: Path, script: Path = REPO / "streamlit_app.py"
) -> subprocess.Popen:
    """``streamlit run streamlit_app.py`` in its own process group, output into ``log``."""
    command = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    """Poll Streamlit's health endpoint until it answers 'ok'."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not start in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop_app(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=8)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def fake_gemini():
    events = text_stream(list(EXPLANATION), event_delay=0.05)
    with FakeGemini(api_key="browser-test-key", default=events) as fake:
        yield fake


def probe_file(folder: Path) -> Path:
    """Where tests/app_probe.py writes the app process's TensorFlow/Keras modules."""
    return folder / "modules.json"


@pytest.fixture(scope="module")
def browser_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser")


@contextlib.contextmanager
def running_app(folder: Path, fake_gemini, *, onnx: bool):
    """``streamlit run`` on a test run folder with the fake Gemini; yields its URL.
    Its output goes to ``folder / "streamlit.log"``; the process is killed afterwards."""
    _chromium()
    run = write_run(folder / "runs" / "browser-run", onnx=onnx)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALPNET_", "GEMINI_"))}
    env.pop("GOOGLE_API_KEY", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the app quietens TensorFlow itself
    env.update(
        SCALPNET_RUN=str(run),
        GEMINI_API_KEY="browser-test-key",
        GEMINI_BASE_URL=fake_gemini.base_url,
        GEMINI_API_VERSION=fake_gemini.api_version,
        GEMINI_TIMEOUT_S="20",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        SCALPNET_PROBE_FILE=str(probe_file(folder)),
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "streamlit.log"
    process = start_app(port, env, log, script=REPO / "tests" / "app_probe.py")
    try:
        wait_healthy(process, url, log, START_TIMEOUT_S)
        yield url
    finally:
        stop_app(process)


@pytest.fixture(scope="module")
def app_url(browser_folder, fake_gemini):
    """The app on a run folder with ONNX models: served by ONNX Runtime."""
    with running_app(browser_folder, fake_gemini, onnx=True) as url:
        yield url


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from scalpnet.data.synthetic import make_image

    path = tmp_path_factory.mktemp("photo") / "scalp.jpg"
    path.write_bytes(jpeg(make_image(4, np.random.default_rng(11), size=(480, 640))))
    return path


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(_chromium()), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 2000})
        finally:
            browser.close()


def error_elements(page) -> list[str]:
    """Texts of exception boxes and st.error alerts on the page."""
    found = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [found.nth(i).inner_text() for i in range(found.count())]


def settled_box(element, timeout_s: float = STEP_TIMEOUT_MS / 1000) -> dict | None:
    """The element's box once it is over 150 px tall, or the last box seen (None: not on
    screen). A rerun of the page can replace the element for a moment."""
    deadline = time.monotonic() + timeout_s
    box = None
    while time.monotonic() < deadline:
        box = element.bounding_box(timeout=STEP_TIMEOUT_MS) if element.count() else None
        if box is not None and box["height"] > 150:
            return box
        time.sleep(0.2)
    return box


def test_upload_shows_bars_and_streamed_explanation(app_url, photo, page, tmp_path):
    page.goto(app_url)
    page.get_by_text(EN["title"]).wait_for(timeout=STEP_TIMEOUT_MS)  # model loaded
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))

    chart = page.locator('[data-testid="stVegaLiteChart"]')
    chart.locator("canvas, svg").first.wait_for(timeout=STEP_TIMEOUT_MS)
    page.get_by_text("".join(EXPLANATION).strip()).wait_for(timeout=STEP_TIMEOUT_MS)
    page.get_by_text(EN["source_gemini"]).wait_for(timeout=STEP_TIMEOUT_MS)
    page.locator('[data-testid="stImage"]').first.wait_for(timeout=STEP_TIMEOUT_MS)
    box = settled_box(chart.first)
    assert box is not None and box["height"] > 150, box  # ten bars, not an empty frame
    page.get_by_text(EN["download_json"]).wait_for(timeout=STEP_TIMEOUT_MS)

    screenshot = tmp_path / "app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("SCALPNET_SCREENSHOT_DIR"):  # keep a copy to look at
        shutil.copy(screenshot, Path(os.environ["SCALPNET_SCREENSHOT_DIR"]) / "app.png")
    assert error_elements(page) == []


def test_not_an_image_gives_one_message_then_a_photo_works(app_url, photo, page, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"plain text, not a JPEG")
    page.goto(app_url)
    page.get_by_text(EN["title"]).wait_for(timeout=STEP_TIMEOUT_MS)
    uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    uploader.set_input_files(str(bad))
    alert = page.locator('[data-testid="stAlertContentError"]')
    alert.wait_for(timeout=STEP_TIMEOUT_MS)
    assert alert.count() == 1 and "could not be used as a photo" in alert.inner_text()
    assert page.locator('[data-testid="stException"]').count() == 0

    uploader.set_input_files(str(photo))
    chart = page.locator('[data-testid="stVegaLiteChart"]')
    chart.locator("canvas, svg").first.wait_for(timeout=STEP_TIMEOUT_MS)
    page.locator('[data-testid="stAlertContentError"]').wait_for(
        state="detached", timeout=STEP_TIMEOUT_MS
    )
    assert error_elements(page) == []


def test_the_server_prints_no_tensorflow_startup_notices(
    tmp_path_factory, fake_gemini, photo, page
):
    from scalpnet.quiet import NOISE

    folder = tmp_path_factory.mktemp("keras-app")
    with running_app(folder, fake_gemini, onnx=False) as url:  # Keras: TensorFlow loads
        page.goto(url)
        page.get_by_text(EN["title"]).wait_for(timeout=STEP_TIMEOUT_MS)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
        page.locator('[data-testid="stVegaLiteChart"]').locator("canvas, svg").first.wait_for(
            timeout=STEP_TIMEOUT_MS
        )
        page.get_by_text(EN["download_json"]).wait_for(timeout=STEP_TIMEOUT_MS)  # run finished
        output = (folder / "streamlit.log").read_text(errors="replace")
    assert "Local URL" in output or "You can now view" in output  # the log is the server's
    modules = json.loads(probe_file(folder).read_text())
    assert any(m.startswith("tensorflow") for m in modules)  # so the check below means something
    assert [line for line in output.splitlines() if NOISE.search(line)] == []


def test_onnx_serving_process_never_imports_tensorflow(app_url, browser_folder, photo, page):
    """After a photo and its CAM are served, the streamlit process itself (checked from
    inside it by tests/app_probe.py) has loaded no tensorflow or keras module."""
    page.goto(app_url)
    page.get_by_text(EN["title"]).wait_for(timeout=STEP_TIMEOUT_MS)
    page.get_by_text("onnx-fp32").first.wait_for(timeout=STEP_TIMEOUT_MS)  # sidebar: runtime
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
    page.locator('[data-testid="stVegaLiteChart"]').locator("canvas, svg").first.wait_for(
        timeout=STEP_TIMEOUT_MS
    )
    page.get_by_text(EN["gradcam_toggle"]).click()
    page.locator('[data-testid="stImage"]').nth(1).wait_for(timeout=STEP_TIMEOUT_MS)  # overlay
    page.get_by_text(EN["download_json"]).wait_for(timeout=STEP_TIMEOUT_MS)  # run finished
    assert error_elements(page) == []
    modules = json.loads(probe_file(browser_folder).read_text())
    assert modules == [], modules[:10]


# A stand-in for train.py --demo: reports its steps through scalpnet.progress, then leaves
# a run folder (the app's own runs/ beside it), as the real one does in minutes.
FAKE_DEMO_TRAIN = """
import sys, time
from pathlib import Path
from scalpnet.progress import Progress
from tests.app_fixtures import write_run
for step in ("synthetic images", "prepare", "scratch: epoch 1/1"):
    with Progress(step, total=4, show=False) as bar:
        for _ in range(4):
            time.sleep(0.4)
            bar.update()
write_run(Path(__file__).parent / "runs" / "demo-browser")
"""


def test_no_model_then_the_app_builds_the_demo_and_predicts(tmp_path, photo, page):
    """First page without a model -> click -> progress bar -> model loaded -> bars."""
    _chromium()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copy(REPO / "streamlit_app.py", app_dir / "streamlit_app.py")
    (app_dir / "train.py").write_text(FAKE_DEMO_TRAIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALPNET_", "GEMINI_"))}
    env.pop("GOOGLE_API_KEY", None)
    env.update(
        SCALPNET_BUILD_DEMO="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", str(app_dir / "streamlit_app.py"),
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_healthy(process, url, log, START_TIMEOUT_S)
        page.goto(url)
        page.get_by_text(EN["no_model_title"]).wait_for(timeout=STEP_TIMEOUT_MS)
        page.get_by_role("button", name=EN["build_demo_button"]).click()
        page.locator('[data-testid="stProgress"]').wait_for(timeout=STEP_TIMEOUT_MS)
        page.get_by_text(EN["title"]).first.wait_for(timeout=STEP_TIMEOUT_MS)  # model loaded
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
        chart = page.locator('[data-testid="stVegaLiteChart"]')
        chart.locator("canvas, svg").first.wait_for(timeout=STEP_TIMEOUT_MS)
        assert error_elements(page) == []
        assert (app_dir / "runs" / "demo-browser" / "model.keras").is_file()
    finally:
        stop_app(process)
