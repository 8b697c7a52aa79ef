"""The Streamlit app in a real browser: cold start, upload-to-bars time, peak memory.

    python benchmarks/bench_app.py [--image-size 256] [--uploads 9]

Builds an untrained run folder at ``--image-size`` (the weights' values do not change
speed or memory) with model.keras, model.onnx and model.int8.onnx, starts
``streamlit run streamlit_app.py`` on 127.0.0.1 once per runtime (``SCALPNET_RUNTIME`` =
keras, onnx, int8), and drives Debian's Chromium (``/usr/bin/chromium``) with playwright:

- cold start: process spawn -> health endpoint answers, and -> the first page is drawn
  with the model loaded (the model loads on the first visit, inside st.cache_resource);
- upload to bars: file input set -> the probability chart is drawn, one new browser
  session and a new photo each time, with the model warm;
- CAM toggle: after each upload, the overlay switched on -> drawn (the median of all but
  the first, as for uploads);
- peak RSS of the app process and its children (sampled with psutil every 50 ms, and
  the kernel's high-water mark VmHWM of the main process).

Baselines, measured in the same run on the same photos:

- a minimal Streamlit app (upload -> st.image + a 10-bar Vega-Lite chart, no model): what
  Streamlit and the browser cost by themselves;
- a bare Python process that imports the same code, loads the same Predictor and predicts
  the photos (no Streamlit, no browser): what the model costs by itself, per runtime.

Targets (issue 16), against the minimal app in the same run: cold start <= 1.5x, upload to
bars <= 1.15x, CAM toggle to overlay <= 300 ms, peak RSS <= 400 MiB (fp32 ONNX) and
<= 300 MiB (int8). Community Cloud gives an app 690 MB - 2.7 GB of memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "streamlit_app.py"
sys.path.insert(0, str(REPO))

from scalpnet.app.text import text  # noqa: E402
from tests.app_fixtures import jpeg, write_run  # noqa: E402
from tests.fake_gemini import free_port  # noqa: E402

CHROMIUM = os.environ.get("SCALPNET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TITLE = text("en")["title"]
TIMEOUT_MS = 300_000

# The baseline: the same imports, Predictor and photos, without Streamlit. Prints JSON.
BASELINE = r"""
import json, sys, time
started = time.perf_counter()
from scalpnet.serve.predictor import Predictor
predictor = Predictor.load(sys.argv[1])
loaded = time.perf_counter() - started
times = []
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    t = time.perf_counter()
    predictor.predict(data)
    times.append((time.perf_counter() - t) * 1e3)
