"""Imbalance-aware evaluation: balanced accuracy, macro-F1, per-class recall, confusion matrix.

`classification_report` is the one dict that evaluate.py prints, train_lib
writes to metrics.json and `ValidationMetrics` logs every epoch (DESIGN.md
contract 5). Classes absent from `y_true` (support 0) are kept in `per_class`
and the confusion matrix but left out of balanced accuracy and macro-F1,
which average over the classes present: a test set without contempt images
should not score every model lower.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as skmetrics


def _labels(y: Any, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2:  # one-hot, soft labels, probabilities or logits
        y = y.argmax(axis=-1)
    if y.ndim != 1:
        raise ValueError(f"{name} must be labels [N] or scores [N, K], got shape {y.shape}")
    return y.astype(np.int64)


def classification_report(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class scores and the confusion matrix.

    Args:
      y_true: int labels [N], or one-hot / soft targets [N, K] (argmax is taken).
      y_pred: int labels [N], or logits / probabilities [N, K].
      class_names: the K names, in label order.

    Returns:
      {n, accuracy, balanced_accuracy, macro_f1, per_class: {name: {precision,
      recall, f1, support}}, confusion_matrix: K x K list (rows true, columns
      predicted)}. Scores with a zero denominator are 0. Balanced accuracy
      (mean recall) and macro-F1 average over the classes with support > 0.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    num_classes = len(class_names)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    if y_true.size == 0:
        raise ValueError("classification_report needs at least one example")
    for y, name in ((y_true, "y_true"), (y_pred, "y_pred")):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"{name} has labels outside [0, {num_classes})")
    labels = np.arange(num_classes)
    cm = skmetrics.confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = skmetrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    return {
        "n": int(y_true.size),
        "accuracy": float(np.trace(cm) / y_true.size),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.astype(int).tolist(),
    }


def label_agreement(y_true: Any, y_pred: Any, y_other: Any, class_names: Sequence[str]) -> dict:
    """Scores split by whether a second labelling of the same images (e.g. FER+) agrees with y_true.

    Args:
      y_true: int labels [N] the model is scored on.
      y_pred: int predictions [N] (or logits / probabilities [N, K]).
      y_other: int labels [N] of the second labelling; -1 where it gives none
        (no majority, or a class the model lacks).
      class_names: the K names, in label order.

    Returns:
      {agree: {n, accuracy, balanced_accuracy} where y_other == y_true,
      disputed: {n, accuracy, accuracy_vs_other} elsewhere (accuracy_vs_other
      over the disputed images that have a y_other), vs_other:
      `classification_report` against y_other where it is given}. A part with
      no images is None.
    """
    y_true, y_pred, y_other = _labels(y_true, "y_true"), _labels(y_pred, "y_pred"), np.asarray(y_other)
    if not y_true.shape == y_pred.shape == y_other.shape:
        raise ValueError(f"y_true {y_true.shape}, y_pred {y_pred.shape} and y_other {y_other.shape} differ")
    agree, given = y_other == y_true, y_other >= 0
    disputed = ~agree

    def part(mask: np.ndarray) -> dict | None:
        if not mask.any():
            return None
        report = classification_report(y_true[mask], y_pred[mask], class_names)
        return {key: report[key] for key in ("n", "accuracy", "balanced_accuracy")}

    result = {"agree": part(agree), "disputed": None, "vs_other": None}
    if disputed.any():
        contested = disputed & given
        result["disputed"] = {
            "n": int(disputed.sum()),
            "accuracy": float((y_pred[disputed] == y_true[disputed]).mean()),
            "accuracy_vs_other": float((y_pred[contested] == y_other[contested]).mean())
            if contested.any()
            else None,
        }
    if given.any():
        result["vs_other"] = classification_report(y_other[given], y_pred[given], class_names)
    return result


def _lookup(report: Mapping, key: str) -> float:
    value: Any = report
    for part in key.split("."):
        value = value[part]
    return float(value)


def mean_std(
    reports: Sequence[Mapping], keys: Iterable[str] = ("accuracy", "balanced_accuracy", "macro_f1")
) -> dict:
    """Mean and sample standard deviation of report values over repeated runs (seeds).

    Args:
      reports: `classification_report` dicts, one per run.
      keys: top-level keys or dotted paths, e.g. "per_class.disgust.recall".

    Returns:
      {key: {"mean", "std", "n"}}; std uses ddof=1 and is NaN for a single run.
    """
    if not reports:
        raise ValueError("mean_std needs at least one report")
    summary = {}
    for key in keys:
        values = np.array([_lookup(report, key) for report in reports], dtype=np.float64)
        std = float(values.std(ddof=1)) if values.size > 1 else math.nan
        summary[key] = {"mean": float(values.mean()), "std": std, "n": int(values.size)}
    return summary


def format_mean_std(
    summary: Mapping[str, Mapping[str, float]], *, scale: float = 100.0, digits: int = 2
) -> str:
    """Formats `mean_std` output, one line per key: `accuracy: 71.23 ± 0.45 (n=3)`."""
    lines = []
    for key, stat in summary.items():
        std = "n/a" if math.isnan(stat["std"]) else f"{stat['std'] * scale:.{digits}f}"
        lines.append(f"{key}: {stat['mean'] * scale:.{digits}f} ± {std} (n={stat['n']})")
    return "\n".join(lines)


def report_to_logs(report: Mapping, prefix: str = "val_") -> dict[str, float]:
    """Flattens a report into Keras logs: accuracy, balanced_accuracy, macro_f1, recall_<class>."""
    logs = {f"{prefix}{key}": report[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")}
    for name, scores in report["per_class"].items():
        logs[prefix + "recall_" + re.sub(r"\W+", "_", name)] = scores["recall"]
    return logs


def predict_labels(model: keras.Model, dataset: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Runs `model` once over `dataset` of (images, targets[, ...]) batches.

    Returns:
      (y_true, logits): int labels [N] (argmax of one-hot/soft targets) and the
      model outputs [N, K] as float32.
    """
    # A plain call rather than predict_on_batch: under MultiWorkerMirroredStrategy the
    # latter concatenates every worker's outputs, and each worker evaluates the full set.
    forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    y_true, outputs = [], []
    for batch in dataset:
        images, targets = batch[0], batch[1]
        outputs.append(np.asarray(forward(images), dtype=np.float32))
        y_true.append(_labels(targets, "targets"))
    if not outputs:
        raise ValueError("the evaluation dataset is empty")
    return np.concatenate(y_true), np.concatenate(outputs)


