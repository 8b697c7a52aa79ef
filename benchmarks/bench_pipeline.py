"""Input pipeline benchmark: is tf.data ever the bottleneck, and what does it save in memory?

    python benchmarks/bench_pipeline.py            # a few minutes on 2 cores
    python benchmarks/bench_pipeline.py --size 256 --sizes-n 500 1000 2000

(a) images/s of ``dataset.make_dataset`` alone (decode + shuffle + augment + batch) vs
    the model's training step alone on an in-memory batch: the pipeline must be several
    times faster, or the CPU that feeds the model starves it.
(b) ``model.fit`` throughput from the labels.csv pipeline, fed as training feeds it (one
    iterator over the endless training stream), vs from the same images pre-loaded into
    memory (the original project's way): the pipeline costs < 10 %. A fourth row feeds
    the finite dataset to ``fit`` (a new iterator every epoch) to show the stalls that
    the endless stream avoids: ``overall`` counts them, ``median`` does not.
(c) peak memory (RSS above the same process after imports) of one pass over N images
    through our pipeline vs the original's load-everything-as-float32 approach, for a few
    N: ours stays flat, the original grows as N x S x S x 3 x 4 bytes (7.5 GB for the
    9,600 training images of the Kaggle set at 256 px).

Each measurement of (c) runs in a fresh subprocess so peaks do not mix.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- data
def write_images(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n synthetic scalp images drawn at size x size, saved as PNGs + labels.csv (all 'train')."""
    import cv2
    import numpy as np
    import pandas as pd

    from scalpnet.data.synthetic import make_image
    from scalpnet.labels import KEYS, NUM_CLASSES

    csv_path = root / "labels.csv"
    if csv_path.is_file() and len(pd.read_csv(csv_path)) == n:
        return csv_path
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        c = i % NUM_CLASSES
        rel = f"images/{i:05d}.png"
        cv2.imwrite(str(root / rel), make_image(c, rng, (size, size))[:, :, ::-1])
        split = "train" if i % 10 < 8 else "val"
        rows.append(
            {
                "path": rel,
                "split": split,
                "source": rel,
                **{k: int(j == c) for j, k in enumerate(KEYS)},
            }
        )
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return csv_path


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --------------------------------------------------------------------------- (a) and (b)
def pipeline_images_per_s(csv_path: Path, size: int, batch: int, epochs: int = 2) -> float:
    """One warm-up pass, then ``epochs`` timed passes of the augmented training pipeline."""
    from scalpnet.data.dataset import make_dataset, steps_per_epoch

    ds = make_dataset(csv_path, "train", image_size=size, batch_size=batch, training=True)
    batches = iter(ds)  # endless: one iterator, as in training
    steps = steps_per_epoch(csv_path, "train", batch)
    for _ in range(steps):
        next(batches)
    n, start = 0, time.perf_counter()
    for _ in range(epochs * steps):
        n += int(next(batches)[0].shape[0])
    return n / (time.perf_counter() - start)


def train_step_images_per_s(model, size: int, batch: int, steps: int) -> float:
    """The compiled train step alone: ``fit`` on one batch already in memory, repeated
    (no decoding, no augmentation, no host-to-tensor copies of new data); only the time
    inside the steps counts (not the end of ``fit``, where an iterator is dropped)."""
    import keras
    import numpy as np
    import tensorflow as tf

    class StepTimer(keras.callbacks.Callback):
        seconds = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.seconds += time.perf_counter() - self._start

    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[np.arange(batch) % 10]
    one = tf.data.Dataset.from_tensors((tf.constant(x), tf.constant(y)))
    model.fit(one.repeat(2), epochs=1, verbose=0)  # trace
    timer = StepTimer()
    model.fit(one.repeat(steps), epochs=1, verbose=0, callbacks=[timer])
    return steps * batch / timer.seconds


