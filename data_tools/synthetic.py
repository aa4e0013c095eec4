"""A deterministic synthetic facial-expression dataset (FER2013-like, 48x48 grayscale).

Cartoon faces drawn with OpenCV: an oval with eyes, brows, nose and mouth whose
shapes encode the 7 FER2013 classes, under random pose, scale, lighting, blur,
noise and background. Expression intensity varies per image, so weak expressions
drift towards neutral, and fear/surprise and angry/disgust stay partly confusable,
as in real data. It is the embedded data of `make demo` and of the test suite; it
is NOT a substitute for real data in any reported result.

    python -m data_tools.synthetic --output=data/synthetic/fer2013_synthetic.csv.gz \
        --num_train=3500 --num_val=700 --num_test=700 --seed=0
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import BinaryIO, NamedTuple

import cv2
import numpy as np

if __package__ in (None, ""):  # run as `python data_tools/synthetic.py`: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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

# Expression parameters, one row per class at full intensity. Brow tilt > 0 raises the
# inner ends (sad, fear), < 0 pulls them down to the centre (angry); curve > 0 turns the
# mouth corners up; lip raise lifts one side of the upper lip (disgust); press thickens
# a closed mouth; wrinkle is the nose; folds are the nose-to-mouth lines.
_PARAMS = ("brow_raise", "brow_tilt", "brow_arch", "eye_open", "mouth_curve", "mouth_open", "mouth_width",
           "mouth_round", "lip_raise", "lip_press", "wrinkle", "folds")  # fmt: skip
# Columns: brow raise, tilt and arch; eye opening; mouth curve, opening, width and roundness;
# upper-lip lift; lip press; nose wrinkle; nasolabial folds.
# fmt: off
_EXPRESSIONS = {
    #            raise  tilt   arch   eye    curve  open   width  round  lift   press  nose   folds
    "angry":    (-0.6,  -1.0,  0.0,   0.7,   -0.2,  0.0,   0.75,  0.0,   0.0,   1.0,   0.0,   0.0),
    "disgust":  (-0.4,  -0.4,  0.2,   0.65,  -0.35, 0.15,  1.0,   0.0,   1.0,   0.0,   1.0,   1.0),
    "fear":     (0.6,   0.6,   0.0,   1.6,   -0.3,  0.45,  1.3,   0.0,   0.0,   0.0,   0.0,   0.0),
    "happy":    (0.0,   0.0,   0.2,   0.8,   1.0,   0.5,   1.25,  0.0,   0.0,   0.0,   0.0,   0.6),
    "sad":      (0.15,  0.8,   0.2,   0.85,  -0.8,  0.0,   0.9,   0.0,   0.0,   0.0,   0.0,   0.0),
    "surprise": (1.0,   0.0,   1.0,   1.7,   0.0,   1.0,   0.6,   1.0,   0.0,   0.0,   0.0,   0.0),
    "neutral":  (0.0,   0.0,   0.2,   1.0,   0.0,   0.0,   1.0,   0.0,   0.0,   0.0,   0.0,   0.0),
}
# Person-to-person spread (std) of each parameter, whatever the expression.
_JITTER =       (0.15,  0.15,  0.15,  0.12,  0.12,  0.0,   0.08,  0.0,   0.0,   0.0,   0.0,   0.0)
# fmt: on
_SHIFT = 4  # fixed-point bits of OpenCV drawing: sub-pixel feature positions
_BROW_T = np.linspace(0.0, 1.0, 7)  # along a brow: 0 inner end, 1 outer end
_MOUTH_T = np.linspace(-1.0, 1.0, 15)  # across the mouth, corner to corner


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


def render_face(label: int, rng: np.random.Generator, image_size: int = 48) -> np.ndarray:
    """Draws one face crop of class `label`, filling the frame like FER2013; uint8 [S, S]."""
    return _render(label, rng, image_size, zoom=1.0)


def render_face_large(label: int, rng: np.random.Generator, size: int = 160) -> np.ndarray:
    """Draws one face at about half the frame, background around it; uint8 [size, size].

    Meant for test clips of the webcam path, so blur, noise and contrast loss are milder
    than in the crops. OpenCV's detectors, trained on photographs, do find these
    cartoon faces: YuNet (score 0.6) found 140/140 at size 240, Haar 129/140.
    """
    return _render(label, rng, size, zoom=0.55, degrade=0.4)


def _render(label: int, rng: np.random.Generator, size: int, zoom: float, degrade: float = 1.0) -> np.ndarray:
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
    canvas_size = 2 * size  # draw at 2x, then average down: cheap anti-aliasing
    canvas = _background(rng, canvas_size)
    # Pose and scale go into the drawing itself, so no warp ever shows a canvas border.
    scale = zoom * canvas_size * rng.uniform(0.9, 1.1)
    cx, cy = canvas_size * (np.array([0.5, 0.53]) + zoom * rng.uniform(-0.07, 0.07, 2))
    aspect = rng.uniform(0.75, 0.9)
    face = _Face(cx, cy, scale * 0.5 * aspect, scale * 0.5, np.deg2rad(rng.uniform(-15, 15)))
    _draw_face(canvas, face, _expression(label, rng), rng, unit=scale / 96.0)
    if rng.random() < 0.5:
        canvas = cv2.flip(canvas, 1)
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    image = cv2.GaussianBlur(image, (0, 0), size / 48.0 * rng.uniform(0.2, 0.2 + 0.6 * degrade))
    return _photometric(image.astype(np.float32), rng, degrade)


def _expression(label: int, rng: np.random.Generator) -> dict[str, float]:
    """Blends neutral and the full expression by a random intensity, plus per-person spread."""
    neutral = np.array(_EXPRESSIONS["neutral"])
    target = np.array(_EXPRESSIONS[FER2013_CLASSES[label]])
    values = neutral + rng.uniform(0.55, 1.0) * (target - neutral) + rng.normal(0.0, _JITTER)
    params = dict(zip(_PARAMS, values.tolist(), strict=True))
    if FER2013_CLASSES[label] == "happy":
        params["mouth_open"] *= rng.uniform(0.0, 1.6)  # closed smiles and open laughs
    params["eye_open"] = max(params["eye_open"], 0.3)
    params["lip_side"] = 1.0 if rng.random() < 0.5 else -1.0
    return params


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random grey level with low-frequency texture and a few flat blobs."""
    grid = rng.normal(rng.uniform(20, 235), rng.uniform(5, 50), (4, 4)).astype(np.float32)
    canvas = np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 4)):
        x, y, radius = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 10, size // 3))]
        cv2.circle(canvas, (x, y), radius, rng.uniform(0, 255), -1)
    return canvas


