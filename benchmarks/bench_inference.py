"""Inference latency and throughput: our Predictor against the bare model, in the same run.

    python benchmarks/bench_inference.py                 # 256 px, as served
    python benchmarks/bench_inference.py --size 64 --repeats 10 --no-onnx   # a quick check

Single image, JPEG bytes in, batch 1, measured round-robin in a shuffled order so
machine noise hits every method alike:
  - ``predictor``: ``Predictor.predict(bytes)``: decode + resize + blur + compiled forward
    (features and probabilities) + calibration + Prediction.
  - ``bare forward``: a ``tf.function`` of the Keras model on ready pixels (the floor).
  - ``model.predict``: Keras' ``model.predict`` on ready pixels, per image (the usual way).
  - ``onnxruntime``: the ONNX export on ready pixels (when tf2onnx/onnx/onnxruntime exist).
Then batch throughput: ``predict_batch`` of N JPEGs vs the bare forward on N ready images.
Target: predictor p50 <= 1.15 x bare forward p50. An untrained (weights=None) model is
used: the time does not depend on the weights.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np


def _photo_bytes(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A phone-photo-like JPEG: smooth colour field plus texture and noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3)).astype(np.float32)
    field = np.repeat(np.repeat(coarse, 32, 0), 32, 1)[:height, :width]
    image = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _stats(ms: list[float]) -> tuple[float, float, float, float]:
    a = np.asarray(ms)
    return (
        float(np.percentile(a, 50)),
        float(np.percentile(a, 95)),
        float(a.mean()),
        float(a.min()),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="model input side (default 256)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="batch size for throughput")
    parser.add_argument("--batches", type=int, default=3, help="timed batches")
    parser.add_argument("--photo", default="1024x768", help="JPEG size WxH (default 1024x768)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    parser.add_argument("--xla", action="store_true", help="also time jit_compile=True")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from scalpnet.data.preprocess import preprocess_image
    from scalpnet.learn.model import build_model, save_model
    from scalpnet.serve.predictor import Predictor

    width, height = (int(v) for v in args.photo.lower().split("x"))
    rng = np.random.default_rng(0)
    photos = [_photo_bytes(rng, width, height) for _ in range(max(args.batch, 4))]
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    t0 = time.perf_counter()
    path = save_model(build_model(args.size, weights=None), tmp / "model.keras")
    predictor = Predictor.load(path)
    model = predictor.model
    print(
        f"model {args.size} px built and loaded in {time.perf_counter() - t0:.1f} s; "
        f"photo {width}x{height} JPEG ({len(photos[0]) / 1024:.0f} KiB); "
        f"keras {keras.__version__}, tensorflow {tf.__version__}, {os.cpu_count()} CPUs"
    )

    spec = tf.TensorSpec((None, args.size, args.size, 3), tf.float32)
    bare = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    pixels = preprocess_image(photos[0], args.size)[None].astype(np.float32)  # (1, S, S, 3)
    methods = {
        "predictor (bytes -> Prediction)": lambda i: predictor.predict(photos[i % len(photos)]),
        "bare compiled forward": lambda i: bare(tf.constant(pixels)).numpy(),
        "model.predict (per image)": lambda i: model.predict(pixels, verbose=0),
    }
    if args.xla:
        xla = Predictor(model, image_size=args.size, jit_compile=True)
        methods["predictor, jit_compile=True"] = lambda i: xla.predict(photos[i % len(photos)])
    session = None
    if not args.no_onnx and all(
        importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime")
    ):
        import onnxruntime as ort

        from scalpnet.serve.export import export_model

        t0 = time.perf_counter()
        result = export_model(model, "onnx", tmp / "model.onnx")
        print(f"ONNX export {time.perf_counter() - t0:.0f} s, parity {result.max_abs_diff:.1e}")
        options = ort.SessionOptions()
        # ORT's idle threads spin after each run by default, stealing the CPU from whatever
        # is timed next in the round-robin; off, every method gets a quiet machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(result.path), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        methods["onnxruntime forward"] = lambda i: session.run(None, {name: pixels})

    for fn in methods.values():
        for i in range(args.warmup):
            fn(i)
    times: dict[str, list[float]] = {label: [] for label in methods}
    labels = list(methods)
    for i in range(args.repeats):
        # A fresh order every round: no method always runs right after a heavy one.
        for label in rng.permutation(labels):
            start = time.perf_counter()
            methods[label](i)
            times[label].append((time.perf_counter() - start) * 1e3)

    split = [predictor.predict(photos[i % len(photos)]).timings_ms for i in range(5)]
    base = _stats(times["bare compiled forward"])[0]
    print(f"\nsingle image, batch 1, {args.repeats} calls each (ms)")
    print(f"{'method':<34}{'p50':>9}{'p95':>9}{'mean':>9}{'min':>9}{'p50 / bare':>12}")
    for label, ms in times.items():
        p50, p95, mean, low = _stats(ms)
        print(f"{label:<34}{p50:>9.1f}{p95:>9.1f}{mean:>9.1f}{low:>9.1f}{p50 / base:>11.2f}x")
    print("predictor stages (median of 5, ms): " + ", ".join(
        f"{k} {np.median([s[k] for s in split]):.1f}" for k in ("preprocess", "forward", "total")
    ))  # fmt: skip
    ratio = _stats(times["predictor (bytes -> Prediction)"])[0] / base
    print(f"target: predictor p50 <= 1.15 x bare forward p50 -> {ratio:.2f}x "
          f"({'met' if ratio <= 1.15 else 'NOT met'})")  # fmt: skip

    batch = photos[: args.batch]
    ready = np.stack([preprocess_image(p, args.size) for p in batch]).astype(np.float32)
    n = len(batch)
    rows = {
        "predictor.predict_batch (bytes)": lambda: predictor.predict_batch(batch, batch_size=n),
        "bare compiled forward (ready)": lambda: bare(tf.constant(ready)).numpy(),
        "model.predict (ready)": lambda: model.predict(ready, batch_size=n, verbose=0),
    }
    if session is not None:
        rows["onnxruntime (ready)"] = lambda: session.run(None, {name: ready})
    print(f"\nbatch throughput, batch {len(batch)}, {args.batches} batches (images/s)")
    for label, fn in rows.items():
        fn()
        start = time.perf_counter()
        for _ in range(args.batches):
            fn()
        rate = len(batch) * args.batches / (time.perf_counter() - start)
        print(f"{label:<34}{rate:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
