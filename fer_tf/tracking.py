"""Face tracks across frames and per-track temporal smoothing of predictions.

A webcam classifier flickers between neighbouring classes from one frame to
the next. Smoothing needs to know which face is which, so faces are first
associated to tracks by box overlap (greedy IoU), then each track keeps its
own smoother state. Pure NumPy: runs on edge devices without TensorFlow.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]
SMOOTHINGS = ("ema", "mode", "none")


def box_iou(a: Box, b: Box) -> float:
    """Returns the intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = min(ax1, bx1) - max(a[0], b[0])
    ih = min(ay1, by1) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceTracker:
    """Assigns stable integer ids to face boxes across frames.

    Association is greedy: the (track, box) pair with the highest IoU is
    matched first, then the next best among the rest, down to
    `iou_threshold`. Good enough for a handful of faces at webcam frame rates,
    where a face moves little between frames.

    Args:
      iou_threshold: minimum IoU for a box to continue a track.
      max_missed: a track unseen for more than this many frames is dropped.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10):
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self._boxes: dict[int, Box] = {}
        self._missed: dict[int, int] = {}
        self._next_id = 0

    @property
    def active_ids(self) -> list[int]:
        """Ids of the tracks still alive (seen or recently missed)."""
        return sorted(self._boxes)

    def reset(self) -> None:
        """Forgets every track; ids start again from 0 (a new stream starts)."""
        self._boxes.clear()
        self._missed.clear()
        self._next_id = 0

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """Matches this frame's boxes to tracks.

        Args:
          boxes: (x, y, w, h) boxes of the faces found in this frame.

        Returns:
          One track id per box, in the order of `boxes`; new faces get new ids.
        """
        track_ids = list(self._boxes)
        pairs = [(box_iou(self._boxes[t], box), t, i) for t in track_ids for i, box in enumerate(boxes)]
        pairs.sort(key=lambda p: -p[0])
        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for iou, t, i in pairs:
            if iou < self.iou_threshold:
                break
            if t in used_tracks or i in assigned:
                continue
            assigned[i] = t
            used_tracks.add(t)
        for t in track_ids:
            if t not in used_tracks:
                self._missed[t] += 1
                if self._missed[t] > self.max_missed:
                    del self._boxes[t], self._missed[t]
        ids = []
        for i, box in enumerate(boxes):
            t = assigned.get(i)
            if t is None:
                t, self._next_id = self._next_id, self._next_id + 1
            self._boxes[t] = tuple(int(v) for v in box)
            self._missed[t] = 0
            ids.append(t)
        return ids


class Smoother:
    """Per-track smoothing of class probabilities.

    Args:
      kind: "ema" (exponential moving average of the probabilities), "mode"
        (most frequent top-1 label over the last `window` frames, the seed
        webcam demo's behaviour) or "none".
      alpha: EMA weight of the newest frame, s = alpha * p + (1 - alpha) * s.
      window: number of frames the "mode" vote looks back over.
    """

    def __init__(self, kind: str = "none", alpha: float = 0.5, window: int = 10):
        if kind not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {kind!r}; expected one of {SMOOTHINGS}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ema alpha must be in (0, 1], got {alpha}")
        self.kind = kind
        self.alpha = alpha
        self.window = window
        self._ema: dict[int, np.ndarray] = {}
        self._history: dict[int, collections.deque] = {}

    def update(self, track_id: int, probabilities: np.ndarray) -> tuple[np.ndarray, int]:
        """Adds one frame's probabilities for a track.

        Args:
          track_id: the face's track id.
          probabilities: float [K] class probabilities of this frame.

        Returns:
          (smoothed probabilities [K], smoothed label index). For "mode" the
          probabilities are the mean over the window and the label is the vote.
        """
        p = np.asarray(probabilities, np.float32)
        if self.kind == "none":
            return p, int(np.argmax(p))
        if self.kind == "ema":
            prev = self._ema.get(track_id)
            s = p if prev is None else self.alpha * p + (1.0 - self.alpha) * prev
            self._ema[track_id] = s
            return s, int(np.argmax(s))
        history = self._history.setdefault(track_id, collections.deque(maxlen=self.window))
        history.append(p)
        return np.mean(history, axis=0), _vote([int(np.argmax(h)) for h in history])

    def prune(self, active_ids: Sequence[int]) -> None:
        """Drops the state of tracks that no longer exist."""
        keep = set(active_ids)
        for state in (self._ema, self._history):
            for t in [t for t in state if t not in keep]:
                del state[t]

    def reset(self) -> None:
        """Forgets every track's state."""
        self._ema.clear()
        self._history.clear()


def _vote(labels: Sequence[int]) -> int:
    """Most frequent label; a tie goes to the label seen most recently."""
    counts = collections.Counter(labels)
    best = max(counts.values())
    for label in reversed(labels):
        if counts[label] == best:
            return label
    raise ValueError("empty vote")
