"""Live inference: detect faces, align, classify, track, smooth (DESIGN.md contract 6).

Runs with OpenCV + NumPy + LiteRT only, so edge devices need no TensorFlow:
TensorFlow is imported lazily, and only to run a SavedModel (or as the last
TFLite interpreter fallback). Images are NumPy arrays in OpenCV's channel
order: gray [H,W] or [H,W,1], BGR [H,W,3], BGRA [H,W,4], uint8.

    rec = Recognizer("export/")              # or "model_int8.tflite", or None
    for r in rec.predict(cv2.imread("x.jpg")):
        print(r["box"], r["label"], r["score"])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Re-exported so that `fer_tf.inference` is the one import for live inference.
from fer_tf.classifiers import (  # noqa: F401
    SavedModelClassifier,
    TFLiteClassifier,
    default_model_path,
    load_classifier,
    read_class_names,
    tflite_interpreter,
)
from fer_tf.overlay import FpsMeter, draw_results
from fer_tf.sources import FrameSource, SourceError, open_source  # noqa: F401
from fer_tf.tracking import FaceTracker, Smoother

ASSETS = Path(__file__).resolve().parent / "assets"
YUNET_PATH = ASSETS / "face_detection_yunet.onnx"


@dataclasses.dataclass
class Face:
    """One detected face.

    Attributes:
      box: (x, y, w, h) in pixels of the full frame, clipped to it.
      score: detector confidence (1.0 for Haar, which has none).
      landmarks: float [5, 2] (x, y) of right eye, left eye, nose tip, right
        and left mouth corner (the subject's right/left, YuNet order), or None.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = None


def _to_bgr_view(image: np.ndarray) -> np.ndarray:
    """BGR uint8 without copying when the image is already BGR."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 gray/BGR/BGRA image, got {image.dtype} {image.shape}")
    if image.ndim == 2 or image.shape[-1] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[-1] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {image.shape}")
    return image


class FaceDetector:
    """Finds faces with YuNet (vendored ONNX) or OpenCV's Haar cascade.

    Args:
      kind: "yunet" (boxes + 5 landmarks, robust) or "haar" (no landmarks).
      score_threshold: minimum YuNet confidence.
      max_side: frames whose longer side exceeds this are downscaled before
        detection, for speed; boxes are scaled back to the full frame.
      nms_threshold: YuNet non-maximum-suppression IoU.
      model_path: YuNet ONNX file, default the vendored one.
    """

    def __init__(
        self,
        kind: str = "yunet",
        score_threshold: float = 0.6,
        max_side: int = 320,
        nms_threshold: float = 0.3,
        model_path: str | os.PathLike | None = None,
    ):
        self.kind = kind
        self.max_side = max_side
        self._size = (0, 0)
        if kind == "yunet":
            path = str(model_path or YUNET_PATH)
            self._net = cv2.FaceDetectorYN.create(path, "", (320, 320), score_threshold, nms_threshold)
        elif kind == "haar":
            xml = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
            self._net = cv2.CascadeClassifier(xml)
            if self._net.empty():
                raise RuntimeError(f"cannot load the Haar cascade {xml}")
        else:
            raise ValueError(f"unknown detector {kind!r}; expected 'yunet' or 'haar'")

    def detect(self, image: np.ndarray) -> list[Face]:
        """Returns the faces in a gray, BGR or BGRA uint8 image, left to right."""
        bgr = _to_bgr_view(image)
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = bgr
        if scale < 1.0:
            small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(bgr, small_size, interpolation=cv2.INTER_AREA)
        raw = self._detect_yunet(small) if self.kind == "yunet" else self._detect_haar(small)
        faces = []
        for x, y, bw, bh, score, landmarks in raw:
            x0, y0 = max(0, round(x / scale)), max(0, round(y / scale))
            x1, y1 = min(w, round((x + bw) / scale)), min(h, round((y + bh) / scale))
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            lm = None if landmarks is None else (landmarks / scale).astype(np.float32)
            faces.append(Face((x0, y0, x1 - x0, y1 - y0), float(score), lm))
        return sorted(faces, key=lambda f: f.box[0])

    def _detect_yunet(self, bgr):
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, out = self._net.detect(bgr)
        if out is None:
            return []
        # Frames smaller than the network's stride yield rows of inf/nan.
        out = out[np.isfinite(out).all(axis=1)]
        return [(r[0], r[1], r[2], r[3], r[14], r[4:14].reshape(5, 2)) for r in out]

    def _detect_haar(self, bgr):
        # No equalizeHist: on frames with large flat backgrounds it cost detections here.
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        min_side = max(12, min(gray.shape) // 20)
        boxes = self._net.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
        )
        return [(x, y, w, h, 1.0, None) for x, y, w, h in np.reshape(boxes, (-1, 4))]


def align_face(
    image: np.ndarray, face: Face, output_size: int = 48, margin: float = 0.2, channels: int = 1
) -> np.ndarray:
    """Crops one face upright and square, ready for the classifier.

    The image is rotated about the box centre so the eye line is horizontal
    (when landmarks exist), then a square of side `max(w, h) * (1 + margin)`
    centred on the box is cut out (beyond the frame, edge pixels repeat).
    YuNet's box is about as tall as a FER2013 crop. Colour conversion and the
    resize to S follow `fer_tf.data.preprocess_for_eval` (tf.image gray
    weights, antialiased bilinear), so the classifier sees what it was
    evaluated on, to within uint8 rounding.

    Args:
      image: gray, BGR or BGRA uint8 image.
      face: the detection, in `image` coordinates.
      output_size: side S of the output.
      margin: extra context as a fraction of the box's longer side.
      channels: 1 (gray) or 3 (RGB).

    Returns:
      uint8 [S, S, channels].
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    src = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    if src.ndim == 3 and src.shape[-1] == 4:
        src = src[..., :3]
    x, y, w, h = face.box
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(1, int(round(max(w, h) * (1.0 + margin))))
    angle = 0.0
    if face.landmarks is not None:
        (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]
        angle = float(np.degrees(np.arctan2(ly - ry, lx - rx)))
    # Rotate and crop at native resolution; the one resampling to S is below.
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    # A whole-pixel shift when there is no rotation, so the crop is an exact copy.
    m[:, 2] += np.round(side / 2.0 - np.array([cx, cy])) if angle == 0.0 else side / 2.0 - np.array([cx, cy])
    crop = cv2.warpAffine(src, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop = crop.astype(np.float32)
    if crop.ndim == 2:
        planes = [crop]
    elif channels == 1:  # tf.image.rgb_to_grayscale weights, in BGR order
        planes = [cv2.transform(crop, np.array([[0.1140, 0.5870, 0.2989]], np.float32))]
    else:
        planes = cv2.split(crop)[::-1]  # BGR -> RGB, the order preprocess_for_eval expects
    r = _resize_weights(side, output_size)
    out = np.stack([_resize_rows(_resize_rows(plane, r).T, r).T for plane in planes], axis=-1)
    if out.shape[-1] != channels:
        out = np.repeat(out, channels, axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of tf.image.resize(bilinear, antialias=True) along one axis.

    A triangle kernel on half-pixel centres, widened by the downscale factor
    (that is the antialiasing) and renormalised where it falls off the edge.
    """
    inv_scale = n_in / n_out
    width = max(inv_scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * inv_scale
    taps = np.arange(n_in) + 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - centres[:, None]) / width)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _resize_rows(x: np.ndarray, weights: np.ndarray, block: int = 4) -> np.ndarray:
    """`weights @ x` for a banded weights matrix, a few output rows at a time.

    Each product stays below OpenBLAS's threading threshold: a threaded gemm
    per face contended with OpenCV's threads and ran 20x slower in the live loop.
    """
    out = np.empty((weights.shape[0], x.shape[1]), np.float32)
    for lo in range(0, weights.shape[0], block):
        rows = weights[lo : lo + block]
        nonzero = np.flatnonzero(rows.any(axis=0))
        first, last = nonzero[0], nonzero[-1] + 1
        out[lo : lo + block] = rows[:, first:last] @ x[first:last]
    return out


class Recognizer:
    """Faces in, emotions out: detect, align, classify and (for streams) track + smooth.

    Args:
      model: export dir, `.tflite` file, None (the shipped release model), or
        any object with `predict_faces`, `class_names`, `input_size`, `channels`.
      detector: "yunet", "haar" or a `FaceDetector`.
      smoothing: "ema", "mode" or "none" (used by `process_frame`).
      num_threads: TFLite interpreter threads.
      backend: which file of an export dir runs: "auto" (its faster TFLite file on
        this CPU), "int8", "float32" or "saved_model"; see `load_classifier`.
      margin: face crop margin, see `align_face`.
      ema_alpha, mode_window: smoothing parameters, see `tracking.Smoother`.
      max_missed: frames a track survives unseen.
      **detector_kw: `FaceDetector` arguments (score_threshold, max_side, ...).
    """

    def __init__(
        self,
        model=None,
        detector="yunet",
        smoothing: str = "none",
        *,
        num_threads: int = 1,
        margin: float = 0.2,
        ema_alpha: float = 0.5,
        mode_window: int = 10,
        max_missed: int = 10,
        backend: str = "auto",
        **detector_kw,
    ):
        self.classifier = (
            model if hasattr(model, "predict_faces") else load_classifier(model, num_threads, backend)
        )
        self.detector = (
            detector if isinstance(detector, FaceDetector) else FaceDetector(detector, **detector_kw)
        )
        self.margin = margin
        self.tracker = FaceTracker(max_missed=max_missed)
        self.smoother = Smoother(smoothing, alpha=ema_alpha, window=mode_window)
        self.fps_meter = FpsMeter()

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.class_names)

    def predict(self, image: np.ndarray, rgb: bool = False) -> list[dict[str, Any]]:
        """Recognizes the faces of one image, with no tracking or smoothing.

        Args:
          image: uint8 gray [H,W] / [H,W,1], BGR [H,W,3] or BGRA [H,W,4].
          rgb: set when a 3/4-channel image is in RGB(A) order (e.g. from PIL).

        Returns:
          One dict per face, left to right: box (x, y, w, h), probabilities
          {name: p}, label, score (p of label), track_id (None here),
          smoothed_label / smoothed_probabilities (equal to the raw ones),
          detection_score.
        """
        if rgb and image.ndim == 3 and image.shape[-1] in (3, 4):
            image = image[..., [2, 1, 0] + ([3] if image.shape[-1] == 4 else [])]
        return self._infer(np.ascontiguousarray(image), track=False)

    def process_frame(self, frame: np.ndarray) -> tuple[list[dict[str, Any]], np.ndarray]:
        """One step of a stream: recognizes, tracks, smooths and draws.

        Returns:
          (results as in `predict` with track ids and smoothed labels, the
          annotated BGR frame with an FPS counter).
        """
        results = self._infer(frame, track=True)
        fps = self.fps_meter.tick()
        return results, draw_results(frame, results, self.class_names, fps=fps)

    def reset(self) -> None:
        """Forgets tracks and smoothing state (a new stream, or unrelated still images)."""
        self.tracker.reset()
        self.smoother.reset()

    def _infer(self, image: np.ndarray, track: bool) -> list[dict[str, Any]]:
        faces = self.detector.detect(image)
        clf = self.classifier
        crops = [align_face(image, f, clf.input_size, self.margin, clf.channels) for f in faces]
        probs = clf.predict_faces(crops) if crops else np.zeros((0, len(self.class_names)), np.float32)
        ids = self.tracker.update([f.box for f in faces]) if track else [None] * len(faces)
        names = self.class_names
        results = []
        for face, p, track_id in zip(faces, probs, ids, strict=True):
            smoothed, k_smooth = self.smoother.update(track_id, p) if track else (p, int(np.argmax(p)))
            k = int(np.argmax(p))
            results.append(
                {
                    "box": tuple(int(v) for v in face.box),
                    "probabilities": {n: float(v) for n, v in zip(names, p, strict=True)},
                    "label": names[k],
                    "score": float(p[k]),
                    "track_id": track_id,
                    "smoothed_label": names[k_smooth],
                    "smoothed_probabilities": {n: float(v) for n, v in zip(names, smoothed, strict=True)},
                    "detection_score": face.score,
                }
            )
        if track:
            self.smoother.prune(self.tracker.active_ids)
        return results
