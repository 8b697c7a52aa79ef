"""GPU training images/s of ScalpNet's network in Keras 3 on a machine without TensorFlow.

    KERAS_BACKEND is set by --backend; run once with jax (XLA) and once with torch (eager):
    python benchmarks/bench_gpu_keras.py --backend jax --out gpu.jsonl
    python benchmarks/bench_gpu_keras.py --backend torch --out gpu.jsonl

The borrowed GPU machine has JAX and PyTorch but no TensorFlow, and nothing can be
installed there beyond a 64 MiB carry (TensorFlow's wheel alone is ten times that), so
this measures the same network through Keras's other backends: ResNet50 (weights=None,
256 px, global average pooling) with a 10-unit sigmoid head, binary cross-entropy, Adam,
batch 64, in float32, mixed_float16 and mixed_bfloat16. Two figures per row: ``fit`` from
host NumPy arrays (what training pays for its input), and ``train_on_batch`` on one batch
already on the GPU (the step alone). The ratio is each precision against float32 on the
same backend, in the same run. Needs keras, namex and optree besides the backend.
"""

from __future__ import annotations

import argparse
import json
import os
import time

BATCH, STEPS, SIZE = 64, 24, 256
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def build(keras, precision: str):
    """ResNet50 (B, 256, 256, 3) -> (B, 10) sigmoid, compiled; XLA when the backend is jax."""
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    base = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(SIZE, SIZE, 3), pooling="avg"
    )
    head = keras.layers.Dense(10, activation="sigmoid", dtype="float32")(base.output)
    model = keras.Model(base.input, head)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        jit_compile=keras.backend.backend() == "jax",
    )
    return model


def on_gpu(backend: str, array):
    """``array`` copied to the first GPU as the backend's own tensor."""
    if backend == "jax":
        import jax

        return jax.device_put(array)
    import torch

    return torch.as_tensor(array, device="cuda")


def measure(keras, backend: str, precision: str, x, y) -> dict:
    """One precision: first call (compile), two timed ``fit`` epochs, 30 resident steps."""
    model = build(keras, precision)
    start = time.perf_counter()
    model.fit(x[: BATCH * 2], y[: BATCH * 2], batch_size=BATCH, epochs=1, verbose=0)
    first_call = time.perf_counter() - start
    fit_rates = []
    for _ in range(2):
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        fit_rates.append(len(x) / (time.perf_counter() - start))
    xb, yb = on_gpu(backend, x[:BATCH]), on_gpu(backend, y[:BATCH])
    for _ in range(3):
        model.train_on_batch(xb, yb)
    start = time.perf_counter()
    for _ in range(30):
        model.train_on_batch(xb, yb)  # returns the loss as a float: waits for the step
    resident = BATCH * 30 / (time.perf_counter() - start)
    keras.backend.clear_session()
    return {
        "backend": backend, "xla": backend == "jax", "precision": precision,
        "batch": BATCH, "size": SIZE, "first_call_s": round(first_call, 1),
        "fit_images_per_s": [round(v, 1) for v in fit_rates],
        "resident_images_per_s": round(resident, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["jax", "torch"], required=True)
    parser.add_argument("--out", help="append one JSON line per precision here")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH * STEPS, SIZE, SIZE, 3)).astype("float32")
    y = (rng.random((BATCH * STEPS, 10)) < 0.15).astype("float32")
    rows = [measure(keras, args.backend, p, x, y) for p in PRECISIONS]
    base = rows[0]["resident_images_per_s"]
    for row in rows:
        row["resident_vs_float32"] = round(row["resident_images_per_s"] / base, 2)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
