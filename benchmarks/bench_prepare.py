"""Dataset preparation: the original project's way vs ``scalpnet prepare``.

On the same N synthetic JPEGs (default 1,000 of 640x480, 100 per condition):

(a) original: PIL open -> resize to 256 -> cv2.medianBlur -> float32/255, one image
    after another in one process, arrays kept in RAM (nothing written);
(b) ``prepare_dataset`` end to end: discovery, decode, resize, blur, PNG files,
    labels.csv and the report, in parallel over all cores (a fresh output each time).

Extra rows show where the time goes: (b) with one worker, (b) with spawned worker
processes instead of threads, and a rerun on an up-to-date output; then the CPU time of
each stage of one image in one thread (decode, resize + blur, PNG encode, write). Each method runs
``--repeats`` times, interleaved, and the best run counts (the machine may be shared).

    python benchmarks/bench_prepare.py [--n 1000] [--repeats 3] [--data DIR] [--photo 640x480]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from scalpnet import files
from scalpnet.data import prepare, synthetic
from scalpnet.data.preprocess import load_image, to_model_input
from scalpnet.labels import CONDITIONS, NUM_CLASSES

SIZE = 256


def make_jpegs(folder: Path, n: int, width: int = 640, height: int = 480) -> list[Path]:
    """N synthetic JPEGs in class folders (``folder/<Class>/<key>_NNNN.jpg``), kept if present."""
    paths = []
    for i in range(n):
        condition = CONDITIONS[i % NUM_CLASSES]
        path = folder / condition.english / f"{condition.key}_{i:04d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(i)
            rgb = synthetic.make_image(i % NUM_CLASSES, rng, (height, width))
            Image.fromarray(rgb).save(path, quality=90)
        paths.append(path)
    return paths


def original_way(paths: list[Path]) -> list[np.ndarray]:
    """The original project: PIL open -> resize -> median blur -> float32 / 255, in memory."""
    arrays = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((SIZE, SIZE))
        arrays.append(cv2.medianBlur(np.array(image), 3).astype(np.float32) / 255.0)
    return arrays


def ours(
    data: Path, out: Path, workers: int | None = None, executor: str = "auto"
) -> prepare.PrepareResult:
    """``prepare_dataset`` end to end into ``out``."""
    config = prepare.PrepareConfig(
        data=data, out=out, image_size=SIZE, workers=workers, executor=executor
    )
    return prepare.prepare_dataset(config, progress=False)


def stage_times(paths: list[Path], out: Path) -> dict[str, float]:
    """Milliseconds per image of each stage of ``prepare.process_image``, one thread."""
    out.mkdir(parents=True, exist_ok=True)
    raw = [path.read_bytes() for path in paths]
    decoded = [load_image(data, min_size=SIZE) for data in raw]
    resized = [to_model_input(rgb, SIZE) for rgb in decoded]
    encoded = [cv2.imencode(".png", rgb, list(prepare.PNG_PARAMS))[1].tobytes() for rgb in resized]
    stages: dict[str, Callable[[], object]] = {
        "read the file": lambda: [path.read_bytes() for path in paths],
        "decode (load_image)": lambda: [load_image(data, min_size=SIZE) for data in raw],
        "  original's decode + PIL resize": lambda: [
            Image.open(path).convert("RGB").resize((SIZE, SIZE)) for path in paths
        ],
        "resize + median blur (to_model_input)": lambda: [
            to_model_input(rgb, SIZE) for rgb in decoded
        ],
        "PNG encode (prepare's settings)": lambda: [
            cv2.imencode(".png", rgb, list(prepare.PNG_PARAMS)) for rgb in resized
        ],
        "  PNG encode, uncompressed": lambda: [
            cv2.imencode(".png", rgb, [cv2.IMWRITE_PNG_COMPRESSION, 0]) for rgb in resized
        ],
        "write (temp file + rename)": lambda: [
            files.write_bytes_atomic(out / f"{i}.png", data) for i, data in enumerate(encoded)
        ],
    }
    result = {}
    for name, run in stages.items():
        start = time.process_time()
        run()
        result[name] = 1000 * (time.process_time() - start) / len(paths)
    return result


def cpu_seconds() -> float:
    """CPU time of this process, all its threads, and its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="number of JPEGs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, help="keep the JPEGs here (reused between runs)")
    parser.add_argument("--photo", default="640x480", help="JPEG size WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.photo.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        scratch = Path(tmp)
        data = args.data or scratch / "jpegs"
        start = time.perf_counter()
        paths = make_jpegs(data, args.n, width, height)
        print(
            f"{len(paths)} synthetic {width}x{height} JPEGs in {data} "
            f"({time.perf_counter() - start:.0f} s)"
        )
        print(f"cores: {os.cpu_count()}, cv2 threads: {cv2.getNumThreads()}")

        warm = scratch / "warm"
        ours(data, warm)
        fresh = scratch / "fresh"
        methods: dict[str, Callable[[], object]] = {
            "original (sequential, in RAM)": lambda: original_way(paths),
            "scalpnet prepare (threads, default)": lambda: ours(data, fresh),
            "scalpnet prepare, 1 worker": lambda: ours(data, fresh, workers=1),
            "scalpnet prepare, spawned processes": lambda: ours(data, fresh, executor="processes"),
            "scalpnet prepare, rerun (up to date)": lambda: ours(data, warm),
        }
        times: dict[str, list[float]] = {name: [] for name in methods}
        cpu: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, run in methods.items():
                shutil.rmtree(fresh, ignore_errors=True)  # every run starts from nothing
                start, start_cpu = time.perf_counter(), cpu_seconds()
                run()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(cpu_seconds() - start_cpu)

        stages = stage_times(paths[:200], scratch / "stages")

    n = len(paths)
    base = n / min(times["original (sequential, in RAM)"])
    header = f"{'method':<40}{'best img/s':>12}{'median img/s':>14}{'vs original':>13}"
    print(f"\n{header}{'CPU ms/img':>12}")
    for name, seconds in times.items():
        best, median = n / min(seconds), n / statistics.median(seconds)
        cpu_ms = 1000 * min(cpu[name]) / n
        print(f"{name:<40}{best:>12.0f}{median:>14.0f}{best / base:>12.2f}x{cpu_ms:>12.2f}")
    ratio = (n / min(times["scalpnet prepare (threads, default)"])) / base
    print(f"\nscalpnet prepare vs the original: {ratio:.2f}x (target >= 3x)")
    print("\nCPU ms per image by stage (one thread, 200 images):")
    for name, ms in stages.items():
        print(f"  {name:<40}{ms:>7.2f}")
    print(
        "CPU ms/img counts all threads and worker processes; on a busy machine the img/s "
        "columns measure the machine's load as much as the code."
    )


if __name__ == "__main__":
    main()
