"""A deterministic synthetic facial-expression dataset (FER2013-like, 48x48 grayscale).

Cartoon faces drawn with OpenCV (`data_tools.synthetic_faces`) whose shapes
encode the 7 FER2013 classes, written as a FER2013 CSV, image folders or a
video clip. It is the embedded data of `make demo` and of the test suite; it
is NOT a substitute for real data in any reported result.

    python -m data_tools.synthetic --output=data/synthetic/fer2013_synthetic.csv.gz \
        --num_train=3500 --num_val=700 --num_test=700 --seed=0
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python data_tools/synthetic.py`: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import launch  # noqa: E402
from data_tools.synthetic_faces import render_face, render_face_large  # noqa: E402
from fer_tf.schema import FER2013_CLASSES, SPLITS  # noqa: E402

NUM_CLASSES = len(FER2013_CLASSES)
# FER2013 Training counts in class order: the default class proportions.
FER2013_TRAIN_COUNTS = (3995, 436, 4097, 7215, 4830, 3171, 4965)
# Class order of `imbalance_factor` (rank 0 = largest class): FER2013 frequency order,
# as in data_tools/longtail.py, so disgust stays the rarest class.
IMBALANCE_RANK = (3, 6, 4, 2, 0, 5, 1)
CSV_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
DEFAULT_SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
IMAGE_FORMATS = ("png", "jpg", "jpeg", "bmp")


def class_counts_for(
    num_images: int,
    *,
    class_proportions: Sequence[float] | None = None,
    imbalance_factor: float | None = None,
) -> np.ndarray:
    """Returns how many images of each class a dataset of `num_images` holds.

    Args:
      num_images: total size.
      class_proportions: K non-negative weights in class order (need not sum to 1).
      imbalance_factor: IF >= 1; the class of rank i in `IMBALANCE_RANK` gets weight
        IF^(-i/(K-1)), so the largest class has IF times the images of the smallest.
        Neither given: FER2013 Training proportions.

    Returns:
      int64 [K] summing to `num_images`. Every class of positive weight gets at least
      one image when `num_images` allows, so tiny test sets hold every class.
    """
    if class_proportions is not None and imbalance_factor is not None:
        raise ValueError("give class_proportions or imbalance_factor, not both")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if imbalance_factor is not None:
        if imbalance_factor < 1:
            raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")
        rank_weights = float(imbalance_factor) ** (-np.arange(NUM_CLASSES) / (NUM_CLASSES - 1))
        weights = np.empty(NUM_CLASSES)
        weights[list(IMBALANCE_RANK)] = rank_weights
    else:
        weights = np.asarray(FER2013_TRAIN_COUNTS if class_proportions is None else class_proportions, float)
    if weights.shape != (NUM_CLASSES,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"class_proportions must be {NUM_CLASSES} non-negative weights, not all 0")
    counts = _apportion(num_images, weights)
    if num_images >= np.count_nonzero(weights):
        for k in np.flatnonzero((weights > 0) & (counts == 0)):  # tiny sets: take one from the largest
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return counts


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Splits `total` in proportion to `weights` (largest-remainder rounding)."""
    quota = total * weights / weights.sum()
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(-(quota - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def generate(
    num_images: int,
    *,
    seed: int | np.random.SeedSequence = 0,
    image_size: int = 48,
    class_proportions: Sequence[float] | None = None,
    imbalance_factor: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generates a shuffled synthetic dataset; the same arguments give the same arrays.

    Args:
      num_images: number of images N.
      seed: seed of the numpy Generator that draws the labels and the images.
      image_size: side S of the square images.
      class_proportions: see `class_counts_for`.
      imbalance_factor: see `class_counts_for`.

    Returns:
      (images uint8 [N, S, S], labels int64 [N]), labels in FER2013 class order.
    """
    counts = class_counts_for(
        num_images, class_proportions=class_proportions, imbalance_factor=imbalance_factor
    )
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), counts))
    images = np.empty((num_images, image_size, image_size), np.uint8)
    for i, label in enumerate(labels):
        images[i] = render_face(int(label), rng, image_size)
    return images, labels


def write_fer2013_csv(
    path: str, *, num_train: int, num_val: int, num_test: int = 0, seed: int = 0, **gen_kw
) -> dict[str, dict[str, int]]:
    """Writes a synthetic dataset in the FER2013 CSV format (`emotion,pixels,Usage`).

    Rows are Training, then PublicTest (val), then PrivateTest (test), as in
    `fer2013.csv`. Each split is generated from its own stream of `seed` and
    follows the class proportions by itself. A path ending in `.gz` is gzipped.
    The file appears atomically (temp name, then rename), and its bytes depend
    only on the arguments.

    Args:
      path: output `.csv` or `.csv.gz`; parent folders are created.
      num_train: Training rows.
      num_val: PublicTest rows.
      num_test: PrivateTest rows.
      seed: dataset seed.
      **gen_kw: passed to `generate` (image_size, class_proportions, imbalance_factor).

    Returns:
      {split: {class_name: count}} for each non-empty split of train, val, test.
    """
    digits = np.array([str(v) for v in range(256)], dtype=object)
    counts = {}
    with _atomic_output(path) as f:
        f.write(b"emotion,pixels,Usage\n")
        streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
        for split, num, stream in zip(SPLITS, (num_train, num_val, num_test), streams, strict=True):
            if num == 0:
                continue
            images, labels = generate(num, seed=stream, **gen_kw)
            pixels = (" ".join(digits[image.ravel()]) for image in images)
            rows = (f"{y},{x},{CSV_USAGE[split]}\n" for x, y in zip(pixels, labels, strict=True))
            f.write("".join(rows).encode("ascii"))
            counts[split] = _count_by_name(labels, FER2013_CLASSES)
    return counts


def write_image_folder(
    root: str,
    *,
    num_images: int,
    seed: int = 0,
    split_dirs: bool = True,
    image_format: str = "png",
    size: int | tuple[int, int] | None = None,
    channels: int = 1,
    split_fractions: Sequence[tuple[str, float]] = DEFAULT_SPLIT_FRACTIONS,
    class_names: Sequence[str] = FER2013_CLASSES,
    **gen_kw,
) -> dict:
    """Writes image files `root/<split>/<class>/<index>.<ext>`, or `root/<class>/...`.

    Args:
      root: output folder (created).
      num_images: total number of images over all splits.
      seed: dataset seed.
      split_dirs: one sub-folder per split of `split_fractions`; False writes class
        folders directly under `root`.
      image_format: one of `IMAGE_FORMATS`.
      size: written size, an int or (height, width); default: as generated.
      channels: 1 (grayscale) or 3 (BGR with a mild per-image skin tint).
      split_fractions: (split folder, fraction) pairs; fractions are normalised.
      class_names: the folder name of each class, in FER2013 order.
      **gen_kw: passed to `generate` (image_size, class_proportions, imbalance_factor).

    Returns:
      {split: {class folder: count}}, or {class folder: count} when `split_dirs` is False.
    """
    image_format = image_format.lower()
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if channels not in (1, 3) or len(class_names) != NUM_CLASSES:
        raise ValueError(f"channels must be 1 or 3 and class_names must hold {NUM_CLASSES} names")
    write_kw = {"image_format": image_format, "size": size, "channels": channels, "class_names": class_names}
    if not split_dirs:
        return _write_classes(root, num_images, np.random.SeedSequence(seed), gen_kw, **write_kw)
    names = [name for name, _ in split_fractions]
    sizes = _apportion(num_images, np.array([fraction for _, fraction in split_fractions], np.float64))
    streams = np.random.SeedSequence(seed).spawn(len(names))
    splits = zip(names, sizes, streams, strict=True)
    return {
        name: _write_classes(os.path.join(root, name), int(n), ss, gen_kw, **write_kw)
        for name, n, ss in splits
    }


def _write_classes(root, num_images, stream, gen_kw, *, image_format, size, channels, class_names):
    images, labels = generate(num_images, seed=stream, **gen_kw)
    tint_rng = np.random.default_rng(stream.spawn(1)[0])
    for name in class_names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if size is not None:
            height, width = (size, size) if np.isscalar(size) else size
            image = cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_AREA)
        if channels == 3:
            tint = tint_rng.uniform([0.85, 0.93, 1.0], [0.95, 1.0, 1.1])  # BGR: warm skin tones
            image = np.clip(image[..., None] * tint, 0, 255).astype(np.uint8)
        path = os.path.join(root, class_names[label], f"{index:05d}.{image_format}")
        if not cv2.imwrite(path, image):
            raise OSError(f"could not write {path}")
    return _count_by_name(labels, class_names)


def write_clip(
    path: str,
    *,
    seed: int = 0,
    frame_size: tuple[int, int] = (240, 320),
    fps: int = 10,
    seconds_per_face: float = 1.5,
) -> np.ndarray:
    """Writes a video of one large face per class in turn, drifting slowly, for the webcam path.

    Args:
      path: output video; `.mp4` (mp4v codec) or `.avi` (MJPG).
      seed: which faces are drawn.
      frame_size: (height, width) of the frames.
      fps: frames per second.
      seconds_per_face: how long each face (one per class, FER2013 order) is shown.

    Returns:
      int64 [num_frames]: the class of each frame.
    """
    height, width = frame_size
    codec = "MJPG" if path.lower().endswith(".avi") else "mp4v"
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{name}")  # keeps the extension, which picks the container
    video = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), fps, (width, height), isColor=True)
    if not video.isOpened():
        raise OSError(f"could not open a video writer for {path}")
    rng = np.random.default_rng(seed)
    per_face = max(1, round(fps * seconds_per_face))
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_face)
    try:
        for label in range(NUM_CLASSES):
            face = render_face_large(label, rng, size=height)
            pad = max(0, width - height)
            face = cv2.copyMakeBorder(face, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_REFLECT_101)
            for step in range(per_face):  # a slow drift, as a head in front of a camera
                drift = 0.04 * height * np.sin(2 * np.pi * (step / per_face + np.array([0.0, 0.25])))
                shift = np.float32([[1, 0, drift[0]], [0, 1, drift[1]]])
                frame = cv2.warpAffine(face, shift, (width, height), borderMode=cv2.BORDER_REFLECT_101)
                noisy = np.clip(frame + rng.normal(0.0, 3.0, frame.shape), 0, 255).astype(np.uint8)
                video.write(cv2.cvtColor(noisy, cv2.COLOR_GRAY2BGR))
    finally:
        video.release()
    os.replace(tmp, path)
    return labels


def _count_by_name(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    return dict(zip(class_names, np.bincount(labels, minlength=NUM_CLASSES).tolist(), strict=True))


@contextlib.contextmanager
def _atomic_output(path: str) -> Iterator[BinaryIO]:
    """A binary file written under a temporary name and renamed on success; gzip for `.gz`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            if path.endswith(".gz"):
                # mtime=0 and no stored name: the same dataset gives the same bytes. Level 3:
                # noisy pixels barely compress further, and level 9 takes 8x longer.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=3, mtime=0) as f:
                    yield f
            else:
                yield raw
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def define_flags() -> None:
    """Defines the CLI flags; called only when run as a script, so importing defines none."""
    from absl import flags

    flags.DEFINE_string(
        "output", "data/synthetic/fer2013_synthetic.csv.gz", "FER2013-format CSV (.gz: gzip)."
    )
    # Sized for a demo that trains in about 2-3 minutes on 2 CPU cores.
    flags.DEFINE_integer("num_train", 3500, "Training rows.")
    flags.DEFINE_integer("num_val", 700, "PublicTest (validation) rows.")
    flags.DEFINE_integer("num_test", 700, "PrivateTest (test) rows.")
    flags.DEFINE_integer("seed", 0, "Dataset seed: the same flags write the same bytes.")
    flags.DEFINE_float("imbalance_factor", None, "Head/tail class ratio (default: FER2013 proportions).")
    flags.DEFINE_string("clip", None, "Write a video clip of large faces (.mp4 or .avi) instead of the CSV.")


def run(
    output: str,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    imbalance_factor: float | None = None,
    clip: str | None = None,
) -> None:
    """What the CLI does, with plain arguments: writes the CSV (or the clip) and prints a summary.

    Bad arguments or an unwritable path end the process with a one-line error and exit code 2.
    """
    from fer_tf.cli import fail

    if min(num_train, num_val, num_test) < 0 or (imbalance_factor is not None and imbalance_factor < 1):
        fail("--num_train, --num_val and --num_test must be >= 0 and --imbalance_factor >= 1")
    start = time.perf_counter()
    try:
        if clip:
            labels = write_clip(clip, seed=seed)
            print(f"wrote {clip}: {len(labels)} frames in {time.perf_counter() - start:.1f} s")
            return
        counts = write_fer2013_csv(output, num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
                                   imbalance_factor=imbalance_factor)  # fmt: skip
    except OSError as e:
        fail(f"cannot write {clip or output}: {e.strerror or e}")
    for split, by_class in counts.items():
        print(f"{split}: {sum(by_class.values())} images", ", ".join(f"{k} {n}" for k, n in by_class.items()))
    print(f"wrote {output} in {time.perf_counter() - start:.1f} s (synthetic: not for reported results)")


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from fer_tf.cli import fail

    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    run(f.output, num_train=f.num_train, num_val=f.num_val, num_test=f.num_test, seed=f.seed,
        imbalance_factor=f.imbalance_factor, clip=f.clip)  # fmt: skip


if __name__ == "__main__":
    define_flags()
    launch.run(main)
