"""Training speed of one model under train.py's speed settings, relative to plain float32.

    python benchmarks/train_settings.py [--model=fernet --width=1.3 --image_size=56]

train.py offers `--mixed_precision` and `--jit_compile` (XLA), and the batch
size is a recipe choice. Whether they pay depends on the machine: on a GPU
they usually do, on a CPU often not. This measures, in one run, images/s of
`train_on_batch` (AdamW, cross-entropy on logits) and of `predict_on_batch`
on random data for each setting and prints the ratio to float32, no XLA, at
`--batch_size` (> 1: faster). The default model is the release recipe's
network (FERNet x1.3 on 56x56 faces). Timing is `models_speed.median_seconds`
(median of `--steps` after `--warmup`), so short bursts of other load do not
move it; sustained load does: compare figures of the same run only.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import models_speed  # noqa: E402  (its --batch_size, --steps and --warmup flags, and its timer)
import numpy as np  # noqa: E402

from fer_tf import losses, models  # noqa: E402

F = flags.FLAGS
flags.DEFINE_string("model", "fernet", "Registered model to measure.")
flags.DEFINE_float("width", 1.3, "Width multiplier (ignored by models without one).")
flags.DEFINE_integer("image_size", 56, "Side of the square grayscale input.")

# name -> (precision policy, XLA, batch size multiplier); the first is the baseline.
SETTINGS = {
    "float32": ("float32", False, 1.0),
    "mixed_bfloat16": ("mixed_bfloat16", False, 1.0),
    "xla": ("float32", True, 1.0),
    "half batch": ("float32", False, 0.5),
    "double batch": ("float32", False, 2.0),
}


def measure(policy: str, xla: bool, batch_size: int) -> tuple[float, float]:
    """(train, inference) images/s of the model under one setting."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        kwargs = {"width": F.width} if "width" in (models.MODELS[F.model].__kwdefaults__ or {}) else {}
        model = models.build_model(
            F.model, models_speed.NUM_CLASSES, (F.image_size, F.image_size, 1), **kwargs
        )
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=losses.crossentropy(), jit_compile=xla)
        rng = np.random.default_rng(0)
        images = rng.random((batch_size, F.image_size, F.image_size, 1), dtype=np.float32)
        targets = np.eye(models_speed.NUM_CLASSES, dtype=np.float32)[
            rng.integers(0, models_speed.NUM_CLASSES, batch_size)
        ]
        train = models_speed.median_seconds(lambda: model.train_on_batch(images, targets), F.steps, F.warmup)
        infer = models_speed.median_seconds(lambda: model.predict_on_batch(images), F.steps, F.warmup)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return batch_size / train, batch_size / infer


def main(argv):
    del argv
    if F.model not in models.MODELS:
        print(f"unknown model {F.model!r}; valid: {sorted(models.MODELS)}", file=sys.stderr)
        return 2
    rows = []
    for name, (policy, xla, scale) in SETTINGS.items():
        batch = max(1, round(F.batch_size * scale))
        rows.append((name, batch, *measure(policy, xla, batch)))
        print(f"measured {name}", flush=True)
    _, _, base_train, base_infer = rows[0]
    print(
        f"\n{F.model} at {F.image_size}x{F.image_size}; median of {F.steps} steps after {F.warmup} warm-up; "
        f"ratios vs float32 at batch {F.batch_size} (> 1: faster); {os.cpu_count()} CPUs, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"{'setting':<16}{'batch':>6}{'train img/s':>13}{'x':>7}{'infer img/s':>13}{'x':>7}")
    for name, batch, train, infer in rows:
        print(
            f"{name:<16}{batch:>6}{train:>13.0f}{train / base_train:>7.2f}{infer:>13.0f}{infer / base_infer:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    app.run(main)