class _Face(NamedTuple):
    """Where a face is drawn; face-local x, y run over [-1, 1] across the oval."""

    cx: float  # centre, canvas pixels
    cy: float
    ax: float  # half-width and half-height of the oval, canvas pixels
    ay: float
    angle: float  # in-plane rotation, radians

    def to_canvas(self) -> np.ndarray:
        """The 3x2 affine map [x, y, 1] @ M from face-local to fixed-point canvas coordinates."""
        cos, sin = math.cos(self.angle) * (1 << _SHIFT), math.sin(self.angle) * (1 << _SHIFT)
        return np.array([[cos * self.ax, sin * self.ax], [-sin * self.ay, cos * self.ay],
                         [self.cx * (1 << _SHIFT) + 0.5, self.cy * (1 << _SHIFT) + 0.5]])  # fmt: skip


def _points(xs, ys, affine: np.ndarray) -> np.ndarray:
    """Maps face-local coordinates (equal-length sequences) to canvas points [n, 1, 2] for OpenCV."""
    xy = np.array((xs, ys), np.float64).T
    return (xy @ affine[:2] + affine[2]).astype(np.int32).reshape(-1, 1, 2)


def _ellipse(canvas, face: _Face, x, y, rx, ry, color, thickness=-1, start=0, end=360) -> None:
    f = 1 << _SHIFT
    cos, sin = math.cos(face.angle), math.sin(face.angle)
    center = (int((face.cx + cos * x * face.ax - sin * y * face.ay) * f + 0.5),
              int((face.cy + sin * x * face.ax + cos * y * face.ay) * f + 0.5))  # fmt: skip
    axes, angle = (int(rx * face.ax * f), int(ry * face.ay * f)), math.degrees(face.angle)
    cv2.ellipse(canvas, center, axes, angle, start, end, color, thickness, cv2.LINE_AA, _SHIFT)


def _line(canvas, face: _Face, xs, ys, color, thickness, closed=False) -> None:
    pts = [_points(xs, ys, face.to_canvas())]
    cv2.polylines(canvas, pts, closed, color, max(1, round(thickness)), cv2.LINE_AA, _SHIFT)


def _fill(canvas, face: _Face, xs, ys, color) -> None:
    cv2.fillPoly(canvas, [_points(xs, ys, face.to_canvas())], color, cv2.LINE_AA, _SHIFT)


def _draw_face(canvas: np.ndarray, face: _Face, p: dict, rng: np.random.Generator, unit: float) -> None:
    skin = rng.uniform(70, 225)
    hair = rng.uniform(5, 0.6 * skin)
    ink = skin * rng.uniform(0.15, 0.4)
    if rng.random() < 0.8:  # hair behind the head
        _ellipse(canvas, face, 0.0, -0.12, 1.12, 1.0, hair)
    for side in (-1, 1):  # ears
        _ellipse(canvas, face, side * 0.97, 0.0, 0.14, 0.18, skin * 0.9)
    _ellipse(canvas, face, 0.0, 0.0, 1.0, 1.0, skin)
    # Eyes: sclera, an iris no taller than the opening, the upper lid line.
    ratio = face.ax / face.ay
    eye_w, eye_h = 0.2, 0.2 * ratio * 0.45 * p["eye_open"]
    sclera, iris = min(255.0, skin + rng.uniform(25, 70)), rng.uniform(5, 70)
    for side in (-1, 1):
        _ellipse(canvas, face, side * 0.4, -0.14, eye_w, eye_h, sclera)
        iris_r = min(eye_h, 0.42 * eye_w * ratio)
        _ellipse(canvas, face, side * 0.4, -0.14, iris_r / ratio, iris_r, iris)
        _ellipse(canvas, face, side * 0.4, -0.14, eye_w, eye_h, ink, round(1.6 * unit), 180, 360)
    _draw_brows(canvas, p, face, min(hair, ink), unit)
    _draw_nose(canvas, p, face, skin, unit)
    _draw_mouth(canvas, p, face, skin, ink, unit)


