"""Inference latency and throughput on each runtime: Keras, ONNX Runtime fp32 and int8.

    python benchmarks/bench_inference.py                 # 256 px, as served
    python benchmarks/bench_inference.py --size 64 --repeats 10   # a quick check

Single image, batch 1, measured round-robin in a shuffled order so machine noise hits
every method alike. For each runtime (``serve.runtimes``):
  - ``bare forward``: the runtime's own forward on ready pixels (Keras: the compiled
    ``tf.function`` of the plain model; ONNX: ``InferenceSession.run`` of the served model);
  - ``Predictor``: ``Predictor.predict(JPEG bytes)``: decode + resize + blur + forward
    (features, probabilities, class maps) + calibration + Prediction.
Plus ``model.predict`` per image (the usual Keras way). Then batch throughput.
Targets (issue 16): int8 forward <= 0.25 x the Keras compiled forward, fp32 ONNX <= 0.6 x;
each Predictor p50 <= 1.15 x its runtime's bare forward p50. An untrained
(weights=None) model is used (the time does not depend on the weights); int8 is
calibrated on a few synthetic photos.
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


def _gflop(model) -> float:
    """GFLOP of one forward: 2 x the multiply-adds of every Conv2D and Dense layer."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):  # (h, w) of the output, after any stride
            macs += layer.output.shape[1] * layer.output.shape[2] * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return 2 * macs / 1e9


