"""Predictors over an export directory: uint8 images of any size -> class probabilities.

Batch wrappers over fer_tf.inference's classifiers (which take faces at model
size and must run without TensorFlow): these add the serving preprocessing
(`fer_tf.data.preprocess_for_eval`) for images of any size, for evaluate.py and
the parity check of `fer_tf.export_lib`. `load_exported` opens an export
directory, its `saved_model/` or one of its `.tflite` files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fer_tf import data, inference

# The export directory layout these read (written by fer_tf.export_lib).
SAVED_MODEL_DIR = "saved_model"
LABELS_FILE = "labels.txt"
METADATA_FILE = "metadata.json"


def to_model_input(images: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Resizes uint8 images to the fixed TFLite input `[N, S, S, C]`, still uint8.

    Uses `preprocess_for_eval` (the serving preprocessing) and rounds back to
    uint8, so a TFLite model sees what the SavedModel sees up to rounding.
    """
    images = np.asarray(images)
    if images.shape[1:] == (image_size, image_size, channels):
        return images.astype(np.uint8, copy=False)
    x = data.preprocess_for_eval(images, image_size, channels).numpy()
    return np.round(x * 255.0).astype(np.uint8)


class TFLitePredictor:
    """uint8 images `[N, H, W, C]` of any size -> probabilities `[N, K]` with a .tflite model.

    `input_range` is what a float32-input model expects for pixels 0..255
    (see `fer_tf.classifiers.TFLiteClassifier`).
    """

    def __init__(
        self,
        path: str,
        class_names: Sequence[str] | None = None,
        num_threads: int = 1,
        input_range: tuple[float, float] = (0.0, 1.0),
    ):
        self.classifier = inference.TFLiteClassifier(path, num_threads, class_names, input_range)
        self.class_names = self.classifier.class_names
        self.image_size, self.channels = self.classifier.input_size, self.classifier.channels

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.predict_faces(to_model_input(images, self.image_size, self.channels))


class SavedModelPredictor:
    """uint8 images `[N, H, W, C]` -> probabilities `[N, K]` through `serving_default`."""

    def __init__(self, saved_model_dir: str, class_names: Sequence[str] | None = None, batch_size: int = 256):
        self.classifier = inference.SavedModelClassifier(saved_model_dir, class_names)
        self.class_names = self.classifier.class_names
        self.image_size, self.channels = self.classifier.input_size, self.classifier.channels
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.uint8)
        batches = range(0, len(images), self.batch_size)
        out = [self.classifier.predict_faces(list(images[i : i + self.batch_size])) for i in batches]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)


def load_exported(
    path: str,
    num_threads: int = 1,
    class_names: Sequence[str] | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
) -> TFLitePredictor | SavedModelPredictor:
    """Loads an export directory, its `saved_model/`, or a `.tflite` file as a predictor.

    Any classifier `.tflite` works, not only our exports: give `class_names`
    when no `labels.txt` lies beside it, and `input_range` when it takes
    float32 pixels in another range than [0, 1] (e.g. (-1, 1)).

    Args:
      path: the export directory (uses `saved_model/`), a SavedModel directory,
        or a `.tflite` file (class names from `labels.txt` beside it).
      num_threads: TFLite interpreter threads.
      class_names: overrides the class names found beside the model.
      input_range: pixel range of a float32-input `.tflite`; a SavedModel
        (uint8 input) ignores it.

    Returns:
      A callable uint8 `[N, H, W, C]` -> float32 probabilities `[N, K]`, with
      attributes `class_names`, `image_size` and `channels`.

    Raises:
      FileNotFoundError: when `path` is none of these, or no class names are found.
      ValueError: when the class names do not match a `.tflite` model's outputs.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".tflite"):
        names = class_names or inference.read_class_names(os.path.dirname(os.path.abspath(path)))
        if names is None:
            raise FileNotFoundError(
                f"no {LABELS_FILE} or {METADATA_FILE} beside {path}: give its class names (evaluate.py --labels)"
            )
        return TFLitePredictor(path, names, num_threads, input_range)
    is_export = os.path.isfile(os.path.join(path, SAVED_MODEL_DIR, "saved_model.pb"))
    if not is_export and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"{path} is neither an export directory, a SavedModel nor a .tflite file")
    names = (
        class_names
        or inference.read_class_names(path)
        or inference.read_class_names(os.path.dirname(os.path.abspath(path)))
    )
    if names is None:
        raise FileNotFoundError(f"no {LABELS_FILE} or {METADATA_FILE} found for {path}")
    return SavedModelPredictor(path, names)


def predict_all(predictor, images: np.ndarray, batch_size: int = 256, tta: str = "none") -> np.ndarray:
    """Probabilities `[N, K]` of a predictor over `images` in batches.

    Args:
      predictor: a callable uint8 `[N, H, W, C]` -> `[N, K]`, e.g. from `load_exported`.
      images: uint8 `[N, H, W, C]`.
      batch_size: images per predictor call.
      tta: "flip" averages each prediction with the mirrored image's, "zoom"
        with the image's centre zoomed by `data.TTA_ZOOM` (`data.center_zoom`,
        rounded back to uint8); "none" does neither.
    """
    if tta not in ("none", "flip", "zoom"):
        raise ValueError(f"unknown tta {tta!r}; expected none, flip or zoom")
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        probs = predictor(batch)
        if tta == "flip":
            probs = 0.5 * (probs + predictor(np.ascontiguousarray(batch[:, :, ::-1])))
        elif tta == "zoom":
            probs = 0.5 * (probs + predictor(_zoomed(batch)))
        out.append(probs)
    return np.concatenate(out)


def _zoomed(images: np.ndarray) -> np.ndarray:
    zoomed = data.center_zoom(tf.constant(images, tf.float32), data.TTA_ZOOM)
    return np.clip(np.round(zoomed.numpy()), 0, 255).astype(np.uint8)
