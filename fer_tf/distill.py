"""Knowledge distillation: a teacher's predictions blended into the training targets.

The teacher sees exactly the batch the student sees, augmentation and mixup
included ("consistent teaching", Beyer et al. 2022), and the target becomes

    (1 - weight) * label + weight * softmax(teacher_logits / temperature)

averaged over the image and its mirror with `flip` (release v5 learnt from such a
teacher, but kept needing flip test-time augmentation as much as before) and over
its centre zoom with `zoom` (the views of export.py's test-time augmentation).
A teacher with another square input size (a 48x48 teacher for a 56x56 student)
sees the batch resized to its size, antialiased bilinear like evaluation.
Several teachers (an ensemble: `load_teachers("runs/a,runs/b")`) are averaged,
each over its own views at its own input size. With `tau` > 0 the teacher's
logits are first logit-adjusted, `logits - tau * log_prior` (Menon et al. 2021),
so the student learns the teacher's class-balanced distribution rather than the
training prior it was fit to.
At temperature 1 the cross-entropy to these targets is Hinton's distillation
loss plus a constant; the temperature here only softens the teacher.

The teacher runs inside the tf.data pipeline, so `model.fit`, checkpoints and
the saved student are those of any other run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from fer_tf import data


def load_teacher(path: str) -> keras.Model:
    """Loads a teacher from a run directory (its `model.keras`) or a `.keras` file.

    Raises:
      FileNotFoundError: when there is no model at `path`.
    """
    model_path = os.path.join(path, "model.keras") if os.path.isdir(path) else path
    if not model_path.endswith(".keras") or not os.path.isfile(model_path):
        raise FileNotFoundError(f"no teacher model at {path}: expected a run directory or a .keras file")
    teacher = keras.models.load_model(model_path, compile=False)
    teacher.trainable = False
    return teacher


def load_teachers(paths: str) -> list[keras.Model]:
    """Loads the teachers of a comma-separated list of run directories or `.keras` files.

    Raises:
      FileNotFoundError: when one of them has no model (`load_teacher`).
      ValueError: when the list names no teacher.
    """
    names = [path.strip() for path in paths.split(",") if path.strip()]
    if not names:
        raise ValueError(f"no teacher in {paths!r}")
    return [load_teacher(name) for name in names]


def check_teacher(teacher: keras.Model, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Raises ValueError unless the teacher predicts the student's classes from square images
    with the student's channels (any size: `teacher_probabilities` resizes the batch)."""
    got_input = tuple(teacher.input_shape[1:])
    got_classes = teacher.output_shape[-1]
    square = len(got_input) == 3 and got_input[0] is not None and got_input[0] == got_input[1]
    if not square or got_input[2] != input_shape[2] or got_classes != num_classes:
        raise ValueError(
            f"teacher takes {got_input} and predicts {got_classes} classes; "
            f"the student takes {tuple(input_shape)} and predicts {num_classes}"
        )


def teacher_probabilities(
    teacher: keras.Model,
    images: tf.Tensor,
    temperature: float = 1.0,
    flip: bool = False,
    zoom: float = 0.0,
    adjustment: tf.Tensor | None = None,
) -> tf.Tensor:
    """softmax((teacher(images) - adjustment) / temperature), averaged over the views of `data.tta_views`.

    The images are first resized to the teacher's input size if it differs; the
    mirror (`flip`) and the centre zoom (`zoom` > 1, 0: none) are taken at that size.
    `adjustment` ([K], None: none) is subtracted from every view's logits.
    """
    # On a float batch in [0, 1], preprocess_for_eval is only the evaluation resize (none at equal size).
    images = data.preprocess_for_eval(images, teacher.input_shape[1], images.shape[-1])
    views = data.tta_views(images, flip, zoom)
    logits = tf.cast(teacher(tf.concat(views, axis=0), training=False), tf.float32)
    if adjustment is not None:
        logits = logits - tf.cast(adjustment, tf.float32)
    probs = tf.nn.softmax(logits / temperature, axis=-1)
    return tf.add_n(tf.split(probs, len(views), axis=0)) / float(len(views))


def distill_targets(
    ds: tf.data.Dataset,
    teacher: keras.Model | Sequence[keras.Model],
    weight: float,
    temperature: float = 1.0,
    flip: bool = False,
    zoom: float = 0.0,
    tau: float = 0.0,
    log_prior: Sequence[float] | None = None,
) -> tf.data.Dataset:
    """Maps (images, targets) batches to (images, targets blended with the teacher's predictions).

    Args:
      ds: batched training dataset of (images [B,S,S,C], targets [B,K]).
      teacher: a model from the same images to K logits, or several whose
        probabilities are averaged (an ensemble teacher).
      weight: share of the teacher in the targets, in (0, 1].
      temperature: teacher softmax temperature (> 0).
      flip: average the teacher over each image and its mirror.
      zoom: also average over each image's centre zoomed by this factor (0: off).
      tau: logit-adjust the teachers by `tau * log_prior` first (0: off; >= 0).
      log_prior: log training class priors [K] (`runs.train_log_prior`), needed when tau > 0.

    Returns:
      The dataset with blended targets, prefetched.
    """
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"distillation weight must be in (0, 1], got {weight}")
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    if tau < 0:
        raise ValueError(f"teacher logit-adjustment tau must be >= 0, got {tau}")
    adjustment = None
    if tau:
        if log_prior is None:
            raise ValueError("teacher logit adjustment (tau > 0) needs the training log priors")
        adjustment = tf.constant(tau * np.asarray(log_prior, dtype=np.float32))

    teachers = [teacher] if isinstance(teacher, keras.Model) else list(teacher)

    def blend(images, targets):  # traced into a graph by map
        every = [teacher_probabilities(t, images, temperature, flip, zoom, adjustment) for t in teachers]
        soft = tf.add_n(every) / float(len(every))
        return images, (1.0 - weight) * targets + weight * tf.cast(soft, targets.dtype)

    return ds.map(blend).prefetch(tf.data.AUTOTUNE)