# VmHWM, not ru_maxrss: a forked child's ru_maxrss keeps the parent's peak (this bench
# builds the run folder in its own process first: 8 GB, the ONNX export).
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak_mb = int(status.split()[0]) / 1024
print(json.dumps({"load_s": loaded, "predict_ms": times, "peak_mb": peak_mb}))
"""


RUNTIMES = {"keras": "keras", "onnx": "onnx-fp32", "int8": "onnx-int8"}  # setting -> name


def app_env(run: Path, runtime: str = "auto") -> dict[str, str]:
    """The environment of every process: the bench run and runtime, no Gemini key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALPNET_", "GEMINI_"))}
    env.pop("GOOGLE_API_KEY", None)
    env.update(SCALPNET_RUN=str(run), TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    env["SCALPNET_RUNTIME"] = runtime
    return env


def baseline(run: Path, photos: list[Path], runtime: str) -> dict:
    """Bare process: spawn -> Predictor loaded, per-photo predict latency, peak RSS."""
    spawned = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", BASELINE, str(run), *map(str, photos)],
        env=app_env(run, runtime), cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["spawn_to_loaded_s"] = time.perf_counter() - spawned
    return result


class RssSampler(threading.Thread):
    """Samples the RSS of a process and all its children until stopped; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.05):
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak = 0
        self.last = 0
        self._halt = threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                total = 0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):  # a child may just have exited
                        total += proc.memory_info().rss
                self.last = total
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak resident set size of one process (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("streamlit did not become healthy")


def open_app(browser, url: str):
    """A new browser session on the app, once the page (with the model) is drawn."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(url)
    page.get_by_text(TITLE).wait_for(timeout=TIMEOUT_MS)
    return page


def upload_to_bars(page, photo: Path) -> float:
    """Seconds from setting the file input to the chart being drawn."""
    started = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
    chart = page.locator('[data-testid="stVegaLiteChart"]')
    chart.locator("canvas, svg").first.wait_for(timeout=TIMEOUT_MS)
    return time.perf_counter() - started


# The minimal Streamlit baseline: same title (the page-ready signal), uploader and chart.
MINIMAL_APP = f"""
import streamlit as st
st.title({TITLE!r})
upload = st.file_uploader("photo", type=["jpg", "jpeg", "png"], key="upload")
if upload is not None:
    st.image(upload.getvalue())
    rows = [{{"condition": str(i), "probability": i / 10}} for i in range(10)]
    st.vega_lite_chart(spec={{"data": {{"values": rows}}, "mark": "bar", "encoding": {{
        "y": {{"field": "condition", "type": "nominal"}},
        "x": {{"field": "probability", "type": "quantitative"}}}}}})
"""


def gradcam_drawn(page) -> float:
    """Seconds from switching the Grad-CAM toggle on to its overlay being shown."""
    started = time.perf_counter()
    page.get_by_text(text("en")["gradcam_toggle"]).click()
    caption = text("en")["gradcam_caption"].split("{")[0]
    page.get_by_text(caption).first.wait_for(timeout=TIMEOUT_MS)
    return time.perf_counter() - started


def bench_app(script: Path, run: Path, photos: list[Path], log: Path, runtime="auto") -> dict:
    """Cold start, upload-to-chart times and memory of ``streamlit run script``."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        with open(log, "wb") as out:
            spawned = time.perf_counter()
            process = subprocess.Popen(
                command, cwd=REPO, env=app_env(run, runtime), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        sampler = RssSampler(process.pid)
        sampler.start()
        try:
            wait_healthy(url, process)
            healthy_s = time.perf_counter() - spawned
            page = open_app(browser, url)
            first_render_s = time.perf_counter() - spawned
            idle_mb = sampler.last / 2**20
            page.close()
            uploads, gradcam_s = [], []
            for photo in photos:
                page = open_app(browser, url)
                uploads.append(upload_to_bars(page, photo))
                if script.name == APP.name:  # the minimal app has no CAM
                    gradcam_s.append(gradcam_drawn(page))
                page.close()
            hwm = vm_hwm_mb(process.pid)
            final_mb = sampler.last / 2**20
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            sampler.stop()
            browser.close()
    return {
        "healthy_s": healthy_s,
        "first_render_s": first_render_s,
        "upload_s": uploads,
        "gradcam_s": gradcam_s,
        "peak_mb": sampler.peak / 2**20,
        "vm_hwm_mb": hwm,
        "after_load_mb": idle_mb,
        "final_mb": final_mb,
    }


def make_photos(folder: Path, count: int) -> list[Path]:
    """Different synthetic 480x640 JPEGs, so no upload hits a cache."""
    from scalpnet.data.synthetic import make_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i}.jpg"
        path.write_bytes(jpeg(make_image(i % 10, rng, size=(480, 640))))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=256)
    # 9, not 5: an upload takes either about 0.4 s or about 0.9 s in every app, the minimal
    # one included, so a median of 5 swung with how many landed fast (2026-12-03 21:25:
    # the minimal app's median 629 ms with 5 uploads, 825 ms with 9 a minute later).
    parser.add_argument("--uploads", type=int, default=9, help="photos uploaded, one per session")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        sys.exit(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SCALPNET_CHROMIUM)")
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp:
        folder = Path(tmp)
        print(f"building an untrained {args.image_size}-px run folder ...", flush=True)
        run = write_run(
            folder / "runs" / f"bench-{args.image_size}", image_size=args.image_size, onnx=True
        )
        photos = make_photos(folder, args.uploads)
        add_int8(run, photos)
        sizes = {name: (run / name).stat().st_size / 2**20
                 for name in ("model.keras", "model.onnx", "model.int8.onnx")}  # fmt: skip
        print("baseline: minimal Streamlit app + Chromium ...", flush=True)
        minimal_script = folder / "minimal_app.py"
        minimal_script.write_text(MINIMAL_APP)
        minimal = bench_app(minimal_script, run, photos, folder / "minimal.log")
        apps, bases = {}, {}
        for setting, name in RUNTIMES.items():
            print(f"{name}: bare Predictor process, then the app + Chromium ...", flush=True)
            bases[name] = baseline(run, photos, setting)
            apps[name] = bench_app(APP, run, photos, folder / f"{setting}.log", setting)

    def med(values: list[float]) -> float:  # the first upload of a process warms caches
        return statistics.median(values[1:] or values)

    measures = [
        ("cold start -> first page drawn (s)", lambda r: r["first_render_s"], 1.5),
        ("cold start -> health endpoint (s)", lambda r: r["healthy_s"], None),
        ("upload -> bars drawn, median (ms)", lambda r: med(r["upload_s"]) * 1e3, 1.15),
        ("CAM toggle -> overlay drawn, median (ms)",
         lambda r: med(r["gradcam_s"]) * 1e3 if r["gradcam_s"] else None, None),
        ("peak RSS, process + children (MiB)", lambda r: r["peak_mb"], None),
        ("VmHWM, main process (MiB)", lambda r: r["vm_hwm_mb"], None),
    ]  # fmt: skip
    names = list(RUNTIMES.values())
    print(f"\nScalpNet app at {args.image_size} px, {args.uploads} uploads, {os.cpu_count()} CPUs;"
          f" load average before: {load_before}, after: {os.getloadavg()}")  # fmt: skip
    print("model files (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
    width = max(len(m[0]) for m in measures)
    print(f"{'measure':<{width}} " + " ".join(f"{n:>10} {'/min':>6}" for n in names)
          + f" {'minimal':>9}")  # fmt: skip

    def cell(value, size):
        return f"{value:>{size}.1f}" if value is not None else " " * (size - 1) + "-"

    for label, get, _ in measures:
        base_value = get(minimal)
        row = f"{label:<{width}} "
        for name in names:
            value = get(apps[name])
            ratio = f"{value / base_value:>5.2f}x" if value and base_value else "     -"
            row += f"{cell(value, 10)} {ratio} "
        print(row + cell(base_value, 9))
    print("\nbare Predictor process (no Streamlit, no browser)")
    for name in names:
        b = bases[name]
        print(f"  {name:<10} spawn -> loaded {b['spawn_to_loaded_s']:.1f} s, predict median "
              f"{med(b['predict_ms']):.0f} ms, peak RSS {b['peak_mb']:.0f} MiB")  # fmt: skip
    print("\ntargets (against the minimal app in this run)")
    for name in names[1:]:
        app = apps[name]
        limit_mb = 400 if name == "onnx-fp32" else 300
        checks = [
            ("cold start", app["first_render_s"] / minimal["first_render_s"], 1.5, "x"),
            ("upload to bars", med(app["upload_s"]) / med(minimal["upload_s"]), 1.15, "x"),
            ("CAM toggle (ms)", med(app["gradcam_s"]) * 1e3, 300, ""),
            ("peak RSS (MiB)", app["peak_mb"], limit_mb, ""),
        ]
        verdicts = [f"{what} {value:.2f}{unit} <= {limit}: {'met' if value <= limit else 'NOT met'}"
                    for what, value, limit, unit in checks]  # fmt: skip
        print(f"  {name}: " + "; ".join(verdicts))
    for name in names:
        print(f"{name} uploads (s): {', '.join(f'{v:.2f}' for v in apps[name]['upload_s'])}")
        print(f"{name} CAM toggles (s): {', '.join(f'{v:.2f}' for v in apps[name]['gradcam_s'])}")
    print(f"minimal uploads (s): {', '.join(f'{v:.2f}' for v in minimal['upload_s'])}")


def add_int8(run: Path, photos: list[Path]) -> None:
    """model.int8.onnx next to model.onnx, calibrated on the bench photos (timing only)."""
    from scalpnet.data.preprocess import preprocess_image
    from scalpnet.serve.onnx_export import quantize_int8
    from scalpnet.serve.runtimes import OnnxRuntime

    size = OnnxRuntime(run / "model.onnx").image_size
    pixels = np.stack([preprocess_image(p, size) for p in photos])
    quantize_int8(run / "model.onnx", run / "model.int8.onnx", pixels)


if __name__ == "__main__":
    main()
