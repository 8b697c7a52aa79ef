"""Training throughput under tf.distribute: one device against several, in the same run.

    python benchmarks/bench_distributed.py                          # CPU section (+ GPU if any)
    python benchmarks/bench_distributed.py --image-size 32 --steps 4 --repeats 1   # quick check

CPU section (always; GPUs hidden): the physical CPU is split into ``--cpu-devices``
logical devices (the way the tests simulate several GPUs) and the ScalpNet model
(ResNet50, random weights, BatchNorm training) is trained at the same GLOBAL batch by
  - ``1 device``: Keras ``fit`` without a strategy (the baseline);
  - ``mirrored, fit``: ``MirroredStrategy`` over the logical devices, synchronised
    BatchNorm, Keras ``fit`` (what ``--strategy mirrored`` runs);
  - ``mirrored, custom loop``: the same strategy driven by the steps of
    ``distributed_loop.custom_fit`` (the ``strategy.run`` loop that ``--strategy multiworker``
    runs), for its overhead against ``fit``.
Logical CPU devices share the same cores, so they cannot be faster: the ratio shows the
cost of the replication (per-replica graphs, all-reduces), not a speed-up.

GPU section (only when TensorFlow sees a GPU): images/s on ONE GPU at 256 px with
float32, mixed_float16, XLA (``jit_compile``), and both; plus ``MirroredStrategy`` over
all GPUs when there are several.

Each row: a fresh model, traced and warmed up by one untimed epoch; then ``--repeats``
timed epochs of ``--steps`` steps on in-memory batches, taken in turns across the rows
(so machine noise hits every row alike). Only the time inside the training steps is
counted (images/s = steps x global batch / seconds); the best epoch and the median are
reported. Each section runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _data(tf, image_size: int, batch: int, seed: int = 0):
    """Endless in-memory batches of (uint8 (B, S, S, 3), float32 (B, 10) one-hot)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = batch * 4
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch, drop_remainder=True)
    return data.repeat().prefetch(tf.data.AUTOTUNE)


class _Row:
    """One configuration: a fresh model, traced and warmed up on construction."""

    def __init__(self, strategy, args, batch: int, precision=None, jit=False, loop="fit"):
        import keras
        import tensorflow as tf

        from scalpnet.learn import config as config_module
        from scalpnet.learn import distributed, distributed_loop, training
        from scalpnet.learn.model import build_model

        self.steps, self.batch, self.loop = args.steps, batch, loop
        keras.utils.set_random_seed(0)
        config = config_module.TrainConfig(
            image_size=args.image_size, weights="none", precision=precision, jit=jit, verbose=0
        )
        phase = config_module.plan_phases(config)[0]
        with strategy.scope() if strategy is not None else _null():
            model = build_model(args.image_size, weights=None, dropout=0.0, dtype_policy=precision)
            training.compile_for_phase(model, phase, config, args.steps * (args.repeats + 2))
        if distributed.replicas(strategy) > 1:
            distributed.synchronize_batchnorm(model)
        self.model = model
        self.data = _data(tf, args.image_size, batch)
        if loop == "custom":
            # What distributed_loop.custom_fit runs for each epoch, without its callbacks.
            self.run = distributed_loop._Steps(model, strategy, training.make_metrics, jit)
            self.iterator = iter(strategy.experimental_distribute_dataset(self.data))
        self.timer = _step_timer()
        self.seconds: list[float] = []
        self.epoch(keep=False)  # tracing and warm-up

    def epoch(self, keep: bool = True) -> None:
        """Train ``steps`` steps; keep the seconds spent inside the steps."""
        if self.loop == "fit":
            self.timer.total = 0.0
            self.model.fit(
                self.data, epochs=1, steps_per_epoch=self.steps, callbacks=[self.timer], verbose=0
            )
            seconds = self.timer.total
        else:
            self.run.reset()
            start = time.perf_counter()
            for _ in range(self.steps):
                self.run.train_fn(self.iterator)
            self.run.loss()  # waits for the last step
            seconds = time.perf_counter() - start
        if keep:
            self.seconds.append(seconds)

    def images_per_s(self) -> tuple[float, float]:
        """(best, median) over the kept epochs."""
        import numpy as np

        rates = self.steps * self.batch / np.asarray(self.seconds)
        return float(rates.max()), float(np.median(rates))


