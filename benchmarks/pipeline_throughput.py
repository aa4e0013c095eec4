"""Images/s of the train input pipeline vs a per-image NumPy/OpenCV loop.

    python benchmarks/pipeline_throughput.py [--batch_size=64] [--seconds=8]

Writes a FER2013-sized training split (28,709 48x48 grayscale images: the
real FER2013 Training rows from ../shared/data/fer2013 when present, random
pixels with the FER2013 class counts otherwise) as TFRecords into a temp dir,
then measures in the same run:

1. `fer_tf.data.make_train_dataset` with balanced sampling and the default
   augmentation (augmentation vectorised after `batch()`), steady state and
   first pass (which parses the files and fills the per-class caches);
2. the same sampling with the same ops applied per image in a `map` before
   `batch()` (STYLE.md #4 taken literally), to show why the pipeline batches first;
3. the baseline: balanced index sampling and per-image augmentation in a
   Python loop over in-memory arrays with OpenCV (flip, warpAffine with
   rotation/shift/zoom/shear, brightness/contrast, random erasing), the way
   the seed scripts did it.

It prints, for each, wall-clock images/s and process CPU time per image, and
their ratios to the baseline. Wall-clock numbers depend on the load of the
machine (run it on an idle one to compare commits); CPU time per image much
less so.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from fer_tf import augment, data, sampling, schema  # noqa: E402

F = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Batch size of every pipeline.")
flags.DEFINE_float("seconds", 8.0, "Measuring time per pipeline (after warm-up).")
flags.DEFINE_string(
    "fer2013",
    "../shared/data/fer2013/fer2013_train_publictest.csv.gz",
    "Real FER2013 CSV; random images are used when it is absent.",
)
flags.DEFINE_integer("num_shards", 8, "Shards of the temporary train split.")

FER2013_TRAIN_COUNTS = (3995, 436, 4097, 7215, 4830, 3171, 4965)


def load_images(path: str) -> tuple[np.ndarray, np.ndarray, str]:
    """FER2013 Training rows as (uint8 [N,48,48,1], int64 [N], source), or random ones."""
    if os.path.exists(path):
        images, labels = [], []
        with gzip.open(path, "rt") as f:
            next(f)
            for line in f:
                emotion, pixels, usage = line.rstrip("\n").split(",")
                if usage == "Training":
                    images.append(np.array(pixels.split(), dtype=np.uint8).reshape(48, 48, 1))
                    labels.append(int(emotion))
        return np.stack(images), np.array(labels, np.int64), "FER2013 Training"
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(7), FER2013_TRAIN_COUNTS))
    images = rng.integers(0, 256, size=(len(labels), 48, 48, 1), dtype=np.uint8)
    return images, labels.astype(np.int64), "random pixels, FER2013 counts"


def write_split(data_dir: str, images: np.ndarray, labels: np.ndarray, num_shards: int) -> dict:
    for shard in range(num_shards):
        path = os.path.join(data_dir, schema.shard_name("train", shard, num_shards))
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard, len(labels), num_shards):
                writer.write(schema.make_example(images[i], int(labels[i]), str(i)).SerializeToString())
    counts = np.bincount(labels, minlength=7)
    info = schema.make_dataset_info(
        class_names=schema.FER2013_CLASSES,
        image_shape=[48, 48, 1],
        encoding="raw",
        splits={
            "train": {
                "num_examples": int(len(labels)),
                "num_shards": num_shards,
                "class_counts": dict(zip(schema.FER2013_CLASSES, map(int, counts), strict=True)),
            }
        },
        source={"format": "benchmark"},
        skipped={},
    )
    schema.write_dataset_info(data_dir, info)
    return info


def measure(next_batch, batch_size: int, seconds: float, warmup: int = 20) -> tuple[float, float]:
    """(wall images/s, process CPU microseconds per image) of calling next_batch() repeatedly.

    CPU time is the steadier number on a shared machine: it barely depends on
    how much of the CPUs other users take. TF's idle worker threads spin a
    little, so it overstates the pipeline's cost slightly.
    """
    for _ in range(warmup):
        next_batch()
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        next_batch()
        n += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n * batch_size / wall, 1e6 * cpu / (n * batch_size)


def per_image_map_dataset(images, labels, batch_size: int) -> tf.data.Dataset:
    """Same class sampling and ops, but augmenting one image per `map` call before `batch()`."""
    counts = np.bincount(labels, minlength=7)
    streams = [
        tf.data.Dataset.from_tensor_slices((images[labels == k], labels[labels == k]))
        .cache()
        .shuffle(int(counts[k]), seed=k)
        .repeat()
        for k in range(7)
    ]
    ds = sampling.sample_classes(streams, counts, "balanced", seed=0)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))

    def one(example, step):
        image, label = example
        image = data.preprocess_for_eval(image, 48, 1)
        image = augment.apply(
            image, tf.stack([tf.constant(0, tf.int64), step]), augment.DEFAULT_AUGMENTATIONS
        )
        return image, tf.one_hot(label, 7)

    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def opencv_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same recipe, one image at a time, with OpenCV and NumPy."""
    x = image[..., 0].astype(np.float32) / 255.0
    if rng.random() < 0.5:
        x = x[:, ::-1]
    angle, scale = rng.uniform(-15, 15), 1.0 + rng.uniform(-0.1, 0.1)
    m = cv2.getRotationMatrix2D((23.5, 23.5), angle, scale)
    m[0, 1] += rng.uniform(-0.1, 0.1)
    m[:, 2] += rng.uniform(-4.8, 4.8, size=2)
    x = cv2.warpAffine(x, m, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    factor, delta = 1.0 + rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)
    x = np.clip(x * factor + x.mean() * (1 - factor) + delta, 0.0, 1.0)
    if rng.random() < 0.5:
        area, ratio = rng.uniform(0.02, 0.33) * 48 * 48, math.exp(rng.uniform(-1.2, 1.2))
        h, w = min(48, int(round(math.sqrt(area * ratio)))), min(48, int(round(math.sqrt(area / ratio))))
        top, left = rng.integers(0, 48 - h + 1), rng.integers(0, 48 - w + 1)
        x[top : top + h, left : left + w] = rng.random((h, w), dtype=np.float32)
    return x[..., None]


