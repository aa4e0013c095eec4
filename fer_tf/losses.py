"""Losses for imbalanced classes: focal, class-balanced, logit-adjusted, balanced softmax.

`LOSSES = {name: factory}`; every factory takes keyword-only arguments and
returns a Keras loss for `compile(loss=...)`. Targets are float one-hot or soft
labels `[B, K]` (mixup, cutmix, FER+ votes); predictions are logits `[B, K]`.
Losses compute in float32 from `log_softmax` (no clipped probabilities), also
under a mixed-precision policy.

Class counts are always a sequence of ints in class order, e.g.
`fer_tf.schema.class_counts(info, "train")`. A class with no examples is
counted as one so that its prior and weight stay finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import ops

ClassCounts = Sequence[int] | np.ndarray


def _counts(class_counts: ClassCounts) -> np.ndarray:
    if isinstance(class_counts, Mapping):
        raise TypeError(
            "class_counts must be a sequence in class order, not a mapping; "
            "use fer_tf.schema.class_counts(info, split)"
        )
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or (counts < 0).any():
        raise ValueError(f"class_counts must be >= 0 for at least 2 classes, got {class_counts}")
    return np.maximum(counts, 1.0)


def _count_list(class_counts: ClassCounts) -> list[int]:
    """Validated counts as plain ints, for `get_config`."""
    _counts(class_counts)
    return [int(n) for n in np.asarray(class_counts)]


def log_prior(class_counts: ClassCounts) -> np.ndarray:
    """Returns log(n_i / sum n) as float32 `[K]`."""
    counts = _counts(class_counts)
    return np.log(counts / counts.sum()).astype(np.float32)


def effective_number_weights(class_counts: ClassCounts, beta: float = 0.9999) -> np.ndarray:
    """Cui et al. 2019 class weights (1 - beta) / (1 - beta^n_i), normalised to sum K."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _counts(class_counts)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return (weights * counts.size / weights.sum()).astype(np.float32)


def _smooth(y_true, label_smoothing: float):
    if not label_smoothing:
        return y_true
    num_classes = ops.cast(ops.shape(y_true)[-1], y_true.dtype)
    return y_true * (1.0 - label_smoothing) + label_smoothing / num_classes


def _focal_terms(y_true, logits, gamma: float, alpha):
    """Per-class terms -alpha_k (1 - p_k)^gamma log p_k weighted by the targets, summed."""
    log_p = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    terms = -y_true * log_p
    if gamma:
        # 1 - p = -expm1(log p) keeps precision when p is close to 1; the floor keeps
        # the gradient of x^gamma finite at p = 1 when gamma < 1.
        terms = terms * ops.power(ops.maximum(-ops.expm1(log_p), 1e-12), gamma)
    if alpha is not None:
        terms = terms * ops.convert_to_tensor(alpha, "float32")
    return ops.sum(terms, axis=-1)


@keras.saving.register_keras_serializable(package="fer_tf")
class FocalLoss(keras.losses.Loss):
    """Softmax focal loss (Lin et al. 2017) with scalar or per-class alpha, for soft targets.

    loss = -sum_k alpha_k y_k (1 - p_k)^gamma log p_k. Equals
    `keras.losses.CategoricalFocalCrossentropy(from_logits=True)` where that
    one's clipping of p to [1e-7, 1 - 1e-7] does not bite, but has no clipping
    (so wrong confident predictions keep their gradient), and alpha=None means
    1 rather than Keras' 0.25.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        name: str = "focal",
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else np.asarray(alpha, np.float32).tolist()
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = _smooth(ops.cast(y_true, "float32"), self.label_smoothing)
        return _focal_terms(y_true, y_pred, self.gamma, self.alpha)

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "alpha": self.alpha,
            "label_smoothing": self.label_smoothing,
        }


@keras.saving.register_keras_serializable(package="fer_tf")
class ClassBalancedLoss(keras.losses.Loss):
    """Cui et al. 2019: cross-entropy or focal loss weighted by the effective number of samples.

    Each example is weighted by sum_k y_k w_k over its (soft) target, with
    `effective_number_weights` w, so a mixup of two classes gets a mix of weights.
    """

    def __init__(
        self,
        class_counts: ClassCounts,
        beta: float = 0.9999,
        base: str = "crossentropy",
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
        name: str = "class_balanced",
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        if base not in ("crossentropy", "focal"):
            raise ValueError(f"base must be 'crossentropy' or 'focal', got {base!r}")
        self.class_counts = _count_list(class_counts)
        self.class_weight_vector = effective_number_weights(self.class_counts, beta)
        self.beta, self.base, self.gamma = float(beta), base, float(gamma)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        example_weight = ops.sum(y_true * ops.convert_to_tensor(self.class_weight_vector), axis=-1)
        gamma = self.gamma if self.base == "focal" else 0.0
        return example_weight * _focal_terms(_smooth(y_true, self.label_smoothing), y_pred, gamma, None)

    def get_config(self):
        return {
            **super().get_config(),
            "class_counts": self.class_counts,
            "beta": self.beta,
            "base": self.base,
            "gamma": self.gamma,
            "label_smoothing": self.label_smoothing,
        }


@keras.saving.register_keras_serializable(package="fer_tf")
class LogitAdjustedLoss(keras.losses.Loss):
    """Menon et al. 2021 logit-adjusted cross-entropy: CE(y, logits + tau * log prior).

    With tau = 1 this is the balanced softmax (Ren et al. 2020). The model keeps
    learning unadjusted logits, which are balanced at test time.
    """

    def __init__(
        self,
        class_counts: ClassCounts,
        tau: float = 1.0,
        label_smoothing: float = 0.0,
        name: str = "logit_adjusted",
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.class_counts = _count_list(class_counts)
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.adjustment = self.tau * log_prior(self.class_counts)

    def call(self, y_true, y_pred):
        y_true = _smooth(ops.cast(y_true, "float32"), self.label_smoothing)
        logits = ops.cast(y_pred, "float32") + ops.convert_to_tensor(self.adjustment)
        return _focal_terms(y_true, logits, 0.0, None)

    def get_config(self):
        return {
            **super().get_config(),
            "class_counts": self.class_counts,
            "tau": self.tau,
            "label_smoothing": self.label_smoothing,
        }


def crossentropy(*, label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Softmax cross-entropy on logits, with optional label smoothing."""
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, name="crossentropy"
    )


