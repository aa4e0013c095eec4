"""Offline distillation: a teacher's predictions written into the training targets once.

`train.py --teacher` runs the teacher on every augmented batch of every epoch
("consistent teaching"); on 2 CPU cores one teacher made an epoch 1.2-1.3x slower
than the student alone (release v5; v19's first epoch: 291 s, against 240 s on written
targets), an ensemble more. This tool runs the teacher once over the clean
training images and writes a copy of the dataset whose train records carry

    soft = (1 - weight) * target + weight * teacher probabilities

in `image/class/soft_label` (DESIGN contract 1), where `target` is the record's
own soft label if the parent has one (FER+ votes), else its one-hot label. The
teacher is `fer_tf.distill.teacher_probabilities`, the same as in training: one
run or an ensemble (comma-separated), resized to its own input, optionally
averaged with the mirror (`--teacher_flip`) and logit-adjusted by
`--teacher_tau` * log training prior. Only the train split changes; val and
test are copied byte for byte (`derive`), so no evaluation image is labelled
by the teacher.

  python -m data_tools.teacher_mix --data=data/fer2013 --teacher=runs/release_fer2013_v13 \\
      --weight=0.5 --teacher_tau=0.3 --output=data/fer2013_v13_targets
  python train.py --data_dir=data/fer2013_v13_targets --soft_labels ...

The teacher sees each image once, un-augmented, so the targets of an augmented
crop are those of the whole face: weaker than consistent teaching, in exchange
for epochs at the student's own speed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import flags

import launch
from data_tools import derive
from fer_tf import distill, runs, schema


def teacher_targets(
    images: np.ndarray,
    teachers: Sequence[Any],
    flip: bool = False,
    adjustment: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Mean teacher probabilities float32 `[N, K]` of uint8 images `[N, H, W, C]`."""
    shift = None if adjustment is None else tf.constant(adjustment, tf.float32)
    out = []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start : start + batch_size], tf.float32) / 255.0
        every = [distill.teacher_probabilities(t, batch, flip=flip, adjustment=shift) for t in teachers]
        out.append((tf.add_n(every) / float(len(every))).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def make_teacher_mix(
    input_dir: str,
    output_dir: str,
    teacher: str,
    weight: float = 0.5,
    tau: float = 0.0,
    flip: bool = False,
    num_shards: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes a copy of a dataset whose train records carry the teacher-blended soft labels.

    Args:
      input_dir: a converted dataset (any classes the teacher predicts).
      output_dir: the new dataset directory (written atomically).
      teacher: run directories or `.keras` files, comma-separated (an ensemble).
      weight: the teacher's share of each target, in (0, 1].
      tau: logit-adjust the teachers by `tau * log prior` of the train split first (>= 0).
      flip: average each teacher over the image and its mirror.
      num_shards: train shards (default: as many as the parent's).
      overwrite: replace an existing `output_dir`.

    Returns:
      The new dataset_info; `source` records the teachers, weight, tau, the teachers'
      accuracy on the training labels and how often the label stays the top target.

    Raises:
      ValueError: a weight outside (0, 1], a negative tau, a missing teacher, or a
        teacher whose input channels or classes do not match the dataset.
    """
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"--weight must be in (0, 1], got {weight}")
    if tau < 0:
        raise ValueError(f"--teacher_tau must be >= 0, got {tau}")
    info = schema.read_dataset_info(input_dir)
    names = list(info["class_names"])
    try:
        teachers = distill.load_teachers(teacher)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    train = derive.read_split(input_dir, derive.TRAIN, info)
    shape = (
        (*train.images.shape[1:3], train.images.shape[3]) if len(train.images) else tuple(info["image_shape"])
    )
    for t in teachers:
        distill.check_teacher(t, shape, len(names))
    adjustment = tau * runs.train_log_prior({"class_names": names}, info) if tau else None
    probs = teacher_targets(train.images, teachers, flip, adjustment)
    base = train.soft_labels.astype(np.float64)
    soft = base if not len(probs) else (1.0 - weight) * base + weight * probs
    blended = derive.SplitArrays(
        train.images, train.labels, train.ids, soft.astype(np.float32), train.synthetic
    )
    source = {
        "format": "teacher_mix",
        "parent": info.get("source"),
        "teachers": [os.path.normpath(name.strip()) for name in teacher.split(",") if name.strip()],
        "weight": float(weight),
        "teacher_tau": float(tau),
        "teacher_flip": bool(flip),
        "teacher_train_accuracy": round(float(np.mean(probs.argmax(1) == train.labels)), 4)
        if len(probs)
        else None,
        "label_still_top": round(float(np.mean(soft.argmax(1) == train.labels)), 4) if len(soft) else None,
    }
    records = derive.records_of(blended, range(len(soft)), keep_soft_labels=True)
    return derive.write_derived(
        input_dir, output_dir, {**info, "has_soft_labels": True}, records, source, num_shards, overwrite
    )


def define_flags() -> None:
    """Defines the CLI flags; called only when run as a script, so importing defines none."""
    derive.define_flags()
    flags.DEFINE_string("teacher", None, "Teacher run directories or .keras files, comma-separated.")
    flags.DEFINE_float("weight", 0.5, "Share of the teacher in each training target, in (0, 1].")
    flags.DEFINE_float("teacher_tau", 0.0, "Logit-adjust the teachers by tau * log training prior (0: off).")
    flags.DEFINE_bool("teacher_flip", False, "Average each teacher over the image and its mirror.")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    info = derive.run_cli(
        lambda: make_teacher_mix(
            f.data,
            f.output,
            f.teacher or "",
            f.weight,
            f.teacher_tau,
            f.teacher_flip,
            f.num_shards,
            f.overwrite,
        )
    )
    source = info["source"]
    print(
        f"teachers {', '.join(source['teachers'])}: {source['teacher_train_accuracy']} of train labels top-1; "
        f"label still the top target for {source['label_still_top']}"
    )


if __name__ == "__main__":
    define_flags()
    launch.run(main)
