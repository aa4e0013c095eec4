"""Frame sources for live inference: a camera, a video, an image or a folder of images.

OpenCV + NumPy only. Every way a source can fail to open becomes one
`SourceError` with a one-line message, so CLIs can print it and exit 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


class SourceError(Exception):
    """A source that cannot be opened (missing camera, bad path, no images)."""


@contextlib.contextmanager
def _quiet_stderr():
    """Silences OpenCV's and FFmpeg's C-level warnings while probing a source.

    A missing camera or a non-video file makes them print several lines on
    stderr; our own one-line SourceError says the same thing.
    """
    level = cv2.getLogLevel()
    cv2.setLogLevel(0)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        cv2.setLogLevel(level)


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """Reads an image file as BGR uint8, or None when it cannot be decoded."""
    with _quiet_stderr():
        # np.fromfile + imdecode also handles non-ASCII paths, unlike imread on Windows.
        data = np.fromfile(str(path), np.uint8)
        return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


class FrameSource:
    """An iterable of BGR uint8 frames with a little metadata.

    Attributes:
      spec: the string the source was opened from.
      kind: "camera", "video", "image" or "folder".
      fps: nominal frame rate of a video or camera, else None.
      frame_name: name of the frame last yielded (the file for images and
        folders, the spec otherwise).
      skipped: files of a folder that could not be decoded.
    """

    def __init__(
        self,
        spec: str,
        kind: str,
        frames: Callable[[], Iterator[np.ndarray]],
        fps: float | None = None,
        close: Callable[[], None] | None = None,
    ):
        self.spec, self.kind, self.fps = spec, kind, fps
        self.frame_name = spec
        self.skipped = 0
        self._frames, self._close = frames, close

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._frames()

    def close(self) -> None:
        """Releases the camera or video file."""
        if self._close is not None:
            self._close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _capture_source(spec: str, target, kind: str) -> FrameSource:
    with _quiet_stderr():
        cap = cv2.VideoCapture(target)
        ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        what = f"camera {target}" if kind == "camera" else f"video {spec}"
        raise SourceError(f"cannot open {what} (no frame could be read)")
    fps = cap.get(cv2.CAP_PROP_FPS)

    def frames():
        frame = first
        while frame is not None:
            yield frame
            ok, frame = cap.read()
            if not ok:
                break

    return FrameSource(spec, kind, frames, fps=fps if fps and fps > 0 else None, close=cap.release)


def _folder_source(spec: str, folder: Path) -> FrameSource:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {spec}")
    source = None

    def frames():
        for path in files:
            image = read_image(path)
            if image is None:
                source.skipped += 1
                continue
            source.frame_name = str(path)
            yield image

    source = FrameSource(spec, "folder", frames)
    return source


def open_source(spec: str | int) -> FrameSource:
    """Opens a camera index ("0"), a video file, an image file or a folder of images.

    Args:
      spec: camera index (int or digits) or a path. An existing path wins over
        a camera index of the same name.

    Returns:
      A `FrameSource`; iterate it for BGR uint8 frames (folders: sorted by
      name, undecodable files skipped and counted).

    Raises:
      SourceError: the camera or file cannot be opened, or a folder has no images.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        return _folder_source(spec, path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            image = read_image(path)
            if image is None:
                raise SourceError(f"cannot decode image {spec}")
            return FrameSource(spec, "image", lambda: iter([image]))
        return _capture_source(spec, spec, "video")
    if spec.isdigit():
        return _capture_source(spec, int(spec), "camera")
    raise SourceError(f"no such camera, file or folder: {spec}")
