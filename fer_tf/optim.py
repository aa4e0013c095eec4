"""Optimizers and learning-rate schedules of a training run (`TrainConfig` fields).

`make_optimizer` (AdamW or SGD with Nesterov momentum, decoupled weight decay,
optional clipping) over `make_schedule` (cosine with linear warmup, one-cycle,
step or constant). `OneCycle` is registered with Keras, so saved models that
carry it load again once this module is imported (train_lib imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from fer_tf.train_lib import TrainConfig


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW or SGD-momentum with the configured schedule, warmup and clipping."""
    schedule = make_schedule(config, steps_per_epoch)
    clip = {"clipnorm": config.clipnorm} if config.clipnorm > 0 else {}
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, **clip)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay, **clip
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected adamw or sgd")


def make_schedule(config: TrainConfig, steps_per_epoch: int):
    """Learning-rate schedule: cosine (with linear warmup), onecycle, step or constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    lr = config.learning_rate
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            lr / 10 if warmup else lr,
            decay_steps=total - warmup,
            alpha=0.01,
            warmup_target=lr if warmup else None,
            warmup_steps=warmup,
        )
    if config.schedule == "onecycle":
        return OneCycle(lr, total_steps=total, warmup_fraction=max(warmup / total, 0.1))
    if config.schedule == "step":
        bounds = [int(total * f) for f in (0.5, 0.75)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, [lr, lr / 10, lr / 100])
    if config.schedule == "constant":
        return lr
    raise ValueError(f"unknown schedule {config.schedule!r}; expected cosine, onecycle, step, constant")


@keras.saving.register_keras_serializable(package="fer_tf")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle policy (Smith 2018): cosine up to `max_lr`, then cosine down to ~0."""

    def __init__(self, max_lr: float, total_steps: int, warmup_fraction: float = 0.3):
        self.max_lr = max_lr
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        up = tf.maximum(self.total_steps * self.warmup_fraction, 1.0)
        down = tf.maximum(self.total_steps - up, 1.0)
        rising = self.max_lr * (0.04 + 0.96 * (1 - tf.cos(np.pi * tf.minimum(step / up, 1.0))) / 2)
        falling = self.max_lr * (1 + tf.cos(np.pi * tf.minimum((step - up) / down, 1.0))) / 2
        return tf.where(step < up, rising, tf.maximum(falling, self.max_lr * 1e-4))

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
        }
