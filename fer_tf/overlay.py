"""What the user sees: annotated frames, an FPS meter and the end-of-run summary.

OpenCV + NumPy only, so it runs on edge devices without TensorFlow.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

# BGR colours, one per class index; distinct enough side by side on a webcam frame.
PALETTE = (
    (60, 60, 230),  # red
    (60, 160, 60),  # green
    (180, 90, 180),  # purple
    (40, 200, 250),  # yellow
    (200, 130, 40),  # blue
    (40, 140, 255),  # orange
    (200, 200, 200),  # grey
    (150, 150, 40),  # teal
)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Returns a 3-channel BGR uint8 copy of a gray, BGR or BGRA image."""
    if image.ndim == 2 or image.shape[-1] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[-1] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def _text(img, text, org, scale, color, thickness, background=None):
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = org
    if background is not None:
        cv2.rectangle(img, (x, y - th - base), (x + tw + 2, y + base), background, -1)
    cv2.putText(img, text, (x + 1, y), FONT, scale, color, thickness, cv2.LINE_AA)
    return tw, th + base


def _draw_bars(img, probabilities, class_names, box, scale, thickness):
    """Draws one labelled bar per class beside the box: right, else below, else left of it."""
    h_img, w_img = img.shape[:2]
    name_w = max(cv2.getTextSize(n, FONT, scale, thickness)[0][0] for n in class_names)
    row_h = cv2.getTextSize("Ag", FONT, scale, thickness)[0][1] + max(4, int(8 * scale))
    bar_w = max(30, int(70 * scale / 0.45))
    panel_w, panel_h = name_w + bar_w + 8, row_h * len(class_names)
    x, y, w, h = box
    if x + w + 6 + panel_w <= w_img:
        px, py = x + w + 6, y
    elif y + h + 4 + panel_h <= h_img:  # below keeps clear of a neighbour on the left
        px, py = min(x, w_img - panel_w), y + h + 4
    else:
        px, py = x - panel_w - 6, y
    px, py = max(0, px), min(max(0, py), max(0, h_img - panel_h))
    panel = img[py : py + panel_h, px : px + panel_w]
    panel[:] = (panel * 0.55).astype(np.uint8)  # a translucent black panel keeps the scene visible
    for k, name in enumerate(class_names):
        p = float(probabilities.get(name, 0.0))
        top = py + k * row_h
        _text(img, name, (px + 2, top + row_h - 4), scale, (255, 255, 255), thickness)
        bx = px + name_w + 6
        cv2.rectangle(
            img, (bx, top + 3), (bx + int(bar_w * p), top + row_h - 3), PALETTE[k % len(PALETTE)], -1
        )


def draw_results(
    frame: np.ndarray,
    results: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    fps: float | None = None,
    max_faces_with_bars: int = 4,
) -> np.ndarray:
    """Draws boxes, labels, probability bars and FPS on a copy of the frame.

    Args:
      frame: gray, BGR or BGRA uint8 image.
      results: `Recognizer` results (box, smoothed_label or label, score,
        smoothed_probabilities or probabilities, track_id).
      class_names: class order, for the bars and colours.
      fps: frames per second to print in the corner, or None.
      max_faces_with_bars: with more faces than this only boxes and labels are
        drawn, since bars of a crowd would cover each other.

    Returns:
      The annotated BGR uint8 image, the size of `frame`.
    """
    img = to_bgr(frame)
    h, w = img.shape[:2]
    # Sized so text stays readable at 640x480 and does not swamp small frames.
    scale = max(0.3, 0.45 * min(h, w) / 480)
    thickness = max(1, int(round(scale * 2)))
    index = {name: k for k, name in enumerate(class_names)}
    for r in results:
        label = r.get("smoothed_label") or r["label"]
        probabilities = r.get("smoothed_probabilities") or r["probabilities"]
        color = PALETTE[index.get(label, 0) % len(PALETTE)]
        x, y, bw, bh = r["box"]
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, thickness + 1)
        tag = f"{label} {100 * probabilities.get(label, r['score']):.0f}%"
        if r.get("track_id") is not None:
            tag = f"#{r['track_id']} {tag}"
        tag_w = cv2.getTextSize(tag, FONT, scale, thickness)[0][0]
        tag_x = max(0, min(x, w - tag_w - 3))  # keep the label inside the frame
        _text(img, tag, (tag_x, max(y - 4, 12)), scale, (0, 0, 0), thickness, background=color)
        if len(results) <= max_faces_with_bars:
            _draw_bars(img, probabilities, class_names, r["box"], scale * 0.85, thickness)
    if fps is not None:
        _text(
            img,
            f"FPS {fps:.1f}",
            (6, 6 + int(22 * scale / 0.45)),
            scale,
            (255, 255, 255),
            thickness,
            (0, 0, 0),
        )
    return img


class FpsMeter:
    """Frames per second over a sliding window of recent frames."""

    def __init__(self, window: int = 30):
        self._times: collections.deque = collections.deque(maxlen=window)

    def tick(self, now: float | None = None) -> float:
        """Records one frame (at `now`, default the monotonic clock); returns the FPS."""
        self._times.append(time.perf_counter() if now is None else now)
        return self.fps

    @property
    def fps(self) -> float:
        """Current frame rate; 0 until two frames are seen."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


class SessionSummary:
    """Accumulates how long each emotion was shown over one source.

    Every detected face in a frame counts one observation of its smoothed
    label and adds the frame's duration to that label's time.

    Args:
      source: the source spec, for the report.
      class_names: class order.
    """

    def __init__(self, source: str, class_names: Sequence[str]):
        self.source = source
        self.class_names = list(class_names)
        self.frames = 0
        self.frames_with_faces = 0
        self.counts = collections.Counter()
        self.seconds = collections.Counter()

    def add(self, results: Sequence[Mapping[str, Any]], duration: float) -> None:
        """Adds one frame's results, shown for `duration` seconds."""
        self.frames += 1
        self.frames_with_faces += bool(results)
        for r in results:
            label = r.get("smoothed_label") or r["label"]
            self.counts[label] += 1
            self.seconds[label] += duration

    @property
    def dominant(self) -> str | None:
        """The most observed emotion, or None when no face was seen."""
        return self.counts.most_common(1)[0][0] if self.counts else None

    def report(self, fps: float, elapsed: float) -> str:
        """Returns the multi-line summary with shares, times and FPS."""
        total = sum(self.counts.values())
        lines = [
            f"source {self.source}: {self.frames} frames, {self.frames_with_faces} with faces, "
            f"{total} face observations"
        ]
        for name in sorted(self.class_names, key=lambda n: -self.counts[n]):
            if self.counts[name]:
                share = 100.0 * self.counts[name] / total
                lines.append(f"  {name:<10s} {share:5.1f}%  {self.seconds[name]:7.2f} s")
        lines.append(f"  dominant emotion: {self.dominant or 'none (no faces)'}")
        lines.append(f"  FPS: {fps:.1f} ({self.frames} frames in {elapsed:.2f} s, end to end)")
        return "\n".join(lines)
