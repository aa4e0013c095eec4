"""Class sampling over per-class streams: instance, balanced, sqrt, progressive.

A sampler turns the per-class counts of the training split (from
`dataset_info.json`, never re-counted) into the probability of drawing each
class. `sample_classes` then draws from one infinite stream per class, as
`tf.data.Dataset.sample_from_datasets` does but with vectorised class draws
(see `sample_classes`); unlike `rejection_resample`, which throws away most
of FER2013 to balance it, nothing is discarded.

- instance:    p_k = n_k / N (the data as it is)
- balanced:    p_k = 1 / K
- sqrt:        p_k = sqrt(n_k) / sum_j sqrt(n_j)
- progressive: p_k(t) = (1 - t) * instance + t * balanced, t = min(epoch / E, 1)
  (Kang et al. 2020, "Decoupling representation and classifier"), where
  `epoch` is a tf.Variable read while sampling, so updating it between epochs
  changes the weights without rebuilding the pipeline.

Classes with no training examples get probability 0 under every sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf


def _present(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be non-negative with a positive sum, got {counts.tolist()}")
    return counts


def instance_weights(counts: Sequence[int]) -> np.ndarray:
    """p_k = n_k / N."""
    counts = _present(counts)
    return counts / counts.sum()


def balanced_weights(counts: Sequence[int]) -> np.ndarray:
    """p_k = 1 / K over the classes that have examples."""
    present = (_present(counts) > 0).astype(np.float64)
    return present / present.sum()


def sqrt_weights(counts: Sequence[int]) -> np.ndarray:
    """p_k = sqrt(n_k) / sum_j sqrt(n_j)."""
    root = np.sqrt(_present(counts))
    return root / root.sum()


def progressive_weights(counts: Sequence[int], progress) -> tf.Tensor:
    """Linear interpolation from instance (progress 0) to balanced (progress >= 1).

    Args:
      counts: per-class training counts.
      progress: float or scalar tensor, epoch / progressive_epochs; clipped to [0, 1].

    Returns:
      float32 [K] class probabilities.
    """
    t = tf.clip_by_value(tf.cast(progress, tf.float32), 0.0, 1.0)
    start = tf.constant(instance_weights(counts), tf.float32)
    end = tf.constant(balanced_weights(counts), tf.float32)
    return (1.0 - t) * start + t * end


# Classes drawn per selector call: small enough that a change of `epoch`
# reaches the draws within a few batches.
DRAW_BLOCK = 256

SAMPLERS: dict[str, Callable[..., object]] = {
    "instance": instance_weights,
    "balanced": balanced_weights,
    "sqrt": sqrt_weights,
    "progressive": progressive_weights,
}


def class_weights(sampler: str, counts: Sequence[int], progress: float = 0.0) -> np.ndarray:
    """The class probabilities of `sampler` as a NumPy vector (for logs, plots and tests).

    Args:
      sampler: a key of `SAMPLERS`.
      counts: per-class training counts.
      progress: for "progressive" only, epoch / progressive_epochs.

    Returns:
      float64 [K], summing to 1.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
    if sampler == "progressive":
        return np.asarray(progressive_weights(counts, progress), dtype=np.float64)
    return SAMPLERS[sampler](counts)


def sample_classes(
    streams: Sequence[tf.data.Dataset],
    counts: Sequence[int],
    sampler: str,
    *,
    seed: int,
    epoch: tf.Variable | None = None,
    progressive_epochs: int = 1,
    block: int = DRAW_BLOCK,
) -> tf.data.Dataset:
    """Draws elements from per-class streams with the sampler's class probabilities.

    This is `tf.data.Dataset.sample_from_datasets(streams, weights, seed,
    stop_on_empty_dataset=False)` with its selector vectorised: that op runs
    one `map` call per element to draw the next class, which here made class
    sampling 5-8x slower than a plain shuffled stream and the bottleneck of
    the whole pipeline. Drawing `block` classes per call and feeding them to
    `choose_from_datasets` (the same directed-interleave kernel) keeps the
    semantics: i.i.d. class draws from the weights, and an empty stream is
    skipped as in `stop_on_empty_dataset=False`.

    Args:
      streams: one dataset per class, in class order, each infinite (shuffled
        and repeated); a stream whose class count is 0 is never drawn from.
      counts: per-class training counts, from `dataset_info.json`.
      sampler: a key of `SAMPLERS`.
      seed: seed of the class draws.
      epoch: int tf.Variable holding the current (0-based) epoch; required by
        "progressive", which reads it each time it draws a block of classes.
      progressive_epochs: epochs over which "progressive" reaches balanced.
      block: classes drawn per selector call.

    Returns:
      An infinite dataset of the streams' elements.
    """
    if len(streams) != len(counts):
        raise ValueError(f"{len(streams)} streams for {len(counts)} class counts")
    if sampler == "progressive":
        if epoch is None:
            raise ValueError("sampler 'progressive' needs the epoch tf.Variable")
        total = float(max(progressive_epochs, 1))

        def weights_now():
            # Read inside the selector's map, i.e. while drawing, so assigning
            # the variable between epochs takes effect without a rebuild.
            return progressive_weights(counts, tf.cast(epoch, tf.float32) / total)
    else:
        fixed = tf.constant(class_weights(sampler, counts), tf.float32)

        def weights_now():
            return fixed

    def draw(step):
        # log(0) = -inf: a class with weight 0 is never drawn.
        logits = tf.math.log(weights_now())[tf.newaxis]
        classes = tf.random.stateless_categorical(
            logits, block, tf.stack([tf.constant(seed, tf.int64), step])
        )
        return classes[0]

    selector = tf.data.Dataset.counter().map(draw).unbatch()
    return tf.data.Dataset.choose_from_datasets(list(streams), selector, stop_on_empty_dataset=False)