class ValidationMetrics(keras.callbacks.Callback):
    """Adds imbalance-aware validation metrics to the epoch logs.

    At each epoch end it predicts `dataset` in one pass, computes
    `classification_report` and writes `val_accuracy`, `val_balanced_accuracy`,
    `val_macro_f1` and `val_recall_<class>` into `logs`. Keras hands the same
    logs dict to the callbacks in list order, so this callback must come FIRST
    in `callbacks=[...]`: then ModelCheckpoint / EarlyStopping can monitor
    `val_balanced_accuracy`, and TensorBoard, CSVLogger and History record it.
    The last report and confusion matrix stay on `self.report` and
    `self.confusion_matrix` (e.g. for a TensorBoard image).

    Args:
      dataset: finite dataset of (images, one-hot or soft targets) batches,
        e.g. the eval pipeline of `fer_tf.data`.
      class_names: the K class names, in label order.
      prefix: prefix of the log keys.
    """

    def __init__(self, dataset: Iterable, class_names: Sequence[str], prefix: str = "val_"):
        super().__init__()
        self.dataset = dataset
        self.class_names = list(class_names)
        self.prefix = prefix
        self.report: dict | None = None
        self.confusion_matrix: np.ndarray | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        y_true, logits = predict_labels(self.model, self.dataset)
        self.report = classification_report(y_true, logits, self.class_names)
        self.confusion_matrix = np.array(self.report["confusion_matrix"], dtype=np.int64)
        if logs is not None:
            logs.update(report_to_logs(self.report, self.prefix))