def focal(
    *, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, label_smoothing: float = 0.0
) -> keras.losses.Loss:
    """Focal loss; `alpha` is None (1), a scalar or one weight per class (see `FocalLoss`)."""
    return FocalLoss(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing)


def class_balanced(
    *,
    class_counts: ClassCounts,
    beta: float = 0.9999,
    base: str = "crossentropy",
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> keras.losses.Loss:
    """Class-balanced loss by effective number; `gamma` is used only when base="focal"."""
    return ClassBalancedLoss(class_counts, beta=beta, base=base, gamma=gamma, label_smoothing=label_smoothing)


def class_balanced_focal(
    *, class_counts: ClassCounts, beta: float = 0.9999, gamma: float = 2.0, label_smoothing: float = 0.0
) -> keras.losses.Loss:
    """Class-balanced focal loss (Cui et al. 2019 with softmax focal loss)."""
    return ClassBalancedLoss(
        class_counts,
        beta=beta,
        base="focal",
        gamma=gamma,
        label_smoothing=label_smoothing,
        name="class_balanced_focal",
    )


def logit_adjusted(
    *, class_counts: ClassCounts, tau: float = 1.0, label_smoothing: float = 0.0
) -> keras.losses.Loss:
    """Logit-adjusted cross-entropy (Menon et al. 2021)."""
    return LogitAdjustedLoss(class_counts, tau=tau, label_smoothing=label_smoothing)


def balanced_softmax(*, class_counts: ClassCounts, label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Balanced softmax cross-entropy: the logit-adjusted loss with tau = 1."""
    return LogitAdjustedLoss(class_counts, tau=1.0, label_smoothing=label_smoothing, name="balanced_softmax")


LOSSES = {
    "crossentropy": crossentropy,
    "focal": focal,
    "class_balanced": class_balanced,
    "class_balanced_focal": class_balanced_focal,
    "logit_adjusted": logit_adjusted,
    "balanced_softmax": balanced_softmax,
}


def class_weights(class_counts: ClassCounts, mode: str = "inverse", beta: float = 0.9999) -> dict[int, float]:
    """Per-class weights for `model.fit(class_weight=...)`, normalised to mean 1.

    Args:
      class_counts: examples per class, in class order.
      mode: "inverse" (1 / n), "sqrt_inverse" (1 / sqrt n) or "effective"
        (Cui et al. 2019 effective number, with `beta`).
      beta: only for mode="effective".

    Returns:
      {class index: weight}.
    """
    counts = _counts(class_counts)
    if mode == "inverse":
        weights = 1.0 / counts
    elif mode == "sqrt_inverse":
        weights = 1.0 / np.sqrt(counts)
    elif mode == "effective":
        weights = effective_number_weights(counts, beta).astype(np.float64)
    else:
        raise ValueError(f"unknown mode {mode!r}; valid: inverse, sqrt_inverse, effective")
    weights = weights / weights.mean()
    return {i: float(w) for i, w in enumerate(weights)}


def posthoc_logit_adjustment(logits, class_counts: ClassCounts, tau: float = 1.0):
    """Menon et al. 2021 post-hoc adjustment: logits - tau * log prior.

    Works on numpy arrays and tensors alike (returns the same kind), so it can
    run at evaluation or inside an exported graph. Argmax of the result is the
    balanced-error-optimal prediction for a model trained with plain CE.
    """
    return logits - tau * log_prior(class_counts)