def _step_timer():
    """A Keras callback summing the seconds spent inside training steps."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        total = 0.0
        _start = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.total += time.perf_counter() - self._start

    return StepTimer()


def _round_robin(rows: list[dict], built: list[_Row], repeats: int) -> list[dict]:
    """Timed epochs taken in turns, so machine noise hits every row alike."""
    for _ in range(repeats):
        for row in built:
            row.epoch()
    for row, run in zip(rows, built, strict=True):
        row["images_per_s"], row["median"] = run.images_per_s()
        row["batch"] = run.batch
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cpu_section(args) -> list[dict]:
    from scalpnet.learn import distributed

    n = args.cpu_devices
    strategy = distributed.make_strategy("mirrored", f"cpu:{n}")
    rows = [
        {"run": "1 device (no strategy)", "replicas": 1, "loop": "fit"},
        {"run": f"mirrored over {n} logical CPUs", "replicas": n, "loop": "fit"},
        {"run": f"mirrored over {n} logical CPUs", "replicas": n, "loop": "custom"},
    ]
    built = [
        _Row(None if row["replicas"] == 1 else strategy, args, args.batch, loop=row["loop"])
        for row in rows
    ]
    return _round_robin(rows, built, args.repeats)


def gpu_section(args) -> list[dict]:
    import tensorflow as tf

    from scalpnet.learn import distributed

    gpus = tf.config.list_physical_devices("GPU")
    one = tf.distribute.OneDeviceStrategy("/gpu:0")
    rows, built = [], []
    for precision, jit in (
        (None, False),
        ("mixed_float16", False),
        (None, True),
        ("mixed_float16", True),
    ):
        name = f"1 GPU, {precision or 'float32'}{', XLA' if jit else ''}"
        rows.append({"run": name, "replicas": 1, "loop": "fit"})
        built.append(_Row(one, args, args.gpu_batch, precision=precision, jit=jit))
    if len(gpus) > 1:
        strategy = distributed.make_strategy("mirrored")
        name = f"mirrored over {len(gpus)} GPUs, mixed_float16"
        rows.append({"run": name, "replicas": len(gpus), "loop": "fit"})
        built.append(_Row(strategy, args, args.gpu_batch * len(gpus), precision="mixed_float16"))
    return _round_robin(rows, built, args.repeats)


def _device_name() -> str:
    import platform

    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpu = ""
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu})" + (
        f"; GPU: {gpu.replace(chr(10), ', ')}" if gpu else ""
    )


def _run_section(section: str, argv: list[str], hide_gpus: bool) -> list[dict]:
    env = dict(os.environ)
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    result = subprocess.run(
        [sys.executable, __file__, "--section", section, *argv],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{section} section failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1])["rows"]


def _gpu_visible() -> bool:
    probe = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip().splitlines()[-1:] != ["0"]


def _print_table(title: str, rows: list[dict]) -> None:
    base = rows[0]["images_per_s"]
    print(f"\n{title}")
    print(
        f"{'run':<42}{'loop':>8}{'replicas':>10}{'global batch':>14}{'images/s':>11}"
        f"{'median':>9}{'ratio':>8}"
    )
    for row in rows:
        print(
            f"{row['run']:<42}{row['loop']:>8}{row['replicas']:>10}{row['batch']:>14}"
            f"{row['images_per_s']:>11.1f}{row['median']:>9.1f}{row['images_per_s'] / base:>8.2f}"
        )
    print("(images/s: best timed epoch; ratio: best / first row's best)")


def main(argv=None) -> int:
    from scalpnet.cpu_kernels import use_onednn

    use_onednn()  # as train.py, the CLI and the app do, before TensorFlow starts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64, help="CPU section image side")
    parser.add_argument("--batch", type=int, default=16, help="CPU section global batch")
    parser.add_argument("--steps", type=int, default=8, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per row (best)")
    parser.add_argument("--cpu-devices", type=int, default=2, help="logical CPU devices")
    parser.add_argument("--gpu-size", type=int, default=256, help="GPU section image side")
    parser.add_argument("--gpu-batch", type=int, default=32, help="GPU section batch per GPU")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU section")
    parser.add_argument("--section", choices=["cpu", "gpu"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section == "cpu":
        print(json.dumps({"rows": cpu_section(args)}))
        return 0
    if args.section == "gpu":
        args.image_size = args.gpu_size
        print(json.dumps({"rows": gpu_section(args)}))
        return 0

    passthrough = sys.argv[1:] if argv is None else list(argv)
    print(f"machine: {_device_name()}")
    cpu_rows = _run_section("cpu", passthrough, hide_gpus=True)
    _print_table(
        f"CPU: ScalpNet training, {args.image_size} px, global batch {args.batch}, "
        f"{args.steps} steps x best of {args.repeats}",
        cpu_rows,
    )
    if not args.no_gpu and _gpu_visible():
        gpu_rows = _run_section("gpu", passthrough, hide_gpus=False)
        _print_table(
            f"GPU: ScalpNet training, {args.gpu_size} px, batch {args.gpu_batch} per GPU", gpu_rows
        )
    else:
        print("\nGPU: none visible; GPU section skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