def opencv_batches(images, labels, batch_size: int):
    """Returns next_batch() of the baseline: balanced sampling + OpenCV augmentation in Python."""
    rng = np.random.default_rng(0)
    by_class = [np.flatnonzero(labels == k) for k in range(7)]
    eye = np.eye(7, dtype=np.float32)

    def next_batch():
        classes = rng.integers(0, 7, size=batch_size)
        idx = [by_class[k][rng.integers(len(by_class[k]))] for k in classes]
        return np.stack([opencv_augment(images[i], rng) for i in idx]), eye[labels[idx]]

    return next_batch


def main(argv):
    del argv
    images, labels, source = load_images(F.fer2013)
    print(
        f"data: {len(labels)} images ({source}); batch {F.batch_size}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    bs, secs = F.batch_size, F.seconds
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        info = write_split(tmp, images, labels, F.num_shards)
        ds = data.make_train_dataset(tmp, info, batch_size=bs, sampling="balanced", seed=0)
        it = iter(ds)
        steps = data.steps_per_epoch(info, bs)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            next(it)
        results["make_train_dataset, first epoch (parse, fill caches)"] = (
            steps * bs / (time.perf_counter() - start),
            1e6 * (time.process_time() - cpu) / (steps * bs),
        )
        results["make_train_dataset, steady state"] = measure(lambda: next(it), bs, secs)
    per_image = iter(per_image_map_dataset(images, labels, bs))
    results["same ops, per-image map before batch()"] = measure(lambda: next(per_image), bs, secs)
    loop = measure(opencv_batches(images, labels, bs), bs, secs)
    results["NumPy/OpenCV per-image loop (baseline)"] = loop
    print(f"{'':55s} {'img/s':>9s} {'x loop':>7s} {'CPU us/img':>11s} {'x loop':>7s}")
    for name, (rate, cpu_us) in results.items():
        print(f"{name:55s} {rate:9,.0f} {rate / loop[0]:7.1f} {cpu_us:11.1f} {loop[1] / cpu_us:7.1f}")
    print(
        "img/s is wall clock (all CPUs, as a user sees it); CPU us/img is process CPU time per image "
        "(lower is better; its 'x loop' column is the CPU-efficiency ratio)."
    )


if __name__ == "__main__":
    app.run(main)