def _epoch_timer():
    """A Keras callback keeping each epoch's wall seconds (stalls between steps included)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def fit_sources(csv_path: Path, size: int, batch: int) -> dict[str, dict]:
    """``fit`` arguments per data source, each fed the way it is used in practice."""
    import tensorflow as tf

    from scalpnet.data.dataset import make_dataset, steps_per_epoch

    def ours(augment: bool):
        extra = {} if augment else {"augment": None}
        return make_dataset(
            csv_path, "train", image_size=size, batch_size=batch, training=True, **extra
        )

    x, y = preload(csv_path)
    steps = steps_per_epoch(csv_path, "train", batch)
    sources = {"memory": {"x": x, "y": y, "batch_size": batch, "shuffle": True}}
    # As scalpnet.learn.training feeds fit:
    for name, augment in (("csv", False), ("csv_aug", True)):
        sources[name] = {"x": ours(augment), "steps_per_epoch": steps}
    # One epoch as a finite dataset: fit makes a new iterator of it every epoch.
    one_epoch = ours(False).take(steps).apply(tf.data.experimental.assert_cardinality(steps))
    sources["csv_per_epoch"] = {"x": one_epoch}
    return sources


def fit_images_per_s(
    model, sources: dict[str, dict], n_images: int, rounds: int, epochs: int
) -> dict[str, dict[str, float]]:
    """``fit`` throughput per source from per-epoch wall times.

    ``rounds`` passes over the sources (so a busy moment on a shared machine hits all
    alike); in each, one ``fit`` call per source of 1 + ``epochs`` epochs, the first
    untimed (tracing, filling the pipeline). Returns per source: ``median`` (img/s of the
    median epoch), ``overall`` (all timed images / all timed seconds, stalls included)
    and ``slowest`` (img/s of the slowest epoch).
    """
    import numpy as np

    seconds: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, kwargs in sources.items():
            timer = _epoch_timer()
            model.fit(**kwargs, epochs=1 + epochs, callbacks=[timer], verbose=0)
            seconds[name] += timer.seconds[1:]
    out = {}
    for name, values in seconds.items():
        t = np.asarray(values)
        out[name] = {
            "median": n_images / float(np.median(t)),
            "overall": n_images * len(t) / float(t.sum()),
            "slowest": n_images / float(t.max()),
        }
    return out


def preload(csv_path: Path, split: str = "train"):
    """The original project's way: every image decoded into one float32 array in RAM."""
    import numpy as np

    from scalpnet.data.dataset import label_matrix, read_split
    from scalpnet.data.preprocess import load_image

    rows = read_split(csv_path, split)
    images = np.array([load_image(p) for p in rows["path"]], dtype=np.float32)  # (N, S, S, 3)
    return images, label_matrix(rows)


def compiled_model(size: int):
    import keras

    from scalpnet.learn.model import build_model
    from scalpnet.learn.training import make_metrics

    keras.utils.set_random_seed(0)
    model = build_model(size, weights=None)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=make_metrics())
    return model


# --------------------------------------------------------------------------- (c) in a child
def memory_child(mode: str, csv_path: Path, size: int) -> dict:
    """Peak RSS above the post-import baseline for one pass over the training split."""
    import numpy as np
    import tensorflow as tf  # noqa: F401  (both modes pay for it before the baseline)

    from scalpnet.data import dataset

    dataset.make_dataset(csv_path, "train", image_size=size, batch_size=32)  # warm imports
    base = _status_mb("VmRSS")
    _reset_peak()  # the import-time peak is not part of either approach
    start = time.perf_counter()
    if mode == "pipeline":
        ds = dataset.make_dataset(csv_path, "train", image_size=size, batch_size=32, training=True)
        total = 0.0
        for x, _ in ds.take(dataset.steps_per_epoch(csv_path, "train", 32)):  # one epoch
            total += float(np.asarray(x, dtype=np.float32).mean())
    else:
        x, _ = preload(csv_path)
        total = float(x.mean())
    seconds = time.perf_counter() - start
    return {"peak_mb": _status_mb("VmHWM") - base, "seconds": seconds, "check": total}