def _draw_brows(canvas: np.ndarray, p: dict, face: _Face, color: float, unit: float) -> None:
    t = _BROW_T
    base = -0.34 - 0.12 * p["brow_raise"]
    ys = base - p["brow_tilt"] * (0.11 * (1 - t) - 0.03 * t) - 0.07 * p["brow_arch"] * np.sin(np.pi * t)
    ys = np.minimum(ys, -0.21)  # never below the upper lid
    for side in (-1, 1):
        _line(canvas, face, side * (0.12 + 0.56 * t), ys, color, 3.6 * unit)


def _draw_nose(canvas: np.ndarray, p: dict, face: _Face, skin: float, unit: float) -> None:
    shade = skin * 0.65
    _line(canvas, face, [0.03, 0.06, 0.0], [-0.02, 0.18, 0.26], skin * 0.8, 1.2 * unit)
    nostril_x, nostril_y = np.array([0.05, 0.11 + 0.055 * p["wrinkle"]]), [0.27, 0.25 - 0.03 * p["wrinkle"]]
    fold = skin - (skin - shade) * min(p["folds"], 1.0)
    for side in (-1, 1):  # nostrils, flared and lifted in disgust
        _line(canvas, face, side * nostril_x, nostril_y, shade * 0.7, 1.8 * unit)
        if p["folds"] > 0.2:  # nasolabial folds: smile and disgust lines
            _line(canvas, face, side * np.array([0.17, 0.28, 0.36]), [0.26, 0.4, 0.56], fold, 1.2 * unit)
    if p["wrinkle"] > 0.3:  # wrinkled nose bridge
        for y in (-0.06, 0.02, 0.1):
            _line(canvas, face, [-0.08, 0.0, 0.08], [y, y - 0.02, y], shade, 1.2 * unit)


def _draw_mouth(canvas: np.ndarray, p: dict, face: _Face, skin: float, ink: float, unit: float) -> None:
    t = _MOUTH_T
    xs = 0.4 * max(p["mouth_width"], 0.3) * t
    mid = 0.52 - 0.16 * p["mouth_curve"] * t**2 + 0.08 * p["mouth_curve"]
    mid = mid - 0.1 * p["lip_raise"] * np.clip(p["lip_side"] * t, 0, None)
    height = 0.22 * max(p["mouth_open"], 0.0)
    lips = skin * 0.55
    if height <= 0.015:  # closed: one line, thick and dark when pressed (angry)
        press = min(max(p["lip_press"], 0.0), 1.0)
        _line(canvas, face, xs, mid, lips + (ink - lips) * press, (3.2 + 2.5 * press) * unit)
        return
    # Open: round in surprise, stretched and flat in fear and laughter.
    envelope = (1 - t**2) ** (0.25 + 0.3 * p["mouth_round"])
    upper, lower = mid - 0.35 * height * envelope, mid + height * envelope
    ring_x, ring_y = np.concatenate([xs, xs[::-1]]), np.concatenate([upper, lower[::-1]])
    _fill(canvas, face, ring_x, ring_y, ink * 0.5)
    if p["mouth_round"] < 0.5 and p["mouth_curve"] > 0.3:  # teeth in an open smile
        teeth_y = np.concatenate([upper, (upper + 0.35 * (lower - upper))[::-1]])
        _fill(canvas, face, ring_x, teeth_y, skin + 40)
    _line(canvas, face, ring_x, ring_y, lips, 1.5 * unit, closed=True)


def _photometric(image: np.ndarray, rng: np.random.Generator, degrade: float) -> np.ndarray:
    """Lighting gradient, contrast, brightness and sensor noise; float32 in, uint8 out."""
    grid = np.linspace(-1.0, 1.0, image.shape[0], dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]
    image = image * (1.0 + rng.uniform(0.0, 0.45) * ramp)
    mean = image.mean()
    image = (image - mean) * rng.uniform(1.0 - 0.4 * degrade, 1.3) + mean + rng.uniform(-25, 25)
    image += rng.normal(0.0, rng.uniform(2.0, 2.0 + 7.0 * degrade), image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


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
    from absl import app

    define_flags()
    app.run(main)