def _gemm_ceiling(n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of ONNX Runtime's own fp32 MatMul of two (n, n) matrices, best of ``repeats``:
    about the most its convolutions (lowered to the same GEMM kernels) can reach here."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              spec[:2], spec[2:])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = np.random.default_rng(0).random((2, n, n), dtype=np.float32)
    session.run(None, {"a": a, "b": b})
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"a": a, "b": b})
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main(argv=None) -> int:
    from scalpnet.cpu_kernels import use_onednn

    use_onednn()  # as train.py, the CLI and the app do, before TensorFlow starts
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

    from scalpnet.data.preprocess import load_image, preprocess_image
    from scalpnet.learn.model import build_model, save_model
    from scalpnet.serve import onnx_export
    from scalpnet.serve.predictor import Predictor

    width, height = (int(v) for v in args.photo.lower().split("x"))
    rng = np.random.default_rng(0)
    photos = [_photo_bytes(rng, width, height) for _ in range(max(args.batch, 4))]
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    t0 = time.perf_counter()
    path = save_model(build_model(args.size, weights=None), tmp / "model.keras")
    keras_predictor = Predictor.load(path)
    model = keras_predictor.runtime.model
    print(
        f"model {args.size} px built and loaded in {time.perf_counter() - t0:.1f} s; "
        f"photo {width}x{height} JPEG ({len(photos[0]) / 1024:.0f} KiB); "
        f"keras {keras.__version__}, tensorflow {tf.__version__}, {os.cpu_count()} CPUs"
    )

    spec = tf.TensorSpec((None, args.size, args.size, 3), tf.float32)
    bare = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    ready_u8 = preprocess_image(photos[0], args.size)[None]  # (1, S, S, 3) uint8
    pixels = ready_u8.astype(np.float32)
    predictors = {"keras": keras_predictor}
    methods = {
        "keras: bare compiled forward": lambda i: bare(tf.constant(pixels)).numpy(),
        "keras: Predictor (bytes)": lambda i: keras_predictor.predict(photos[i % len(photos)]),
        "keras: model.predict (per image)": lambda i: model.predict(pixels, verbose=0),
    }
    if args.xla:
        from scalpnet.serve.runtimes import KerasRuntime

        xla = Predictor(KerasRuntime(model, jit_compile=True))
        methods["keras: Predictor, jit_compile"] = lambda i: xla.predict(photos[i % len(photos)])
    if not args.no_onnx and all(
        importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime")
    ):
        t0 = time.perf_counter()
        fp32 = onnx_export.export_fp32(model, tmp / "model.onnx")
        print(f"fp32 ONNX export {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        calib = np.stack([preprocess_image(p, args.size) for p in photos[:8]])
        onnx_export.quantize_int8(fp32, tmp / "model.int8.onnx", calib)
        print(f"int8 quantisation {time.perf_counter() - t0:.0f} s; files "
              f"{fp32.stat().st_size / 1e6:.0f} MB fp32, "
              f"{(tmp / 'model.int8.onnx').stat().st_size / 1e6:.0f} MB int8")  # fmt: skip
        for kind in ("onnx", "int8"):
            predictor = Predictor.load(tmp, runtime=kind)
            name = predictor.runtime.name
            predictors[name] = predictor
            session, feed = predictor.runtime._session, predictor.runtime._input
            methods[f"{name}: bare forward"] = lambda i, s=session, f=feed: s.run(None, {f: pixels})
            methods[f"{name}: Predictor (bytes)"] = lambda i, p=predictor: p.predict(
                photos[i % len(photos)]
            )

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

    keras_base = _stats(times["keras: bare compiled forward"])[0]
    gflop = _gflop(model)
    print(f"\nsingle image, batch 1, {args.repeats} calls each (ms); one forward is "
          f"{gflop:.1f} GFLOP, so GFLOP/s = that / p50")  # fmt: skip
    print(f"{'method':<36}{'p50':>9}{'p95':>9}{'mean':>9}{'min':>9}{'p50/keras fwd':>15}"
          f"{'GFLOP/s':>9}")  # fmt: skip
    for label, ms in times.items():
        p50, p95, mean, low = _stats(ms)
        print(f"{label:<36}{p50:>9.1f}{p95:>9.1f}{mean:>9.1f}{low:>9.1f}{p50 / keras_base:>14.2f}x"
              f"{gflop / p50 * 1e3:>9.0f}")  # fmt: skip
    print("\ntargets")
    for name, limit in (("onnx-fp32", 0.6), ("onnx-int8", 0.25)):
        if f"{name}: bare forward" in times:
            ratio = _stats(times[f"{name}: bare forward"])[0] / keras_base
            verdict = "met" if ratio <= limit else "NOT met"
            print(f"  {name} forward <= {limit} x keras forward: {ratio:.2f}x ({verdict})")
    if "onnx-fp32: bare forward" in times:
        ceiling = _gemm_ceiling()
        needed = gflop / (0.6 * keras_base) * 1e3
        fp32 = gflop / _stats(times["onnx-fp32: bare forward"])[0] * 1e3
        print(f"    ONNX Runtime's own fp32 GEMM (2048 x 2048 MatMul) reaches {ceiling:.0f} "
              f"GFLOP/s here; the fp32 forward runs at {fp32:.0f} ({fp32 / ceiling:.0%} of "
              f"it); 0.6 x keras needs {needed:.0f} ({needed / ceiling:.0%})")  # fmt: skip
    for name in predictors:
        bare_label = "keras: bare compiled forward" if name == "keras" else f"{name}: bare forward"
        ratio = _stats(times[f"{name}: Predictor (bytes)"])[0] / _stats(times[bare_label])[0]
        verdict = "met" if ratio <= 1.15 else "NOT met"
        print(f"  {name} Predictor <= 1.15 x its bare forward: {ratio:.2f}x ({verdict})")
    for name, predictor in predictors.items():
        split = [predictor.predict(photos[i % len(photos)]).timings_ms for i in range(5)]
        stages = ("preprocess", "forward", "total")
        medians = ", ".join(f"{k} {np.median([s[k] for s in split]):.1f}" for k in stages)
        print(f"  {name} stages (median of 5, ms): {medians}")
    decode = []
    for i in range(20):
        start = time.perf_counter()
        load_image(photos[i % len(photos)], min_size=args.size)
        decode.append((time.perf_counter() - start) * 1e3)
    print(f"  decoding the JPEG alone (load_image, DCT-scaled to >= {args.size} px): "
          f"{np.median(decode):.1f} ms median of 20")  # fmt: skip

    batch = photos[: args.batch]
    ready = np.stack([preprocess_image(p, args.size) for p in batch]).astype(np.float32)
    n = len(batch)
    rows = {
        "keras: bare compiled forward (ready)": lambda: bare(tf.constant(ready)).numpy(),
        "keras: model.predict (ready)": lambda: model.predict(ready, batch_size=n, verbose=0),
    }
    for name, predictor in predictors.items():
        rows[f"{name}: predict_batch (bytes)"] = lambda p=predictor: p.predict_batch(
            batch, batch_size=n
        )
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