def measure_memory(mode: str, csv_path: Path, size: int) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path\n"
        "from benchmarks.bench_pipeline import memory_child\n"
        f"print(json.dumps(memory_child({mode!r}, Path({str(csv_path)!r}), {size})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def main() -> None:
    from scalpnet.cpu_kernels import use_onednn

    use_onednn()  # as train.py, the CLI and the app do, before TensorFlow starts
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=96, help="image side for (a) and (b)")
    p.add_argument("--n", type=int, default=480, help="images for (a) and (b)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed train steps for (a)")
    p.add_argument("--rounds", type=int, default=2, help="passes over the sources in (b)")
    p.add_argument("--epochs", type=int, default=4, help="timed epochs per source and pass in (b)")
    p.add_argument("--mem-size", type=int, default=128, help="image side for (c)")
    p.add_argument(
        "--sizes-n", type=int, nargs="+", default=[250, 500, 1000, 2000], help="N for (c)"
    )
    p.add_argument("--work", type=Path, default=None, help="keep the images here (default: temp)")
    args = p.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    print(f"images in {work}; CPU cores: {os.cpu_count()}", flush=True)

    # (a)
    csv_ab = write_images(work / f"ab-{args.size}-{args.n}", args.n, args.size)
    n_train = int(0.8 * args.n)
    pipe = pipeline_images_per_s(csv_ab, args.size, args.batch)
    model = compiled_model(args.size)
    step = train_step_images_per_s(model, args.size, args.batch, args.steps)
    print(f"\n(a) images/s at {args.size} px, batch {args.batch}")
    print(f"  {'tf.data pipeline alone (decode+shuffle+augment)':<52}{pipe:>10.1f}")
    print(f"  {'ResNet50 train step alone (in-memory batch)':<52}{step:>10.1f}")
    print(f"  {'ratio pipeline / step':<52}{pipe / step:>10.1f}x")

    # (b)
    fits = fit_images_per_s(
        model,
        fit_sources(csv_ab, args.size, args.batch),
        n_train,
        rounds=args.rounds,
        epochs=args.epochs,
    )
    timed = args.rounds * args.epochs
    print(
        f"\n(b) model.fit images/s, {n_train} images at {args.size} px, {timed} timed epochs each"
    )
    print(f"  {'':<52}{'median':>10}{'overall':>10}{'slowest':>10}")
    base = fits["memory"]
    for label, key in (
        ("pre-loaded float32 arrays (original)", "memory"),
        ("labels.csv pipeline, no augmentation", "csv"),
        ("labels.csv pipeline, with augmentation", "csv_aug"),
        ("no augmentation, new iterator every epoch", "csv_per_epoch"),
    ):
        row = fits[key]
        cells = "".join(f"{row[k]:>10.1f}" for k in ("median", "overall", "slowest"))
        vs = ""
        if key != "memory":
            median, overall = (row[k] / base[k] - 1 for k in ("median", "overall"))
            vs = f"  ({median:+.1%} / {overall:+.1%})"
        print(f"  {label:<52}{cells}{vs}")
    print("  (ratios: median / overall against the pre-loaded arrays; 'overall' counts stalls)")

    # (c)
    print(f"\n(c) peak memory above baseline, one pass over N images at {args.mem_size} px (MB)")
    print(f"  {'N':>6}{'pipeline':>12}{'load all float32':>18}{'ratio':>8}{'N*S*S*3*4':>12}")
    for n in args.sizes_n:
        csv_c = write_images(work / f"c-{args.mem_size}-{n}", int(n / 0.8), args.mem_size)
        ours = measure_memory("pipeline", csv_c, args.mem_size)
        theirs = measure_memory("preload", csv_c, args.mem_size)
        formula = n * args.mem_size**2 * 3 * 4 / 2**20
        ratio = theirs["peak_mb"] / max(ours["peak_mb"], 1.0)
        row = f"{ours['peak_mb']:>12.0f}{theirs['peak_mb']:>18.0f}{ratio:>7.1f}x"
        print(f"  {n:>6}{row}{formula:>12.0f}")
    full = 9600 * 256**2 * 3 * 4 / 2**30
    print(f"  the Kaggle training split (9,600 images at 256 px) as float32: {full:.1f} GiB")


if __name__ == "__main__":
    main()
