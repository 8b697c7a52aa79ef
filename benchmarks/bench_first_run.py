"""The first run as a new user sees it: from the README's command after the install to
the app's first page, and to the first prediction from the demo model the app builds.

    python benchmarks/bench_first_run.py                 # this recipe, then the previous one
    python benchmarks/bench_first_run.py --no-baseline   # this recipe only
    python benchmarks/bench_first_run.py --seeds 0 1 2   # the demo recipe with three seeds
    python benchmarks/bench_first_run.py --drawing       # CPU per synthetic image, old vs new

Each measurement starts from a clean ``git clone`` of this repository's HEAD in a
temporary folder, with the virtual environment already built (this Python), and runs
the real ``streamlit run streamlit_app.py`` driven by Debian's Chromium (playwright):
first page on screen -> "Build the demo model" clicked -> the app loads the model ->
a photo uploaded -> the probability chart drawn. The phases of the build come from its
progress file (scalpnet.progress). The baseline is the previous recipe
(``train.py --demo`` with 600 images per condition drawn at 160-240 px, 64 px,
4 epochs at batch 32 in mixed bfloat16 where the CPU has it, learning rate 1e-3): its
command run to the end, then
``streamlit run`` (the app cannot be told another recipe). Nothing is asserted: it
prints a table. Record ``uptime`` with it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_app import upload_to_bars, wait_healthy  # noqa: E402
from scalpnet.app.text import text  # noqa: E402
from scalpnet.progress import read_status  # noqa: E402

EN = text("en")
CHROMIUM = Path(os.environ.get("SCALPNET_CHROMIUM", "/usr/bin/chromium"))
PREVIOUS_RECIPE = [
    "--demo-images", "600", "--demo-sides", "160", "240", "--image-size", "64",
    "--epochs", "0", "4", "--head-lr", "1e-3", "--batch-size", "32", "--precision", "auto",
]  # fmt: skip
TIMEOUT_MS = 3 * 60 * 60 * 1000  # a busy 2-core VM: one build took over 30 minutes


def clone(where: Path) -> Path:
    """A clean clone of HEAD (committed work only, like a new user's)."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(where)], check=True)
    return where


def app_env(seed: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALPNET_", "GEMINI_"))}
    env.pop("GOOGLE_API_KEY", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["SCALPNET_BUILD_DEMO"] = "1"
    if seed is not None:
        env["SCALPNET_DEMO_SEED"] = str(seed)
    return env


def start_streamlit(clone_dir: Path, env: dict[str, str], port: int) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = open(clone_dir / "streamlit.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        command, cwd=clone_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def photo(folder: Path) -> Path:
    from PIL import Image

    from scalpnet.data.synthetic import make_image

    path = folder / "scalp.jpg"
    Image.fromarray(make_image(4, np.random.default_rng(11), (480, 640))).save(path)
    return path


def watch_build(progress_file: Path, t0: float, phases: dict[str, float], stop_flag) -> None:
    """Record when each step of the build first shows in its progress file."""
    while not stop_flag():
        status = read_status(progress_file)
        if status:
            step = str(status["step"]).split(":")[0]
            phases.setdefault(step, time.monotonic() - t0)
        time.sleep(0.5)


def in_browser(
    url: str, clone_dir: Path, t0: float, build: bool, first_page_only: bool = False
) -> dict[str, float]:
    """Drive the app: first page, (build,) model loaded, first prediction."""
    import threading

    from playwright.sync_api import sync_playwright

    times: dict[str, float] = {}
    phases: dict[str, float] = {}
    done = threading.Event()
    watcher = threading.Thread(
        target=watch_build,
        args=(clone_dir / "runs" / ".demo-build" / "progress.json", t0, phases, done.is_set),
        daemon=True,
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url)
            first = EN["no_model_title"] if build else EN["title"]
            page.get_by_text(first).first.wait_for(timeout=TIMEOUT_MS)
            times["first page"] = time.monotonic() - t0
            print(f"  first page on screen after {times['first page']:.1f} s", flush=True)
            if first_page_only:
                return times
            if build:
                watcher.start()
                page.get_by_role("button", name=EN["build_demo_button"]).click()
                page.get_by_text(EN["title"]).first.wait_for(timeout=TIMEOUT_MS)
                times["model loaded"] = time.monotonic() - t0
            upload_to_bars(page, photo(clone_dir))
            times["first prediction"] = time.monotonic() - t0
        finally:
            done.set()
            browser.close()
    return {**{f"  build: {k}": v for k, v in phases.items()}, **times}


def demo_metrics(clone_dir: Path) -> dict[str, float | str]:
    """Test top-1 and macro ROC AUC (at 0.5; top-1 is the same at tuned thresholds), OOD."""
    runs = sorted((clone_dir / "runs").glob("demo-*/metrics.json"))
    if not runs:
        return {}
    metrics = json.loads(runs[-1].read_text())
    at5 = metrics["at_0.5"]
    return {
        "test top-1": float(at5["top1_accuracy"]),
        "test macro ROC AUC": float(at5["macro"]["roc_auc"]),
        "OOD check fitted": "yes" if "ood" in metrics else "no",
    }


def run_new(seed: int | None, first_page_only: bool = False) -> dict:
    """This recipe: ``streamlit run`` at once; the app builds the demo model."""
    from tests.fake_gemini import free_port

    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        clone_dir = clone(Path(tmp) / "scalpnet")
        port = free_port()
        t0 = time.monotonic()
        app = start_streamlit(clone_dir, app_env(seed), port)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", app)
            times = in_browser(f"http://127.0.0.1:{port}", clone_dir, t0, True, first_page_only)
        finally:
            stop(app)
            stop_build(clone_dir)
        return {"times": times, "metrics": demo_metrics(clone_dir)}


def stop_build(clone_dir: Path) -> None:
    """End the app's training child (its own session) before its folder is deleted."""
    try:
        pid = json.loads((clone_dir / "runs" / ".demo-build" / "build.json").read_text())["pid"]
        os.killpg(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass  # never started, or already ended


def run_previous() -> dict:
    """The previous recipe: train.py --demo with its flags to the end, then streamlit run."""
    from tests.fake_gemini import free_port

    with tempfile.TemporaryDirectory(prefix="first-run-old-") as tmp:
        clone_dir = clone(Path(tmp) / "scalpnet")
        env = app_env(None)
        env["SCALPNET_BUILD_DEMO"] = "0"
        t0 = time.monotonic()
        command = [sys.executable, "train.py", "--demo", "--verbose", "2", *PREVIOUS_RECIPE]
        with open(clone_dir / "train.log", "wb") as log:
            subprocess.run(command, cwd=clone_dir, env=env, stdout=log, stderr=log, check=True)
        trained = time.monotonic() - t0
        port = free_port()
        app = start_streamlit(clone_dir, env, port)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", app)
            times = in_browser(f"http://127.0.0.1:{port}", clone_dir, t0, build=False)
        finally:
            stop(app)
        return {
            "times": {"train.py --demo done": trained, **times},
            "metrics": demo_metrics(clone_dir),
        }


def drawing_cost(n: int = 100) -> None:
    """CPU ms per synthetic JPEG (drawn, encoded, written) at the old and the demo sides."""
    import train
    from scalpnet.data import synthetic_dataset

    seqs = np.random.SeedSequence(0).spawn(n)
    with tempfile.TemporaryDirectory() as tmp:
        for name, sides in (("previous", synthetic_dataset.SIDE_RANGE), ("demo", train.DEMO_SIDES)):
            cpu, wall = time.process_time(), time.perf_counter()
            for i, seq in enumerate(seqs):
                synthetic_dataset._write_one(Path(tmp) / f"{i}.jpg", i % 10, seq, sides)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(f"{name:<9} sides {sides}: {1000 * cpu / n:6.1f} ms CPU per image, "
                  f"{1000 * wall / n:6.1f} ms wall (one thread)")  # fmt: skip


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[None])
    parser.add_argument("--no-baseline", action="store_true", help="skip the previous recipe")
    parser.add_argument("--drawing", action="store_true", help="only the synthetic drawing cost")
    parser.add_argument(
        "--first-page-only", action="store_true", help="stop at the first page (no build)"
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; load average before: {load()}", flush=True)
    if args.drawing:
        drawing_cost()
        print(f"load average after: {load()}")
        return 0
    results = []
    for seed in args.seeds:
        name = "this recipe" + ("" if seed is None else f", seed {seed}")
        results.append((name, run_new(seed, args.first_page_only)))
        print(f"{name}: {results[-1][1]} (load {load()})", flush=True)
    if not args.no_baseline:
        results.append(("previous recipe", run_previous()))
        print(f"previous recipe: {results[-1][1]} (load {load()})", flush=True)
    print(f"\nload average after: {load()}")
    for name, result in results:
        print(f"\n{name}")
        for key, seconds in result["times"].items():
            print(f"  {key:<32} {seconds:8.1f} s")
        for key, value in result["metrics"].items():
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"  {key:<32} {shown:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
