"""Image decoding for the converters: one image file -> the stored uint8 [S, S, C] image.

`ImageDecoder` is the `Source.decode` of image folders (`data_tools.folders`) and
of the dataset layouts (`data_tools.layouts`); it runs in the Beam workers.

Images: anything `cv2.imdecode` reads (8/16 bit, gray, colour, alpha dropped,
EXIF orientation applied), read with `np.fromfile` so non-ASCII paths work,
stored gray (channels=1) or RGB (3), resized to a square with INTER_AREA when
shrinking (no crop: aspect ratio is not kept, as in `preprocess_for_eval`).
Bad files raise `Skip`: `missing_file`, `empty_file`, `truncated_image`,
`unreadable_image`, `bad_box`, `no_face`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from data_tools.writer import Record, Skip
from fer_tf import inference


class ImageItem(NamedTuple):
    """One `Source.items` element: all a worker needs to decode one image."""

    split: str
    image_id: str
    label: int
    paths: tuple[str, ...]
    box: tuple[int, int, int, int] | None = None


@functools.cache
def _face_detector(kind: str = "yunet") -> Any:
    # One detector per worker process, built on first use: decode runs in Beam
    # workers and only --align needs the ONNX model.
    return inference.FaceDetector(kind)


def read_image(path: str) -> np.ndarray:
    """Reads any image OpenCV decodes (8/16 bit, gray, colour, alpha) as uint8 BGR [H, W, 3].

    Raises:
      Skip: missing_file, empty_file, truncated_image or unreadable_image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it fails on non-ASCII paths
    except FileNotFoundError:
        raise Skip("missing_file", path) from None
    except OSError as e:
        raise Skip("unreadable_image", f"{path}: {e}") from None
    if data.size == 0:
        raise Skip("empty_file", path)
    if _is_truncated(data.tobytes()):
        raise Skip("truncated_image", path)
    # IMREAD_COLOR applies EXIF orientation and drops alpha (as preprocess_for_eval does);
    # ANYDEPTH keeps 16-bit precision until the rescale below.
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:  # a corrupt header (e.g. 100000 px tall) or a codec OpenCV ships disabled (EXR)
        raise Skip("unreadable_image", f"{path}: {str(e).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        raise Skip("unreadable_image", path)
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image


def _is_truncated(data: bytes) -> bool:
    # Some decoders fill a cut-off image with grey instead of failing: check the end markers.
    if data.startswith(b"\xff\xd8"):  # JPEG: EOI must follow the last start-of-scan
        sos = data.rfind(b"\xff\xda")
        return sos >= 0 and data.find(b"\xff\xd9", sos) < 0
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"IEND" not in data[-64:]
    return False


def crop_box(image: np.ndarray, box: Sequence[int], detail: str, context: float = 0.0) -> np.ndarray:
    """Crops box (x0, y0, x1, y1), grown by `context` x its size per side, clamped to the image.

    Raises:
      Skip: bad_box when the box is empty, inverted or outside the image.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise Skip("bad_box", f"{detail}: box {tuple(box)}")
    dx, dy = int(context * (x1 - x0)), int(context * (y1 - y0))
    height, width = image.shape[:2]
    x0, y0 = max(x0 - dx, 0), max(y0 - dy, 0)
    x1, y1 = min(x1 + dx, width), min(y1 + dy, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise Skip("bad_box", f"{detail}: box {tuple(box)} outside the {width}x{height} image")
    return image[y0:y1, x0:x1]


def to_model_image(bgr: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Converts uint8 BGR to gray (channels=1) or RGB (3) and resizes to a square uint8 [S, S, C]."""
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY if channels == 1 else cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    if (height, width) != (image_size, image_size):
        # INTER_AREA averages when shrinking (no aliasing); it is no better than linear when enlarging.
        shrink = height > image_size or width > image_size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        image = cv2.resize(image, (image_size, image_size), interpolation=interpolation)
    return image.reshape(image_size, image_size, channels)


@dataclasses.dataclass(frozen=True)
class ImageDecoder:
    """`Source.decode`: reads an `ImageItem` into a `Record`; picklable for Beam workers.

    Attributes:
      image_size: side of the square output.
      channels: 1 (gray) or 3 (RGB).
      align: detect the face with YuNet and align it by the eye line; no face -> Skip("no_face").
      margin: the crop margin around the aligned face.
    """

    image_size: int = 48
    channels: int = 1
    align: bool = False
    margin: float = 0.2

    def __call__(self, item: ImageItem) -> Record:
        path = next((p for p in item.paths if os.path.exists(p)), None)
        if path is None:
            raise Skip("missing_file", item.paths[0])
        image = read_image(path)
        if item.box is not None:
            # With align, keep some context so the detector sees the whole face.
            image = crop_box(image, item.box, item.image_id, context=0.25 if self.align else 0.0)
        if self.align:
            image = self._aligned(image, path)
        else:
            image = to_model_image(image, self.image_size, self.channels)
        return Record(split=item.split, image_id=item.image_id, image=image, label=item.label)

    def _aligned(self, bgr: np.ndarray, path: str) -> np.ndarray:
        faces = _face_detector("yunet").detect(bgr)
        if not faces:
            raise Skip("no_face", path)
        # The most confident face: in a face dataset, the subject, not a bystander.
        face = max(faces, key=lambda f: f.score)
        image = inference.align_face(
            bgr, face, output_size=self.image_size, margin=self.margin, channels=self.channels
        )
        return np.asarray(image, dtype=np.uint8).reshape(self.image_size, self.image_size, self.channels)
