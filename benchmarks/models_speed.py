"""Size and CPU speed of every registered model, relative to the seed paper's CNN.

    python benchmarks/models_speed.py [--steps=10] [--batch_size=64] [--models=fernet,seed_cnn]

For each model of `fer_tf.models.MODELS` (default kwargs, 7 classes, 48x48x1)
it reports, in one run:
  - parameters and FLOPs (`model_tools.count_flops`: 2 x MACs of conv/dense layers);
  - training throughput: images/s of `train_on_batch` (AdamW, cross-entropy,
    default `compile`, so no XLA on CPU) on random data, median step time of
    `--steps` steps after `--warmup` steps;
  - inference throughput: images/s of `predict_on_batch` at the same batch size;
  - latency: ms of `predict_on_batch` on one image (Keras, float32, not TFLite).
Ratios are to `seed_cnn` measured in the same run (> 1: faster than seed_cnn).
TensorFlow uses all cores. Medians make it robust to short bursts of load from
other processes, not to sustained load: compare numbers from the same run only.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fer_tf import losses, model_tools, models  # noqa: E402

F = flags.FLAGS
flags.DEFINE_list("models", None, "Models to measure (default: all registered; seed_cnn is always added).")
flags.DEFINE_integer("batch_size", 64, "Batch size of training and batched inference.")
flags.DEFINE_integer("steps", 10, "Timed training steps and inference batches per model.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocation).")
flags.DEFINE_integer("latency_runs", 30, "Timed single-image predictions per model.")

BASELINE = "seed_cnn"
NUM_CLASSES = 7


def median_seconds(fn, runs: int, warmup: int) -> float:
    """Median wall time of `fn()` over `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str) -> dict:
    """Params, FLOPs, train/inference images/s and single-image latency of model `name`."""
    keras.utils.set_random_seed(0)
    model = models.build_model(name, NUM_CLASSES)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=losses.crossentropy())
    rng = np.random.default_rng(0)
    images = rng.random((F.batch_size, 48, 48, 1), dtype=np.float32)
    targets = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, F.batch_size)]
    train = median_seconds(lambda: model.train_on_batch(images, targets), F.steps, F.warmup)
    infer = median_seconds(lambda: model.predict_on_batch(images), F.steps, F.warmup)
    one = images[:1]
    latency = median_seconds(lambda: model.predict_on_batch(one), F.latency_runs, F.warmup)
    return {
        "model": name,
        "params": model.count_params(),
        "mflops": model_tools.count_flops(model) / 1e6,
        "train": F.batch_size / train,
        "infer": F.batch_size / infer,
        "latency_ms": latency * 1e3,
    }


def format_table(rows: list[dict]) -> str:
    base = next(row for row in rows if row["model"] == BASELINE)
    lines = [
        f"{'model':<14}{'params':>11}{'MFLOPs':>9}{'train img/s':>13}{'x':>7}"
        f"{'infer img/s':>13}{'x':>7}{'1-img ms':>10}{'x':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['model']:<14}{row['params']:>11,}{row['mflops']:>9.1f}"
            f"{row['train']:>13.0f}{row['train'] / base['train']:>7.2f}"
            f"{row['infer']:>13.0f}{row['infer'] / base['infer']:>7.2f}"
            f"{row['latency_ms']:>10.2f}{base['latency_ms'] / row['latency_ms']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    names = F.models or list(models.MODELS)
    unknown = sorted(set(names) - set(models.MODELS))
    if unknown:
        print(f"unknown model(s) {unknown}; valid: {sorted(models.MODELS)}", file=sys.stderr)
        return 2
    names = [BASELINE] + [n for n in names if n != BASELINE]
    rows = []
    for name in names:
        rows.append(measure(name))
        print(f"measured {name}", flush=True)
    print(
        f"\nbatch {F.batch_size}, median of {F.steps} steps after {F.warmup} warm-up; "
        f"ratios vs {BASELINE} (> 1: faster), {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    app.run(main)
