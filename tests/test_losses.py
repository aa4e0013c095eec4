"""Tests for fer_tf/losses.py against numpy references on small hand-made examples."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import losses

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [-2.0, 1.0, 0.0]], np.float32)
ONE_HOT = np.eye(3, dtype=np.float32)[[0, 2, 0]]
SOFT = np.array([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8], [0.5, 0.25, 0.25]], np.float32)
COUNTS = [100, 10, 40]


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_focal(y, z, gamma=0.0, alpha=None):
    log_p = np_log_softmax(z)
    alpha = np.ones(z.shape[-1]) if alpha is None else np.broadcast_to(alpha, z.shape[-1:])
    return -(y * alpha * (1 - np.exp(log_p)) ** gamma * log_p).sum(-1)


def per_example(loss, y, z):
    loss.reduction = None
    return keras.ops.convert_to_numpy(loss(y, z))


@pytest.mark.parametrize("targets", [ONE_HOT, SOFT])
def test_crossentropy_matches_numpy(targets):
    np.testing.assert_allclose(
        per_example(losses.crossentropy(), targets, LOGITS), np_focal(targets, LOGITS), rtol=1e-5
    )
    smoothed = targets * 0.9 + 0.1 / 3
    np.testing.assert_allclose(
        per_example(losses.crossentropy(label_smoothing=0.1), targets, LOGITS),
        np_focal(smoothed, LOGITS),
        rtol=1e-5,
    )


@pytest.mark.parametrize("targets", [ONE_HOT, SOFT])
def test_focal_with_gamma_zero_is_crossentropy(targets):
    np.testing.assert_allclose(
        per_example(losses.focal(gamma=0.0), targets, LOGITS),
        per_example(losses.crossentropy(), targets, LOGITS),
        rtol=1e-5,
    )


@pytest.mark.parametrize("alpha", [None, 0.25, [0.2, 1.5, 0.8]])
@pytest.mark.parametrize("targets", [ONE_HOT, SOFT])
def test_focal_matches_numpy_and_keras(alpha, targets):
    got = per_example(losses.focal(gamma=2.0, alpha=alpha), targets, LOGITS)
    np.testing.assert_allclose(got, np_focal(targets, LOGITS, 2.0, alpha), rtol=1e-5)
    keras_focal = keras.losses.CategoricalFocalCrossentropy(
        alpha=1.0 if alpha is None else alpha, gamma=2.0, from_logits=True, reduction=None
    )
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(keras_focal(targets, LOGITS)), rtol=1e-4)


def test_focal_per_class_alpha_weights_each_class():
    # One example per class: the per-class alpha scales exactly that example's loss.
    targets, logits = np.eye(3, dtype=np.float32), np.zeros((3, 3), np.float32)
    plain = per_example(losses.focal(gamma=1.0), targets, logits)
    weighted = per_example(losses.focal(gamma=1.0, alpha=[0.5, 2.0, 4.0]), targets, logits)
    np.testing.assert_allclose(weighted / plain, [0.5, 2.0, 4.0], rtol=1e-6)


def test_losses_stay_finite_on_extreme_logits():
    logits = tf.constant([[200.0, -200.0, 0.0], [-300.0, 300.0, 0.0]])
    targets = tf.constant([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    for loss in (
        losses.focal(gamma=2.0),
        losses.logit_adjusted(class_counts=COUNTS),
        losses.class_balanced(class_counts=COUNTS, base="focal"),
    ):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(targets, logits)
        grad = tape.gradient(value, logits)
        assert np.isfinite(value.numpy()) and np.isfinite(grad.numpy()).all()
    # The confidently wrong first example costs ~400 nats, not a clipped log(1e-7).
    assert float(losses.focal(gamma=0.0)(targets[:1], logits[:1])) == pytest.approx(400.0)


def test_logit_adjusted_with_uniform_prior_is_crossentropy():
    np.testing.assert_allclose(
        per_example(losses.logit_adjusted(class_counts=[5, 5, 5]), SOFT, LOGITS),
        np_focal(SOFT, LOGITS),
        rtol=1e-5,
    )


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_matches_numpy(tau):
    prior = np.array(COUNTS) / sum(COUNTS)
    want = np_focal(SOFT, LOGITS + tau * np.log(prior))
    got = per_example(losses.logit_adjusted(class_counts=COUNTS, tau=tau), SOFT, LOGITS)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_balanced_softmax_matches_numpy():
    # Ren et al. 2020: p_j proportional to n_j exp(z_j).
    scores = np.array(COUNTS) * np.exp(LOGITS.astype(np.float64))
    want = -(ONE_HOT * np.log(scores / scores.sum(-1, keepdims=True))).sum(-1)
    got = per_example(losses.balanced_softmax(class_counts=COUNTS), ONE_HOT, LOGITS)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_effective_number_weights_formula():
    beta = 0.99
    raw = np.array([(1 - beta) / (1 - beta**n) for n in COUNTS])
    want = raw / raw.sum() * 3
    np.testing.assert_allclose(losses.effective_number_weights(COUNTS, beta), want, rtol=1e-6)
    # beta -> 0 gives equal weights; the rarest class always weighs most.
    np.testing.assert_allclose(losses.effective_number_weights(COUNTS, 0.0), [1, 1, 1], rtol=1e-6)
    assert np.argmax(losses.effective_number_weights(COUNTS, 0.9999)) == 1


@pytest.mark.parametrize("base,gamma", [("crossentropy", 0.0), ("focal", 2.0)])
def test_class_balanced_weights_each_example_by_its_soft_target(base, gamma):
    weights = losses.effective_number_weights(COUNTS, 0.999)
    want = (SOFT @ weights) * np_focal(SOFT, LOGITS, gamma)
    loss = losses.class_balanced(class_counts=COUNTS, beta=0.999, base=base, gamma=2.0)
    np.testing.assert_allclose(per_example(loss, SOFT, LOGITS), want, rtol=1e-5)
    if base == "focal":
        same = losses.class_balanced_focal(class_counts=COUNTS, beta=0.999, gamma=2.0)
        np.testing.assert_allclose(per_example(same, SOFT, LOGITS), want, rtol=1e-5)


def test_class_weights_modes_have_mean_one():
    inverse = losses.class_weights(COUNTS)
    assert list(inverse) == [0, 1, 2]
    np.testing.assert_allclose(
        list(inverse.values()), np.array([1 / 100, 1 / 10, 1 / 40]) / np.mean([1 / 100, 1 / 10, 1 / 40])
    )
    sqrt = losses.class_weights(COUNTS, mode="sqrt_inverse")
    assert sqrt[1] / sqrt[0] == pytest.approx(np.sqrt(10))
    effective = losses.class_weights(COUNTS, mode="effective", beta=0.999)
    for weights in (inverse, sqrt, effective):
        assert np.mean(list(weights.values())) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sqrt_inverse"):
        losses.class_weights(COUNTS, mode="log")


def test_posthoc_logit_adjustment_numpy_and_tensor():
    want = LOGITS - 0.5 * np.log(np.array(COUNTS) / sum(COUNTS))
    np.testing.assert_allclose(losses.posthoc_logit_adjustment(LOGITS, COUNTS, 0.5), want, rtol=1e-6)
    adjusted = losses.posthoc_logit_adjustment(tf.constant(LOGITS), COUNTS, 0.5)
    assert isinstance(adjusted, tf.Tensor)
    np.testing.assert_allclose(adjusted.numpy(), want, rtol=1e-6)


def test_zero_count_class_stays_finite():
    assert np.isfinite(losses.log_prior([10, 0, 5])).all()
    assert np.isfinite(list(losses.class_weights([10, 0, 5]).values())).all()


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_is_float32_on_float16_logits(name):
    kwargs = {"class_counts": COUNTS} if name not in ("crossentropy", "focal") else {}
    loss = losses.LOSSES[name](**kwargs)
    value = loss(tf.constant(SOFT), tf.constant(LOGITS, tf.float16))
    assert value.dtype == tf.float32 and np.isfinite(value.numpy())


def test_factories_are_keyword_only_and_reject_mappings():
    with pytest.raises(TypeError):
        losses.focal(2.0)
    with pytest.raises(TypeError, match="sequence in class order"):
        losses.logit_adjusted(class_counts={"a": 1, "b": 2})


@pytest.mark.parametrize(
    "loss",
    [
        losses.focal(gamma=1.5, alpha=[0.2, 0.5, 0.3], label_smoothing=0.1),
        losses.class_balanced(class_counts=COUNTS, beta=0.99, base="focal", gamma=1.0),
        losses.logit_adjusted(class_counts=COUNTS, tau=0.7),
    ],
)
def test_custom_losses_serialize(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    np.testing.assert_allclose(restored(SOFT, LOGITS), loss(SOFT, LOGITS), rtol=1e-6)


def test_loss_trains_a_model_and_survives_save(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(inputs))
    model.compile(optimizer="sgd", loss=losses.logit_adjusted(class_counts=COUNTS))
    history = model.fit(LOGITS, SOFT, epochs=2, batch_size=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert restored.loss.tau == 1.0 and restored.loss.class_counts == COUNTS
    assert restored.evaluate(LOGITS, SOFT, verbose=0) == pytest.approx(
        model.evaluate(LOGITS, SOFT, verbose=0), rel=1e-5
    )
