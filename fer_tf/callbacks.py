"""Training callbacks that Keras does not ship: resume state, NaN stop, TensorBoard extras.

The per-epoch validation metrics (balanced accuracy, macro-F1, per-class
recall) come from `fer_tf.metrics.ValidationMetrics`; these callbacks read the
values it adds to `logs`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf


class NanLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and names the step.

    Raising (instead of `stop_training`) skips `on_train_end`, so
    BackupAndRestore keeps the last good epoch to resume from.
    """

    def __init__(self, steps_per_epoch: int):
        super().__init__()
        self._steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = self._epoch * self._steps_per_epoch + batch + 1
            raise NanLossError(
                f"loss is {float(loss)} at epoch {self._epoch + 1}, step {batch + 1} "
                f"(global step {step}); stopped. Lower the learning rate or enable "
                "gradient clipping, then re-run to resume from the last good epoch."
            )


class EpochVariable(keras.callbacks.Callback):
    """Writes the current epoch into a tf.Variable that the input pipeline reads.

    Progressive sampling moves from instance to class-balanced weights as
    this variable grows; after a resume it starts at the restored epoch.
    """

    def __init__(self, variable: tf.Variable):
        super().__init__()
        self._variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self._variable.assign(epoch)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (TensorBoard, CSV)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))


class ConfusionMatrixImage(keras.callbacks.Callback):
    """Logs the validation confusion matrix as a TensorBoard image every epoch.

    Args:
      log_dir: TensorBoard directory; images go to `<log_dir>/confusion`.
      get_matrix: returns the latest confusion matrix (list of lists) or None.
      class_names: ordered class names for the axes.
      render: maps (matrix, class_names) to a uint8 [H, W, 3] image.
    """

    def __init__(self, log_dir: str, get_matrix: Callable[[], Any], class_names, render):
        super().__init__()
        self._writer = tf.summary.create_file_writer(os.path.join(log_dir, "confusion"))
        self._get_matrix = get_matrix
        self._class_names = list(class_names)
        self._render = render

    def on_epoch_end(self, epoch, logs=None):
        matrix = self._get_matrix()
        if matrix is None:
            return
        image = self._render(np.asarray(matrix), self._class_names)
        with self._writer.as_default():
            tf.summary.image("validation_confusion_matrix", image[np.newaxis], step=epoch)
        self._writer.flush()


class RestoreBest(keras.callbacks.Callback):
    """Restores the best-so-far value of checkpoint/early-stopping after a resume.

    Keras resets `ModelCheckpoint.best` and `EarlyStopping.best` in a new
    process, so a resumed run would overwrite a better checkpoint with a worse
    epoch. This reads the history CSV instead. Must come after both in the
    callback list: `on_train_begin` runs in list order.
    """

    def __init__(self, history_csv: str, monitor: str, callbacks):
        super().__init__()
        self._history_csv = history_csv
        self._monitor = monitor
        self._callbacks = callbacks

    def on_train_begin(self, logs=None):
        values = read_history_column(self._history_csv, self._monitor)
        if not values:
            return
        best = max(values)
        since_best = len(values) - 1 - int(np.argmax(values))
        for callback in self._callbacks:
            callback.best = best
            if isinstance(callback, keras.callbacks.EarlyStopping):
                callback.wait = since_best


class RunCost(keras.callbacks.Callback):
    """Accumulates the wall-clock and CPU time of a run in `cost.json`, across resumed sittings.

    A model card must state what training cost. A run stopped and resumed
    with BackupAndRestore spans several processes, so each sitting adds its
    own time to what the file already holds. It is written at every epoch end;
    a sitting killed mid-epoch loses only that epoch's share.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path
        self._base: dict[str, Any] = {}
        self._wall0 = self._cpu0 = 0.0

    def on_train_begin(self, logs=None):
        if os.path.exists(self._path):
            with open(self._path) as f:
                self._base = json.load(f)
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.write(epochs_done=epoch + 1)

    def write(self, epochs_done: int) -> None:
        base = self._base
        cost = {
            "wall_seconds": round(base.get("wall_seconds", 0.0) + time.perf_counter() - self._wall0, 1),
            "cpu_seconds": round(base.get("cpu_seconds", 0.0) + time.process_time() - self._cpu0, 1),
            "epochs_done": epochs_done,
            "sittings": base.get("sittings", 0) + 1,
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "system": platform.system()},
        }
        with open(self._path, "w") as f:
            json.dump(cost, f, indent=2)


def read_history_column(history_csv: str, column: str) -> list[float]:
    """Returns the values of `column` in a Keras CSVLogger file ([] if absent)."""
    if not os.path.exists(history_csv):
        return []
    with open(history_csv, newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def log_hparams(log_dir: str, hparams: Mapping[str, Any]) -> None:
    """Records the run's hyperparameters for TensorBoard's HParams tab."""
    from tensorboard.plugins.hparams import api as hp

    clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hp.hparams(clean)
