"""The cartoon-face renderer behind the synthetic dataset (`data_tools.synthetic`).

Faces are drawn with OpenCV: an oval with eyes, brows, nose and mouth whose
shapes encode the 7 FER2013 classes, under random pose, scale, lighting, blur,
noise and background. Expression intensity varies per image, so weak
expressions drift towards neutral, and fear/surprise and angry/disgust stay
partly confusable, as in real data. Every draw comes from the numpy Generator
passed in, so the same generator state gives the same face.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from fer_tf.schema import FER2013_CLASSES

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
    if not 0 <= label < len(FER2013_CLASSES):
        raise ValueError(f"label must be in [0, {len(FER2013_CLASSES)}), got {label}")
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
