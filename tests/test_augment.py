"""Tests of fer_tf/augment.py: every op eagerly AND inside tf.data (STYLE.md #12)."""

import numpy as np
import pytest
import tensorflow as tf

from fer_tf import augment

NAMES = sorted(augment.AUGMENTATIONS)
SEED = tf.constant([3, 7], tf.int64)


def _faces(n=16, size=48, channels=1, seed=0):
    """Smooth random images in [0, 1]: a blurred noise field, like a face crop."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, size // 4, size // 4, channels)).astype(np.float32)
    return tf.image.resize(x, [size, size]).numpy().clip(0, 1)


def _in_map(fn, images, seed=SEED):
    """Runs fn(images, seed) inside ds.map (graph mode, tf.data threads)."""
    ds = tf.data.Dataset.from_tensors((images, seed)).map(fn)
    return next(iter(ds)).numpy()


def _both(fn, images, seed=SEED):
    eager = fn(tf.constant(images), seed).numpy()
    mapped = _in_map(fn, tf.constant(images), seed)
    return eager, mapped


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(48, 48, 1), (5, 48, 48, 1), (4, 40, 40, 3)])
def test_op_keeps_shape_dtype_range_eager_and_in_map(name, shape):
    op = augment.AUGMENTATIONS[name]
    images = _faces(shape[0] if len(shape) == 4 else 1, shape[-2], shape[-1])
    images = images if len(shape) == 4 else images[0]
    eager, mapped = _both(lambda x, s: op(x, s, 1.5), images)
    for out in (eager, mapped):
        assert out.shape == shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    # Stateless ops: the same seed gives the same output in both modes.
    np.testing.assert_allclose(eager, mapped, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_op_is_identity_at_zero_strength(name):
    op = augment.AUGMENTATIONS[name]
    images = _faces(8)
    eager, mapped = _both(lambda x, s: op(x, s, 0.0), images)
    np.testing.assert_allclose(eager, images, atol=1e-6)
    np.testing.assert_allclose(mapped, images, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_op_is_deterministic_and_random_per_image(name):
    op = augment.AUGMENTATIONS[name]
    same = np.repeat(_faces(1), 16, axis=0)  # 16 copies of one image
    a = op(tf.constant(same), SEED).numpy()
    b = op(tf.constant(same), SEED).numpy()
    c = op(tf.constant(same), tf.constant([4, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Per-image parameters: identical inputs come out in several different ways.
    distinct = {a[i].tobytes() for i in range(len(a))}
    assert len(distinct) >= 2


def test_flip_is_an_exact_mirror_or_unchanged():
    images = _faces(32)
    eager, mapped = _both(augment.flip, images)
    for out in (eager, mapped):
        flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images, strict=True)]
        kept = [np.array_equal(o, x) for o, x in zip(out, images, strict=True)]
        assert all(f or k for f, k in zip(flipped, kept, strict=True))
        assert 5 <= sum(flipped) <= 27  # p = 0.5


@pytest.mark.parametrize("name", ["affine", "crop"])
def test_geometric_ops_keep_a_constant_image_constant(name):
    images = np.full((6, 48, 48, 1), 0.37, np.float32)
    eager, mapped = _both(augment.AUGMENTATIONS[name], images)
    np.testing.assert_allclose(eager, 0.37, atol=1e-5)
    np.testing.assert_allclose(mapped, 0.37, atol=1e-5)


def test_affine_moves_pixels_within_its_range():
    # A single bright dot at the centre stays within the shift + rotation range.
    images = np.zeros((32, 48, 48, 1), np.float32)
    images[:, 22:26, 22:26] = 1.0
    out = augment.affine(tf.constant(images), SEED).numpy()
    ys, xs = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    for o in out[..., 0]:
        cy, cx = (o * ys).sum() / o.sum(), (o * xs).sum() / o.sum()
        assert abs(cy - 23.5) <= 0.1 * 48 * 1.2 + 1 and abs(cx - 23.5) <= 0.1 * 48 * 1.2 + 1
    assert not np.allclose(out, images)


def test_brightness_contrast_is_affine_in_intensity():
    images = 0.4 + 0.2 * _faces(8)  # mid-range: no clipping
    eager, mapped = _both(augment.brightness_contrast, images)
    for out in (eager, mapped):
        for o, x in zip(out, images, strict=True):
            slope, intercept = np.polyfit(x.ravel(), o.ravel(), 1)
            np.testing.assert_allclose(np.polyval([slope, intercept], x), o, atol=1e-5)
            assert 0.7 - 1e-5 <= slope <= 1.3 + 1e-5


def test_gamma_is_a_power_within_range():
    images = 0.1 + 0.8 * _faces(8)
    eager, mapped = _both(augment.gamma, images)
    for out in (eager, mapped):
        g = np.log(out) / np.log(images)  # per pixel; constant per image
        assert np.allclose(g, g[:, :1, :1], atol=1e-3)
        assert (g >= np.exp(-0.4) - 1e-3).all() and (g <= np.exp(0.4) + 1e-3).all()


def test_erasing_changes_one_rectangle_of_bounded_area():
    images = np.full((32, 48, 48, 1), 2.0, np.float32) / 4  # 0.5, noise never equals it exactly
    eager, mapped = _both(augment.erasing, images)
    for out in (eager, mapped):
        changed = out[..., 0] != 0.5
        erased = [c for c in changed if c.any()]
        assert 4 <= len(erased) <= 28  # p = 0.5
        for c in erased:
            rows, cols = np.flatnonzero(c.any(1)), np.flatnonzero(c.any(0))
            box = c[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            assert box.all()  # one filled rectangle
            assert 0.01 <= box.size / c.size <= 0.40


def test_apply_chains_ops_and_rejects_unknown_names():
    images = _faces(4)
    out = augment.apply(tf.constant(images), SEED, augment.DEFAULT_AUGMENTATIONS)
    assert out.shape == images.shape and not np.allclose(out, images)
    np.testing.assert_array_equal(augment.apply(tf.constant(images), SEED, ()), images)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.apply(tf.constant(images), SEED, ["flip", "solarize"])
    assert set(augment.DEFAULT_AUGMENTATIONS) <= set(augment.AUGMENTATIONS)


def _constant_batch(n=8, k=4):
    """Image i is the constant i / n; its target is one-hot class i % k."""
    values = np.arange(n, dtype=np.float32) / n
    images = np.broadcast_to(values[:, None, None, None], (n, 16, 16, 1)).copy()
    targets = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    return images, targets


def _mix_both(fn, images, targets, seed=SEED):
    eager = [t.numpy() for t in fn(tf.constant(images), tf.constant(targets), seed)]
    ds = tf.data.Dataset.from_tensors((images, targets, seed)).map(fn)
    mapped = [t.numpy() for t in next(iter(ds))]
    np.testing.assert_allclose(eager[0], mapped[0], atol=1e-6)
    np.testing.assert_allclose(eager[1], mapped[1], atol=1e-6)
    return eager


def test_mixup_mixes_images_and_targets_with_the_same_lambda():
    images, targets = _constant_batch()
    mixed, mixed_targets = _mix_both(lambda x, t, s: augment.mixup(x, t, 0.4, s), images, targets)
    np.testing.assert_allclose(mixed_targets.sum(1), 1.0, atol=1e-6)
    values = images[:, 0, 0, 0]
    for i in range(len(images)):
        j = i - 1  # partner: the batch rolled by one
        lam = mixed_targets[i, i % 4]
        assert np.allclose(mixed[i], lam * values[i] + (1 - lam) * values[j], atol=1e-5)
        np.testing.assert_allclose(mixed_targets[i, j % 4], 1 - lam, atol=1e-6)
    assert not np.allclose(mixed, images)


def test_cutmix_mixes_targets_by_pasted_area():
    images, targets = _constant_batch()
    mixed, mixed_targets = _mix_both(lambda x, t, s: augment.cutmix(x, t, 1.0, s), images, targets)
    np.testing.assert_allclose(mixed_targets.sum(1), 1.0, atol=1e-6)
    values = images[:, 0, 0, 0]
    for i in range(len(images)):
        from_partner = np.isclose(mixed[i], values[i - 1]).mean()
        np.testing.assert_allclose(mixed_targets[i, (i - 1) % 4], from_partner, atol=1e-6)
        assert np.isin(mixed[i], [values[i], values[i - 1]]).all()  # pasted, not blended
    assert (mixed_targets.max(1) < 1).any()


def test_mix_batch_with_prob_zero_or_no_alpha_is_identity():
    images, targets = _constant_batch()
    for kw in ({"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.0}, {}):
        out, out_t = _mix_both(lambda x, t, s, kw=kw: augment.mix_batch(x, t, s, **kw), images, targets)
        np.testing.assert_array_equal(out, images)
        np.testing.assert_array_equal(out_t, targets)


def test_mix_batch_uses_both_mixup_and_cutmix():
    images, targets = _constant_batch(n=32)
    out, out_t = _mix_both(
        lambda x, t, s: augment.mix_batch(x, t, s, mixup_alpha=1.0, cutmix_alpha=1.0), images, targets
    )
    np.testing.assert_allclose(out_t.sum(1), 1.0, atol=1e-6)
    # Blended images are constant (mixup); pasted ones hold two values (cutmix).
    constant = [np.ptp(o) < 1e-6 for o in out]
    assert 4 <= sum(constant) <= 28
