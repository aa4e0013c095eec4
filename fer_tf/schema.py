"""The one TFRecord schema and `dataset_info.json`, shared by writer and reader.

`data_tools/` writes with `make_example` and `write_dataset_info`;
`fer_tf/data.py` reads with `parse_example` and `read_dataset_info`. Keeping
both sides in this module means they cannot drift (DESIGN.md contracts 1, 2).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
INFO_FILE = "dataset_info.json"

KEY_IMAGE = "image/encoded"
KEY_LABEL = "image/class/label"
KEY_ID = "image/id"
KEY_SOFT_LABEL = "image/class/soft_label"
# 1 for records made offline by SMOTE; only ever present in the train split.
KEY_SYNTHETIC = "image/synthetic"

ENCODINGS = ("raw", "png")
SPLITS = ("train", "val", "test")

# FER2013 emotion codes 0..6, in order; the canonical 7-class order.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# FER+ adds contempt as an eighth class.
FERPLUS_CLASSES = FER2013_CLASSES + ("contempt",)


def shard_name(split: str, index: int, num_shards: int) -> str:
    """Returns the contract file name of one shard, e.g. `train-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(data_dir: str, split: str) -> str:
    """Returns the glob matching every shard of `split` in `data_dir`."""
    return os.path.join(data_dir, f"{split}-*-of-*.tfrecord")


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """Encodes a uint8 HxWxC image as raw bytes or PNG.

    Args:
      image: uint8 array of shape [H, W, C].
      encoding: "raw" (fixed shape, recorded in dataset_info.json) or "png".

    Returns:
      The bytes stored under `image/encoded`.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected uint8 [H,W,C], got {image.dtype} {image.shape}")
    if encoding == "raw":
        return np.ascontiguousarray(image).tobytes()
    if encoding == "png":
        return tf.io.encode_png(image).numpy()
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def make_example(
    image: np.ndarray,
    label: int,
    image_id: str,
    *,
    encoding: str = "raw",
    soft_label: Sequence[float] | None = None,
    synthetic: bool = False,
) -> tf.train.Example:
    """Builds the `tf.train.Example` of one image (contract 1).

    Args:
      image: uint8 [H, W, C].
      label: class index into `class_names`.
      image_id: the source row or path, so a record can be traced back.
      encoding: "raw" or "png".
      soft_label: optional vote distribution of length K (e.g. FER+).
      synthetic: True for records generated offline (SMOTE).

    Returns:
      The example, ready for `SerializeToString()`.
    """
    feature = {
        KEY_IMAGE: _bytes([encode_image(image, encoding)]),
        KEY_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        KEY_ID: _bytes([image_id.encode("utf-8")]),
        KEY_SYNTHETIC: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(synthetic)])),
    }
    if soft_label is not None:
        feature[KEY_SOFT_LABEL] = tf.train.Feature(
            float_list=tf.train.FloatList(value=[float(v) for v in soft_label])
        )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _bytes(values: list[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def parse_example(serialized: tf.Tensor, info: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    """Parses one serialized example; works eagerly and inside `tf.data`.

    Args:
      serialized: scalar string tensor.
      info: the dataset's `dataset_info.json` as a dict.

    Returns:
      A dict with `image` (uint8 [H, W, C] of `info["image_shape"]`), `label`
      (int64 scalar), `soft_label` (float32 [K]; the one-hot label when the
      record has no votes), `id` (string) and `synthetic` (int64 0/1).
    """
    num_classes = len(info["class_names"])
    height, width, channels = info["image_shape"]
    features = tf.io.parse_single_example(
        serialized,
        {
            KEY_IMAGE: tf.io.FixedLenFeature([], tf.string),
            KEY_LABEL: tf.io.FixedLenFeature([], tf.int64),
            KEY_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            KEY_SOFT_LABEL: tf.io.VarLenFeature(tf.float32),
            KEY_SYNTHETIC: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        },
    )
    if info["encoding"] == "raw":
        image = tf.io.decode_raw(features[KEY_IMAGE], tf.uint8)
    else:
        image = tf.io.decode_png(features[KEY_IMAGE], channels=channels)
    image = tf.reshape(image, [height, width, channels])
    label = features[KEY_LABEL]
    votes = tf.sparse.to_dense(features[KEY_SOFT_LABEL])
    one_hot = tf.one_hot(label, num_classes, dtype=tf.float32)
    soft_label = tf.cond(
        tf.size(votes) == num_classes, lambda: tf.reshape(votes, [num_classes]), lambda: one_hot
    )
    return {
        "image": image,
        "label": label,
        "soft_label": soft_label,
        "id": features[KEY_ID],
        "synthetic": features[KEY_SYNTHETIC],
    }


def make_dataset_info(
    *,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    encoding: str,
    splits: Mapping[str, Mapping[str, Any]],
    source: Mapping[str, Any],
    skipped: Mapping[str, int],
    has_soft_labels: bool = False,
) -> dict[str, Any]:
    """Assembles `dataset_info.json` (contract 2).

    Args:
      class_names: ordered class names; label i is `class_names[i]`.
      image_shape: [H, W, C] of every stored image.
      encoding: "raw" or "png".
      splits: per split, `num_examples`, `class_counts` (by name), `num_shards`
        and optionally `num_synthetic`.
      source: where the data came from (format, path, options).
      skipped: bad inputs by reason.
      has_soft_labels: whether records carry `image/class/soft_label`.

    Returns:
      The dict that `write_dataset_info` stores.
    """
    for split, entry in splits.items():
        counts = entry["class_counts"]
        if set(counts) != set(class_names):
            raise ValueError(f"split {split}: class_counts keys differ from class_names")
        if sum(counts.values()) != entry["num_examples"]:
            raise ValueError(f"split {split}: class_counts do not sum to num_examples")
    return {
        "schema_version": SCHEMA_VERSION,
        "class_names": list(class_names),
        "image_shape": [int(d) for d in image_shape],
        "encoding": encoding,
        "has_soft_labels": bool(has_soft_labels),
        "splits": {name: dict(entry) for name, entry in splits.items()},
        "source": dict(source),
        "skipped": {reason: int(n) for reason, n in sorted(skipped.items())},
    }


def write_dataset_info(data_dir: str, info: Mapping[str, Any]) -> str:
    """Writes `dataset_info.json` atomically (temp file, then rename); returns its path."""
    path = os.path.join(data_dir, INFO_FILE)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".dataset_info.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the info file is meant to be shared
    os.replace(tmp, path)
    return path


def read_json_object(path: str, remedy: str) -> dict[str, Any]:
    """Reads a JSON object the toolkit wrote (dataset_info, run_info, metadata, ...).

    Raises:
      ValueError: one line naming `path` and `remedy` (e.g. "convert the data
        again") when the file is truncated, not JSON, or not a JSON object.
    """
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {remedy}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds no JSON object; {remedy}")
    return value


def read_dataset_info(data_dir: str) -> dict[str, Any]:
    """Reads `dataset_info.json`; the pipeline trusts its counts and never re-counts.

    Raises:
      FileNotFoundError: with a one-line message when the file is missing.
      ValueError: when it is not a JSON object, lacks a key every dataset has,
        or its schema version is newer than this code.
    """
    path = os.path.join(data_dir, INFO_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: convert the data first (see data_tools/)")
    info = read_json_object(path, "convert the data again")
    missing = [
        key for key in ("class_names", "image_shape", "splits") if not isinstance(info.get(key), (list, dict))
    ]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; convert the data again")
    if info.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {info['schema_version']} is newer than {SCHEMA_VERSION}")
    return info


def class_counts(info: Mapping[str, Any], split: str = "train") -> np.ndarray:
    """Returns the per-class counts of `split` as an int64 array in class order."""
    counts = info["splits"][split]["class_counts"]
    return np.array([counts[name] for name in info["class_names"]], dtype=np.int64)


def imbalance_ratio(counts: Sequence[int] | np.ndarray) -> float:
    """Head/tail ratio of class counts: the largest over the smallest non-empty count."""
    present = np.asarray(counts, np.int64)
    present = present[present > 0]
    return float(present.max() / present.min())
